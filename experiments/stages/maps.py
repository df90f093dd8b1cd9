"""The maps stage: a pair's linear maps (source a -> target b) for every layer pair, with their floors.

A unit fits the maps and the maps fit on shuffled row pairs, scores both on held-out rows (R^2), the training-mean
predictor beside them, and the best R^2 over the scored layer pairs on half-sized subsamples of the test rows (its
CI). The maps are checkpointed under cache/maps, keyed by the fit's own inputs, so the probe and next-token stages
read them back (load) instead of refitting. Writes transfer.csv.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional

import numpy as np
from absl import logging

from experiments import keys, statistics
from experiments.units import make_unit
from xsim.transfer import solvers

NAME, SECTION, PHASE = "maps", "transfer", 1
# Part of every maps key: bump it when a solver's numbers or its stored maps change (2: ridge from the SVD of
# exactly centred rows; 3: ridge maps from fewer training rows than dims stored factored).
SOLVERS_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `transfer` section: the map solver (xsim.transfer.solvers.METHODS) and its validation and test
  shares of the rows; standardize: fit on per-dimension standardized activations; penalties: ridge penalties to
  choose from on the validation rows (None: the default path); keep_maps: False removes a run's map checkpoints
  once its tables are written."""
  method: str
  val_fraction: float
  test_fraction: float
  standardize: bool = True
  penalties: Optional[tuple[float, ...]] = None
  keep_maps: bool = True

  def problems(self) -> list[str]:
    out = []
    if self.method not in solvers.METHODS:
      out.append(f"transfer.method {self.method!r} not in {solvers.METHODS}")
    else:
      try:
        self.solver()
      except ValueError as e:  # an option the method does not take, or a bad penalty grid
        out.append(f"transfer: {e}")
    if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
      out.append("transfer fractions must leave training rows (0 < val_fraction, test_fraction; their sum < 1)")
    return out

  def solver(self) -> solvers.Solver:
    """The maps' solver record: the method with standardize and, where set, its penalties."""
    penalties = {} if self.penalties is None else {"penalties": self.penalties}
    return solvers.solver(self.method, standardize=self.standardize, **penalties)

  def split(self, seed: int) -> dict:
    """The row split's arguments (xsim.transfer.make_split), the same for the maps and the mean predictor."""
    return dict(val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=seed)


def identity(settings: Settings, ctx, pair, seed: int) -> tuple:
  """What a pair's maps are fit from: its activations, the solver (its method and every option), the row split and
  the solvers' version."""
  return ctx.identity(pair, seed), dataclasses.asdict(settings.solver()), settings.split(seed), SOLVERS_VERSION


def units(settings: Settings, ctx, pair, seed: int) -> list:
  stats = ctx.stats
  return [make_unit(ctx.workdir, NAME, pair, seed, (),
                    (identity(settings, ctx, pair, seed), stats.min_layer, stats.ci_resamples))]


def checkpoint_dirs(settings: Settings, ctx, pair, seed: int) -> tuple[str, str]:
  """The checkpoint folders of a pair's maps and shuffled-pair maps."""
  where = keys.path(ctx.workdir, os.path.join("cache", "maps"), f"{pair.a}__{pair.b}",
                    *identity(settings, ctx, pair, seed))
  return where, where + "-shuffled"


def load(ctx, data, seed: int):
  """-> (maps, shuffled-pair maps) of a -> b for every layer pair (data: the pair's PairData), read back from their
  checkpoints, or fit there first."""
  from xsim import transfer
  settings = ctx.settings(NAME)
  solver, split = settings.solver(), settings.split(seed)
  where, shuffled_where = checkpoint_dirs(settings, ctx, data.pair, seed)
  fit = transfer.fit_linear_maps(data.xs, data.ys, solver, checkpoint_dir=where, mesh=ctx.mesh, **split)
  shuffled = transfer.fit_shuffled_maps(data.xs, data.ys, solver, checkpoint_dir=shuffled_where, mesh=ctx.mesh,
                                        **split)
  return fit, shuffled


