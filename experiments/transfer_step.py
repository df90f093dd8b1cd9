"""The transfer step: a pair's linear maps with their floors, and the probe transfer on each task.

Maps (and the maps fit on shuffled row pairs) are checkpointed under cache/maps, keyed by the fit's own options,
so the probe and next-token steps read them back instead of refitting.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional

import numpy as np

from experiments import cache
from experiments.extraction import PairData, paired_arrays


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `transfer` section (without next_token)."""
  method: str
  val_fraction: float
  test_fraction: float
  standardize: bool = True
  penalties: Optional[tuple] = None
  keep_maps: bool = True  # False: a pair's map checkpoints are removed once the run's tables are written

  @classmethod
  def from_config(cls, section) -> "Settings":
    s = dict(section)
    penalties = s.get("penalties")
    return cls(s["method"], float(s["val_fraction"]), float(s["test_fraction"]), bool(s.get("standardize", True)),
               None if penalties is None else tuple(float(p) for p in penalties), bool(s.get("keep_maps", True)))

  def fit_options(self, seed: int) -> dict:
    return dict(method=self.method, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=seed,
                standardize=self.standardize, penalties=None if self.penalties is None else list(self.penalties))


# Part of every maps key (what a pair's maps depend on: its activations, the fit's options, not next-token or probe
# settings, and this version): bump it when a solver's numbers or its stored maps change (2: ridge from the SVD of
# exactly centred rows; 3: ridge maps from fewer training rows than dims stored factored).
SOLVERS_VERSION = 3
# Part of every probe and next-token key, the same for the probe solver (2: L-BFGS in the span of the training rows).
PROBES_VERSION = 2


def checkpoint_dirs(workdir: str, pair, identity: tuple, settings: Settings, seed: int) -> tuple[str, str]:
  """The checkpoint folders of a pair's maps and shuffled-pair maps (identity: the pair's store manifests)."""
  key = cache.key(*identity, settings.fit_options(seed), SOLVERS_VERSION)
  where = os.path.join(workdir, "cache", "maps", f"{pair.a}__{pair.b}-{key}")
  return where, where + "-shuffled"


def fit_maps(data: PairData, settings: Settings, seed: int, workdir: str, mesh=None):
  """-> (maps, shuffled-pair maps) of a -> b for every layer pair, read back from their checkpoints if there."""
  from xsim import transfer
  options = settings.fit_options(seed)
  where, shuffled_where = checkpoint_dirs(workdir, data.pair, data.identity, settings, seed)
  fit = transfer.fit_linear_maps(data.xs, data.ys, checkpoint_dir=where, mesh=mesh, **options)
  shuffled = transfer.fit_shuffled_maps(data.xs, data.ys, checkpoint_dir=shuffled_where, mesh=mesh, **options)
  return fit, shuffled


def drop_checkpoints(workdir: str, pair, identity: tuple, settings: Settings, seed: int) -> int:
  """Removes a pair's map checkpoints (every result read from them is in the units' entries; a later run that
  needs the maps refits them) -> bytes freed."""
  freed = 0
  for folder in checkpoint_dirs(workdir, pair, identity, settings, seed):
    for root, _, names in os.walk(folder):
      freed += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    shutil.rmtree(folder, ignore_errors=True)
  return freed


def compute_maps(data: PairData, settings: Settings, seed: int, workdir: str, min_layer: int, num_resamples: int,
                 mesh=None) -> dict:
  """{"r2", "r2_shuffled": [La, Lb] held-out R^2 of the maps and of the shuffled-pair maps, "r2_mean": [Lb] of the
  training-mean predictor, "r2_subsample_max": [R] the best R^2 over the scored layer pairs on half-sized
  subsamples of the test rows (r2_subsample_max), "num_test": test rows}."""
  from xsim import transfer
  fit, shuffled = fit_maps(data, settings, seed, workdir, mesh)
  mean_r2 = transfer.mean_predictor_r2(data.ys, val_fraction=settings.val_fraction,
                                       test_fraction=settings.test_fraction, seed=seed)
  return {"r2": np.asarray(fit.r2, np.float64).tolist(), "r2_shuffled": np.asarray(shuffled.r2, np.float64).tolist(),
          "r2_mean": np.asarray(mean_r2, np.float64).tolist(),
          "r2_subsample_max": r2_subsample_max(fit, data, seed, min_layer, num_resamples).tolist(),
          "num_test": int(len(fit.split.test))}


