"""The similarity stage: every measure and preprocessing over all layer pairs, with the statistics of the max.

A unit computes the rows [start, stop) of a pair's [La, Lb] grid of one measure and preprocessing and, for measures
with statistics, over the chunk's scored layer pairs (both hidden-state indices >= min_layer), the grid max under
each permutation of the rows (the null of the max) and on each half-sized subsample of the rows (its CI). Every
chunk of one (pair, measure, preprocessing, seed) draws the same permutations and subsamples (experiments/
statistics.py), so the maxima over the whole grid are the maxima over chunks: tabulate combines them exactly,
whichever process computed which chunk. Writes similarity.csv and each pair's measures in summary.json.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from experiments import statistics
from experiments.units import chunks, make_unit
from xsim import layer_select
from xsim.similarity.grid import GRID_MEASURES, MEASURES
from xsim.similarity.preprocess import METHODS as PREPROCESSINGS

NAME, SECTION, PHASE = "similarity", "similarity", 1
STATISTICS_VERSION = 2  # bump when the statistics a unit stores change (2: each source layer's subsamples)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `similarity` section: measures (xsim.similarity.GRID_MEASURES), preprocessings, k of the
  neighbour measures."""
  measures: tuple[str, ...]
  preprocess: tuple[str, ...]
  knn_k: int = 10

  def problems(self) -> list[str]:
    out = [f"similarity measure {m!r} not in {GRID_MEASURES}" for m in self.measures if m not in GRID_MEASURES]
    out += [f"similarity preprocess {p!r} not in {PREPROCESSINGS}" for p in self.preprocess
            if p not in PREPROCESSINGS]
    if self.knn_k < 1:
      out.append(f"similarity.knn_k={self.knn_k} must be >= 1")
    return out

  def options(self, measure: str) -> dict:
    """The measure's options beyond the preprocessing."""
    return {"k": self.knn_k} if "k" in MEASURES[measure].options else {}


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """One unit per measure, preprocessing and chunk of the source's layers. The seed moves only the statistics'
  resamples and a random baseline's weights, so other measures of a real pair are computed once for all seeds."""
  out = []
  num_layers_a = len(ctx.stores.get(pair.a, seed).layers)
  for measure in settings.measures:
    with_statistics = MEASURES[measure].with_statistics
    seeded = with_statistics or pair.is_random
    reads = ([ctx.stats.permutations, ctx.stats.ci_resamples, ctx.stats.min_layer, STATISTICS_VERSION]
             if with_statistics else [])
    for prep in settings.preprocess:
      for rows in chunks(num_layers_a, ctx.study.mesh.layers_per_unit):
        unit_seed = seed if seeded else None
        out.append(make_unit(ctx.workdir, NAME, pair, unit_seed, (measure, prep, rows),
                              (ctx.identity(pair, seed), measure, prep, settings.options(measure), reads, rows,
                               unit_seed)))
  return out