def compute(settings: Settings, ctx, unit) -> dict:
  """{"r2", "r2_shuffled": [La, Lb] held-out R^2 of the maps and of the shuffled-pair maps, "r2_mean": [Lb] of the
  training-mean predictor, "r2_subsample_max": [R] the best R^2 over the scored layer pairs on half-sized subsamples
  of the test rows (None for fewer than 4), "num_test": test rows}."""
  from xsim import transfer
  data = ctx.pair_data(unit.pair, unit.seed)
  fit, shuffled = load(ctx, data, unit.seed)
  mean_r2 = transfer.mean_predictor_r2(data.ys, **settings.split(unit.seed))
  return {"r2": np.asarray(fit.r2, np.float64).tolist(), "r2_shuffled": np.asarray(shuffled.r2, np.float64).tolist(),
          "r2_mean": np.asarray(mean_r2, np.float64).tolist(),
          "r2_subsample_max": r2_subsample_max(fit, data, unit.seed, ctx.stats),
          "num_test": int(len(fit.split.test))}


def r2_subsample_max(fit, data, seed: int, stats: statistics.StatisticsSettings) -> Optional[list]:
  """[R] max over the scored layer pairs of the maps' R^2 on the seed's half-sized subsets of the test rows
  (statistics.test_subsets; None for fewer than 4 test rows)."""
  import jax
  from xsim.transfer import metrics, splits, train
  test = fit.split.test
  subsets = statistics.test_subsets(seed, stats.ci_resamples, len(test))
  if subsets is None:
    return None
  ia, ib = data.scored_positions(stats.min_layer)
  y = splits.standardize(data.ys[ib][:, test], fit.target_mean[ib], fit.target_std[ib])  # [T, m, db]
  best = np.full(stats.ci_resamples, -np.inf)
  for i in ia:
    rows = [fit.pair_index(i, j) for j in ib]
    params = jax.tree_util.tree_map(lambda leaf: leaf[np.asarray(rows)], fit.params)
    x = splits.standardize(data.xs[i, test], fit.source_mean[i], fit.source_std[i])
    predicted = jax.vmap(train.apply_map, (0, None))(params, x)  # [T, m, db], standardized like y
    r2 = jax.vmap(lambda s: metrics.r2_score(y[:, s], predicted[:, s]))(subsets)  # [R, T]
    best = np.maximum(best, np.asarray(r2).max(1))
  return best.tolist()


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  """transfer.csv rows of every layer pair, and the best scored R^2 with its subsamples for the answer."""
  (_, maps), = entries
  layout = ctx.layout(pair, seed)
  r2, shuffled = np.asarray(maps["r2"]), np.asarray(maps["r2_shuffled"])
  best = statistics.grid_max(r2, layout.layers_a, layout.layers_b, ctx.stats)["max"]
  out.resample("r2", pair, seed, best, maps["r2_subsample_max"], maps["num_test"])
  out.add("transfer.csv", [
      dict(source=pair.a, target=pair.b, relation=pair.relation, method=settings.method,
           **layout.cell(layout.layers_a[i], layout.layers_b[j]), r2=float(r2[i, j]),
           r2_shuffled=float(shuffled[i, j]), r2_mean=float(maps["r2_mean"][j]), seed=seed)
      for i, j in np.ndindex(r2.shape)])


def finish(settings: Settings, ctx, pairs) -> None:
  """With keep_maps False, removes the run's map checkpoints (every result read from them is in the units'
  entries; a later run that needs the maps refits them)."""
  if settings.keep_maps:
    return
  freed = 0
  for pair in pairs:
    for seed in ctx.study.seeds:
      for folder in checkpoint_dirs(settings, ctx, pair, seed):
        for root, _, names in os.walk(folder):
          freed += sum(os.path.getsize(os.path.join(root, n)) for n in names)
        shutil.rmtree(folder, ignore_errors=True)
  logging.info("Removed the map checkpoints (transfer.keep_maps=False): %.2f GB freed.", freed / 1e9)
