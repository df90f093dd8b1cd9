"""The probes stage: what a probe reads on the target, read through the pair's maps from the source.

For each task (xsim.data: true/false statements, capitals, ...), logistic probes are trained on the target's and on
the source's own activations (their ceilings) at every layer, and the target's probe is scored on source
activations mapped by the maps stage's maps and by its shuffled-pair maps (the floor), at every layer pair, on
held-out rows. The best mapped accuracy over the scored layer pairs is also scored on half-sized subsamples of the
test rows (its CI). Writes probes.csv (the next-token stage adds its token probe's rows with the same scoring).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from experiments import statistics
from experiments.extraction import paired_arrays
from experiments.stages import maps
from experiments.units import make_unit

NAME, SECTION, PHASE = "probes", "probes", 2
# Part of every probe and next-token key: bump it when the probe solver's numbers change (2: L-BFGS in the span of
# the training rows; 3: cell CIs from statistics.ci_resamples and ci_level, were 200 resamples at 95%).
PROBES_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `probes` section: the tasks (xsim.data.TASKS) and how many examples each draws."""
  tasks: tuple[str, ...] = ()
  num_examples: int = 128

  def problems(self) -> list[str]:
    from xsim.data import TASKS
    out = [f"probe task {t!r} not in {sorted(TASKS)}" for t in self.tasks if t not in TASKS]
    if self.num_examples < 8:
      out.append(f"probes.num_examples={self.num_examples} must be >= 8")
    return out


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """One unit per task of a real pair (a random-init target has no probe worth reading)."""
  if pair.is_random:
    return []
  stats, fit = ctx.stats, maps.identity(ctx.settings(maps.NAME), ctx, pair, seed)
  return [make_unit(ctx.workdir, NAME, pair, seed, (task,),
                    (fit, ctx.stores.tasks[(task, pair.a)].manifest, ctx.stores.tasks[(task, pair.b)].manifest,
                     stats.min_layer, stats.ci_resamples, PROBES_VERSION))
          for task in settings.tasks]


def compute(settings: Settings, ctx, unit) -> dict:
  """A task's probe transfer through the pair's maps at every layer pair (see scores)."""
  from xsim import transfer
  (task,), pair, seed = unit.part, unit.pair, unit.seed
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  fs, ft, rows = paired_arrays(ctx.stores.tasks[(task, pair.a)], ctx.stores.tasks[(task, pair.b)])
  labels = np.asarray(ctx.tasks[task].labels)[ctx.stores.tasks[(task, pair.a)].index["text"][rows]]
  target_probe = transfer.fit_logistic_probes(ft, labels, seed=seed, mesh=ctx.mesh)
  source_probe = transfer.fit_logistic_probes(fs, labels, seed=seed, mesh=ctx.mesh)
  return scores((fit, shuffled), (target_probe, source_probe), fs, labels, seed,
                data.scored_positions(ctx.stats.min_layer), ctx.stats, mesh=ctx.mesh)


def scores(map_fits: tuple, probe_fits: tuple, source_features, labels, seed: int, scored: tuple,
           stats: statistics.StatisticsSettings, k: int = 1, mesh=None) -> dict:
  """The probe transfer of map_fits = (the maps, the shuffled-pair maps) with probe_fits = (the target's probes, the
  source's), as table columns per layer-pair position (mapped_lo / mapped_hi: the bootstrap CI of each cell's
  accuracy, with the statistics' ci_resamples and ci_level):
  {"mapped", "mapped_lo", "mapped_hi", "shuffled": [La, Lb], "target": [Lb], "source": [La], "majority": [],
  "mapped_subsample_max": [R] the best mapped accuracy over the scored layer-pair positions (scored: (positions in
  La, positions in Lb)) on the seed's half-sized subsets of the test rows (statistics.test_subsets; None for fewer
  than 4 test rows), "num_test": test rows}."""
  from xsim import transfer
  bootstrap = transfer.Bootstrap(num_resamples=stats.ci_resamples, level=stats.ci_level, seed=seed)
  mapped, floor = (transfer.probe_transfer(m, *probe_fits, source_features, labels, k=k, bootstrap=bootstrap,
                                           mesh=mesh) for m in map_fits)
  hits = mapped.mapped_hits[np.ix_(*scored)].reshape(-1, mapped.mapped_hits.shape[-1])  # [scored pairs, T]
  subsets = statistics.test_subsets(seed, stats.ci_resamples, hits.shape[1])
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
    add_rows(unit.part[0], pair, seed, result, layout.layers_a, layout.layers_b, layout, ctx, out)