def grid(measure: str, prep: str, xs, ys, settings: Settings, mesh=None) -> np.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [La, Lb] float64 values of `measure` for every layer pair."""
  from xsim import similarity as sim
  return np.asarray(sim.similarity_grid(measure, xs, ys, preprocess=prep, mesh=mesh, **settings.options(measure)),
                    np.float64)


def compute(settings: Settings, ctx, unit) -> dict:
  """{"matrix": [stop - start, Lb] values, "null_max": [P] or None, "subsample_max": [R] or None,
  "subsample_best": [R, A] or None, "subsample_matched": [R, A] or None}.

  null_max / subsample_max are maxima over the chunk's scored layer pairs (None when the measure has no
  statistics; -inf when the chunk holds no scored layer pair); subsample_best / subsample_matched hold, for each
  of the chunk's A scored source layers, its best match over the scored target layers and its value at the scored
  target layer of nearest relative depth, on each subsample.
  """
  from xsim import similarity as sim
  measure, prep, (start, stop) = unit.part
  stats = ctx.stats
  seed = ctx.study.seeds[0] if unit.seed is None else unit.seed
  data = ctx.pair_data(unit.pair, seed)
  xs = data.xs[start:stop]
  out = {"matrix": grid(measure, prep, xs, data.ys, settings, ctx.mesh).tolist(), "null_max": None,
         "subsample_max": None, "subsample_best": None, "subsample_matched": None}
  if not MEASURES[measure].with_statistics:
    return out
  ia = np.flatnonzero(np.asarray(data.layers_a[start:stop]) >= stats.min_layer)
  ib = layer_select.scored_positions(data.layers_b, stats.min_layer, data.pair.b)
  if not len(ia):
    out.update(null_max=[-np.inf] * stats.permutations, subsample_max=[-np.inf] * stats.ci_resamples,
               subsample_best=[[]] * stats.ci_resamples, subsample_matched=[[]] * stats.ci_resamples)
    return out
  xs, ys = xs[ia], data.ys[ib]
  options = dict(preprocess=prep, mesh=ctx.mesh, **settings.options(measure))
  null = sim.grid_null_max(measure, xs, ys, key=statistics.null_key(seed), num_permutations=stats.permutations,
                           **options)
  samples = np.asarray(sim.grid_subsamples(measure, xs, ys, key=statistics.text_subsets_key(seed),
                                           num_resamples=stats.ci_resamples, batch_size=8, **options), np.float64)
  nearest = layer_select.nearest_by_depth(_depths([data.layers_a[start + i] for i in ia], data.num_layers_a),
                                          _depths([data.layers_b[j] for j in ib], data.num_layers_b))
  out.update(null_max=np.asarray(null, np.float64).tolist(), subsample_max=samples.max((1, 2)).tolist(),
             subsample_best=samples.max(2).tolist(),
             subsample_matched=samples[:, np.arange(len(ia)), nearest].tolist())
  return out


def _depths(layers, num_layers: int) -> list[float]:
  return [layer_select.relative_depth(layer, num_layers) for layer in layers]


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  """similarity.csv rows of every measure and preprocessing, and their grid statistics in the pair's summary."""
  layout = ctx.layout(pair, seed)
  summary = out.pair_summary(pair, seed, layout.num_samples)
  for measure in settings.measures:
    for prep in settings.preprocess:
      parts = [result for unit, result in entries if unit.part[:2] == (measure, prep)]
      matrix = np.concatenate([np.asarray(p["matrix"], np.float64) for p in parts])
      combine = lambda name: None if parts[0][name] is None else np.max([p[name] for p in parts], axis=0)
      stats = statistics.grid_max(matrix, layout.layers_a, layout.layers_b, ctx.stats, combine("null_max"),
                                  combine("subsample_max"), layout.num_samples)
      if parts[0]["subsample_max"] is not None:
        out.resample((measure, prep), pair, seed, stats["max"], combine("subsample_max"), layout.num_samples)
        along = lambda name: np.concatenate([np.asarray(p[name], np.float64).reshape(ctx.stats.ci_resamples, -1)
                                             for p in parts], axis=1)
        curves = depth_curves(matrix, layout, ctx.stats, along("subsample_best"), along("subsample_matched"))
        if curves is not None:
          stats["depth_curve"] = curves
          out.resample(("matched", measure, prep), pair, seed, float(np.mean(curves["matched"])),
                       along("subsample_matched").mean(1), layout.num_samples)
      summary[f"{measure}|{prep}"] = stats
      out.add("similarity.csv", [
          dict(model_a=pair.a, model_b=pair.b, relation=pair.relation, measure=measure, preprocess=prep,
               **layout.cell(layout.layers_a[i], layout.layers_b[j]), value=float(matrix[i, j]), seed=seed)
          for i, j in np.ndindex(matrix.shape)])


def depth_curves(matrix: np.ndarray, layout, stats, best_samples: np.ndarray, matched_samples: np.ndarray):
  """Along the source's depth, over the scored layer pairs of a [La, Lb] grid: each source layer's best match (max
  over target layers) and its value at the target layer of nearest relative depth, with subsampling CIs from the
  [R, A] subsample values (A scored source layers). {"layers_a", "depths_a", "best", "best_layer_b", "best_ci",
  "matched", "matched_layer_b", "matched_ci"} (CIs as [lows, highs]), None where a scored value is not finite."""
  from xsim import resampling
  ia = layer_select.scored_positions(layout.layers_a, stats.min_layer)
  ib = layer_select.scored_positions(layout.layers_b, stats.min_layer)
  scored = matrix[np.ix_(ia, ib)]
  if not len(ia) or not len(ib) or not np.isfinite(scored).all():
    return None
  layers_a, layers_b = [layout.layers_a[i] for i in ia], [layout.layers_b[j] for j in ib]
  depths_a = _depths(layers_a, layout.num_layers_a)
  nearest = layer_select.nearest_by_depth(depths_a, _depths(layers_b, layout.num_layers_b))
  best, matched = scored.max(1), scored[np.arange(len(ia)), nearest]
  interval = lambda estimate, samples: [[float(v) for v in bound] for bound in resampling.subsample_interval(
      estimate, samples, layout.num_samples, level=stats.ci_level)]
  return {"layers_a": [int(l) for l in layers_a],
          "depths_a": depths_a,
          "best": best.tolist(), "best_layer_b": [int(layers_b[j]) for j in scored.argmax(1)],
          "best_ci": interval(best, best_samples), "matched": matched.tolist(),
          "matched_layer_b": [int(layers_b[j]) for j in nearest], "matched_ci": interval(matched, matched_samples)}