def half_subsets(seed: int, num_resamples: int, num_rows: int) -> np.ndarray:
  """[R, num_rows // 2] positions of half-sized subsamples of a test set, drawn without replacement: the same for
  every pair with as many test rows, so ratios across pairs can be resampled jointly."""
  import jax
  from xsim import similarity as sim
  return np.asarray(sim.permutations(jax.random.fold_in(jax.random.PRNGKey(seed), 2), num_resamples,
                                     num_rows))[:, :num_rows // 2]


def r2_subsample_max(fit, data: PairData, seed: int, min_layer: int, num_resamples: int) -> np.ndarray:
  """[R] max over the scored layer pairs of the maps' R^2 on half of the test rows, drawn without replacement: the
  same subsets for every pair with as many rows (as similarity_step's subsamples are), so ratios across pairs can
  be resampled jointly."""
  import jax
  from xsim.transfer import metrics, splits, train
  test = fit.split.test
  subsets = half_subsets(seed, num_resamples, len(test))
  ia, ib = data.scored_positions(min_layer)
  y = splits.standardize(data.ys[ib][:, test], fit.target_mean[ib], fit.target_std[ib])  # [T, m, db]
  best = np.full(num_resamples, -np.inf)
  for i in ia:
    rows = [fit.pair_index(i, j) for j in ib]
    params = jax.tree_util.tree_map(lambda leaf: leaf[np.asarray(rows)], fit.params)
    x = splits.standardize(data.xs[i, test], fit.source_mean[i], fit.source_std[i])
    predicted = jax.vmap(train.apply_map, (0, None))(params, x)  # [T, m, db], standardized like y
    r2 = jax.vmap(lambda s: metrics.r2_score(y[:, s], predicted[:, s]))(subsets)  # [R, T]
    best = np.maximum(best, np.asarray(r2).max(1))
  return best


def probe_scores(maps, shuffled, target_probe, source_probe, source_features, labels, seed: int, scored: tuple,
                 num_resamples: int, k: int = 1, mesh=None) -> dict:
  """The probe transfer of the maps and of the shuffled-pair maps, as table columns per layer-pair position:
  {"mapped", "mapped_lo", "mapped_hi", "shuffled": [La, Lb], "target": [Lb], "source": [La], "majority": [],
  "mapped_subsample_max": [R] the best mapped accuracy over the scored layer-pair positions (scored: (positions in
  La, positions in Lb)) on half-sized subsamples of the test rows (half_subsets), "num_test": test rows}."""
  from xsim import transfer
  scores, floor = (transfer.probe_transfer(m, target_probe, source_probe, source_features, labels, k=k, seed=seed,
                                           num_resamples=200, mesh=mesh) for m in (maps, shuffled))
  hits = scores.mapped_hits[np.ix_(*scored)].reshape(-1, scores.mapped_hits.shape[-1])  # [scored pairs, T]
  subsets = half_subsets(seed, num_resamples, hits.shape[1])
  subsample_max = np.nanmax(hits[:, subsets].mean(-1), axis=0) if len(subsets) else np.zeros(0)
  as_list = lambda a: np.asarray(a, np.float64).tolist()
  return {"mapped": as_list(scores.mapped), "mapped_lo": as_list(scores.mapped_ci[..., 0]),
          "mapped_hi": as_list(scores.mapped_ci[..., 1]), "shuffled": as_list(floor.mapped),
          "target": as_list(scores.target), "source": as_list(scores.source), "majority": float(scores.majority),
          "mapped_subsample_max": as_list(subsample_max), "num_test": int(hits.shape[1])}


def compute_task_probes(data: PairData, settings: Settings, seed: int, workdir: str, task, store_a, store_b,
                        min_layer: int, num_resamples: int, mesh=None) -> dict:
  """A task's probe transfer through the pair's maps at every layer pair (see probe_scores)."""
  from xsim import transfer
  fit, shuffled = fit_maps(data, settings, seed, workdir, mesh)
  fs, ft, rows = paired_arrays(store_a, store_b)
  labels = np.asarray(task.labels)[store_a.index["text"][rows]]
  target_probe = transfer.fit_logistic_probes(ft, labels, seed=seed, mesh=mesh)
  source_probe = transfer.fit_logistic_probes(fs, labels, seed=seed, mesh=mesh)
  return probe_scores(fit, shuffled, target_probe, source_probe, fs, labels, seed, data.scored_positions(min_layer),
                      num_resamples, mesh=mesh)
