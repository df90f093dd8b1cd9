"""The probes stage: what a probe reads on the target, read through the pair's maps from the source.

For each task (xsim.data: true/false statements, capitals, ...), logistic probes are trained on the target's and on
the source's own activations (their ceilings) at every layer, and the target's probe is scored on source
activations mapped by the maps stage's maps and by its shuffled-pair maps (the floor), at every layer pair, on
held-out rows. The best mapped accuracy over the scored layer pairs is also scored on half-sized subsamples of the
test rows (its CI). With token_classes, the published protocol's token probe too (STUDY.md, labels from the text
after the cut): a softmax probe over the target's token_classes most frequent next tokens of the next-word samples
(experiments/next_words.py), trained on the target's own activations at the prefixes and scored top-1 / top-5 on
mapped source activations at every pair of the depth-matched layers (tasks next_token_top1 / next_token_top5; the
published study probed its best-CKA pair only). Writes probes.csv.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from experiments import next_words, statistics
from experiments.extraction import paired_arrays
from experiments.stages import maps
from experiments.units import make_unit

NAME, SECTION, PHASE = "probes", "probes", 2
# Part of every probe and next-token key: bump it when the probe solver's numbers change (2: L-BFGS in the span of
# the training rows; 3: cell CIs from statistics.ci_resamples and ci_level, were 200 resamples at 95%; 4: cell CIs
# are subsampling intervals on the test subsets of the max's CI, were percentile bootstrap intervals).
PROBES_VERSION = 4
TOKEN_PROBE = "next_token"  # the token probe's unit part; its rows are tasks next_token_top{k}
TOP_K = (1, 5)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `probes` section: the tasks (xsim.data.TASKS) and how many examples each draws; the token probe's
  classes (0: none) and samples (an upper bound: the texts long enough for a next word may be fewer)."""
  tasks: tuple[str, ...] = ()
  num_examples: int = 128
  token_classes: int = 0
  token_samples: int = 0

  def problems(self) -> list[str]:
    from xsim.data import TASKS
    out = [f"probe task {t!r} not in {sorted(TASKS)}" for t in self.tasks if t not in TASKS]
    if self.num_examples < 8:
      out.append(f"probes.num_examples={self.num_examples} must be >= 8")
    if self.token_classes and (self.token_classes < 5 or self.token_samples < 2 * self.token_classes):
      out.append(f"probes.token_classes={self.token_classes} must be 0 (no token probe) or >= 5 (top-5 is scored), "
                 f"with token_samples >= 2 x token_classes so the training rows can hold that many tokens")
    return out


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """The token probe's unit and one unit per task of a real pair (a random-init target has no probe worth
  reading)."""
  if pair.is_random:
    return []
  stats, fit = ctx.stats, maps.identity(ctx.settings(maps.NAME), ctx, pair, seed)
  out = [make_unit(ctx.workdir, NAME, pair, seed, (task,),
                   (fit, ctx.stores.tasks[(task, pair.a)].manifest, ctx.stores.tasks[(task, pair.b)].manifest,
                    stats.min_layer, stats.ci_resamples, stats.ci_level, PROBES_VERSION))
         for task in settings.tasks]
  if settings.token_classes:  # first, as its rows were when the next-token stage wrote them
    out.insert(0, make_unit(ctx.workdir, NAME, pair, seed, (TOKEN_PROBE,),
                            (fit, settings.token_classes, next_words.identity(ctx),
                             ctx.settings("next_token").num_depths, ctx.study.extraction.identity(), stats.min_layer,
                             stats.ci_resamples, stats.ci_level, PROBES_VERSION)))
  return out


def compute(settings: Settings, ctx, unit) -> dict:
  """A task's probe transfer through the pair's maps at every layer pair (see scores); the token probe's
  {"layers_a", "layers_b": its hidden-state indices, "scores": {k: scores}}."""
  from xsim import transfer
  (task,), pair, seed = unit.part, unit.pair, unit.seed
  if task == TOKEN_PROBE:
    return _token_probe(settings, ctx, pair, seed)
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  fs, ft, rows = paired_arrays(ctx.stores.tasks[(task, pair.a)], ctx.stores.tasks[(task, pair.b)])
  labels = np.asarray(ctx.tasks[task].labels)[ctx.stores.tasks[(task, pair.a)].index["text"][rows]]
  target_probe = transfer.fit_logistic_probes(ft, labels, seed=seed, mesh=ctx.mesh)
  source_probe = transfer.fit_logistic_probes(fs, labels, seed=seed, mesh=ctx.mesh)
  return scores((fit, shuffled), (target_probe, source_probe), fs, labels, seed,
                data.scored_positions(ctx.stats.min_layer), ctx.stats, mesh=ctx.mesh)


