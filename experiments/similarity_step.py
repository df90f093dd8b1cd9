"""The similarity step: one measure and preprocessing over a chunk of layer pairs, with the resamples its
statistics need.

A unit computes the rows [start, stop) of a pair's [La, Lb] grid and, over the chunk's scored layer pairs (both
hidden-state indices >= min_layer), the grid max under each permutation of the rows (the null of the max) and on
each half-sized subsample of the rows (its CI). Every chunk of one (pair, measure, preprocess, seed) draws the
same permutations and subsamples, so the maxima over the whole grid are the maxima over chunks: the tables step
combines them exactly, whichever process computed which chunk.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments.extraction import PairData
from xsim import layer_select

from xsim.similarity.grid import GRID_MEASURES as MEASURES

# Measures whose permutation null and subsampling CI of the max are computed.
WITH_STATISTICS = ("cka", "cka_debiased")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `similarity` section."""
  measures: tuple
  preprocess: tuple
  knn_k: int
  permutations: int
  ci_resamples: int
  min_layer: int

  @classmethod
  def from_config(cls, section) -> "Settings":
    s = dict(section)
    return cls(tuple(s["measures"]), tuple(s["preprocess"]), int(s["knn_k"]), int(s["permutations"]),
               int(s["ci_resamples"]), int(s["min_layer"]))

  def depends_on(self, measure: str, random_pair: bool) -> tuple[list, bool]:
    """(the settings a unit's result depends on, whether it depends on the seed). The seed moves only the
    resamples of the statistics and a random baseline's weights."""
    if measure in WITH_STATISTICS:
      return [self.permutations, self.ci_resamples, self.min_layer], True
    return [self.knn_k] if measure in ("mutual_knn", "cknna") else [], random_pair


def _options(measure: str, settings: Settings) -> dict:
  return {"k": settings.knn_k} if measure in ("mutual_knn", "cknna") else {}


def grid(measure: str, prep: str, xs, ys, settings: Settings, mesh=None) -> np.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [La, Lb] float64 values of `measure` for every layer pair."""
  from xsim import similarity as sim
  return np.asarray(sim.similarity_grid(measure, xs, ys, preprocess=prep, mesh=mesh, **_options(measure, settings)),
                    np.float64)


def compute(data: PairData, measure: str, prep: str, seed: int, rows: tuple[int, int], settings: Settings,
            mesh=None) -> dict:
  """{"matrix": [stop - start, Lb] values, "null_max": [P] or None, "subsample_max": [R] or None}.

  null_max / subsample_max are maxima over the chunk's scored layer pairs (None when the measure has no
  statistics; -inf when the chunk holds no scored layer pair).
  """
  from xsim import similarity as sim
  start, stop = rows
  xs = data.xs[start:stop]
  out = {"matrix": grid(measure, prep, xs, data.ys, settings, mesh).tolist(), "null_max": None,
         "subsample_max": None}
  if measure not in WITH_STATISTICS:
    return out
  ia = np.flatnonzero(np.asarray(data.layers_a[start:stop]) >= settings.min_layer)
  ib = layer_select.scored_positions(data.layers_b, settings.min_layer, data.pair.b)
  if not len(ia):
    out.update(null_max=[-np.inf] * settings.permutations, subsample_max=[-np.inf] * settings.ci_resamples)
    return out
  xs, ys = xs[ia], data.ys[ib]
  key = jax.random.PRNGKey(seed)
  options = dict(preprocess=prep, mesh=mesh, **_options(measure, settings))
  null = sim.grid_null_max(measure, xs, ys, key=key, num_permutations=settings.permutations, **options)
  samples = sim.grid_subsample_max(measure, xs, ys, key=jax.random.fold_in(key, 1),
                                   num_resamples=settings.ci_resamples, batch_size=8, **options)
  out.update(null_max=np.asarray(null, np.float64).tolist(), subsample_max=np.asarray(samples, np.float64).tolist())
  return out