def _token_probe(settings: Settings, ctx, pair, seed: int) -> dict:
  from xsim import layer_select, transfer
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  _, ia, ib = next_words.matched_layers(ctx, data)
  samples = next_words.samples(ctx, pair.b)
  layers_a, layers_b = [data.layers_a[i] for i in ia], [data.layers_b[j] for j in ib]
  x_source, x_target = (next_words.prefix_activations(ctx, model, pair.b, samples.prefixes, layers, data.identity)
                        for model, layers in ((pair.a, layers_a), (pair.b, layers_b)))
  labels = samples.next_tokens
  target_probe, source_probe = (transfer.fit_token_probes(x, labels, num_classes=settings.token_classes, seed=seed,
                                                          mesh=ctx.mesh) for x in (x_target, x_source))
  scored = (layer_select.scored_positions(layers_a, ctx.stats.min_layer, pair.a),
            layer_select.scored_positions(layers_b, ctx.stats.min_layer, pair.b))
  return {"layers_a": layers_a, "layers_b": layers_b,
          "scores": {str(k): scores((fit.select(ia, ib), shuffled.select(ia, ib)), (target_probe, source_probe),
                                    x_source, labels, seed, scored, ctx.stats, k=k, mesh=ctx.mesh)
                     for k in TOP_K}}


def scores(map_fits: tuple, probe_fits: tuple, source_features, labels, seed: int, scored: tuple,
           stats: statistics.StatisticsSettings, k: int = 1, mesh=None) -> dict:
  """The probe transfer of map_fits = (the maps, the shuffled-pair maps) with probe_fits = (the target's probes, the
  source's), as table columns per layer-pair position (mapped_lo / mapped_hi: each cell's subsampling CI on the
  seed's half-sized subsets of the test rows, the same subsets as the max's):
  {"mapped", "mapped_lo", "mapped_hi", "shuffled": [La, Lb], "target": [Lb], "source": [La], "majority": [],
  "mapped_subsample_max": [R] the best mapped accuracy over the scored layer-pair positions (scored: (positions in
  La, positions in Lb)) on the seed's half-sized subsets of the test rows (statistics.test_subsets; None for fewer
  than 4 test rows), "num_test": test rows}."""
  from xsim import transfer
  subsets = statistics.test_subsets(seed, stats.ci_resamples, len(probe_fits[0].split.test))
  mapped, floor = (transfer.probe_transfer(m, *probe_fits, source_features, labels, k=k, subsets=subsets,
                                           level=stats.ci_level, mesh=mesh) for m in map_fits)
  hits = mapped.mapped_hits[np.ix_(*scored)].reshape(-1, mapped.mapped_hits.shape[-1])  # [scored pairs, T]
  subsample_max = None if subsets is None else np.nanmax(hits[:, subsets].mean(-1), axis=0)
  as_list = lambda a: None if a is None else np.asarray(a, np.float64).tolist()
  return {"mapped": as_list(mapped.mapped), "mapped_lo": as_list(mapped.mapped_ci[..., 0]),
          "mapped_hi": as_list(mapped.mapped_ci[..., 1]), "shuffled": as_list(floor.mapped),
          "target": as_list(mapped.target), "source": as_list(mapped.source), "majority": float(mapped.majority),
          "mapped_subsample_max": as_list(subsample_max), "num_test": int(hits.shape[1])}


def add_rows(task: str, pair, seed: int, result: dict, layers_a, layers_b, layout, ctx, out) -> None:
  """probes.csv rows of one task's scores (layers_*: the hidden states the scores' positions stand for), and its
  best scored accuracy with its subsamples for the answer."""
  mapped = np.asarray(result["mapped"])
  out.add("probes.csv", [
      dict(task=task, source=pair.a, target=pair.b, relation=pair.relation, **layout.cell(layers_a[i], layers_b[j]),
           acc_mapped=float(mapped[i, j]), acc_mapped_lo=float(result["mapped_lo"][i][j]),
           acc_mapped_hi=float(result["mapped_hi"][i][j]), acc_shuffled=float(result["shuffled"][i][j]),
           acc_target=float(result["target"][j]), acc_source=float(result["source"][i]),
           acc_majority=float(result["majority"]), seed=seed)
      for i, j in np.ndindex(mapped.shape)])
  best = statistics.grid_max(mapped, layers_a, layers_b, ctx.stats)["max"]
  out.resample(("probe", task), pair, seed, best, result["mapped_subsample_max"], result["num_test"])


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  layout = ctx.layout(pair, seed)
  for unit, result in entries:
    if unit.part[0] == TOKEN_PROBE:
      for k, by_k in result["scores"].items():
        add_rows(f"next_token_top{k}", pair, seed, by_k, result["layers_a"], result["layers_b"], layout, ctx, out)
    else:
      add_rows(unit.part[0], pair, seed, result, layout.layers_a, layout.layers_b, layout, ctx, out)
