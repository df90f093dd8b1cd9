"""The statistics every stage shares: which layer pairs are scored, how many permutations and resamples, the CI
level, and the random streams the resamples are drawn from.

Read once from the config's `statistics` section and handed to every stage. Resamples are drawn by seed and
purpose only, never by pair: every pair with n rows gets the same permutations and the same half-sized subsets of
its texts (the CKA and neighbour units), and every pair with m test rows the same half-sized subsets of them (the
maps' R^2 and the probes), so a ratio of pairs' figures is resampled jointly by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from xsim import layer_select


@dataclasses.dataclass(frozen=True)
class StatisticsSettings:
  """The config's `statistics` section.

  min_layer: maxima, means and best pairs are over hidden states >= min_layer of both models (1 leaves out the
  embeddings); permutations: the size of the permutation null of a grid's max; ci_resamples: the half-sized
  subsamples behind every interval; ci_level: the intervals' coverage.
  """
  min_layer: int = 1
  permutations: int = 100
  ci_resamples: int = 100
  ci_level: float = 0.95

  def problems(self) -> list[str]:
    out = []
    if self.min_layer < 0:
      out.append(f"statistics.min_layer={self.min_layer} must be a hidden-state index >= 0 (1 leaves out the "
                 "embeddings)")
    if self.permutations < 19:
      out.append(f"statistics.permutations={self.permutations} must be >= 19 for a 5% test")
    if self.ci_resamples < 20:
      out.append(f"statistics.ci_resamples={self.ci_resamples} must be >= 20 for a 95% interval")
    if not 0.5 <= self.ci_level < 1:
      out.append(f"statistics.ci_level={self.ci_level} must lie in [0.5, 1), e.g. 0.95")
    return out


def null_key(seed: int):
  """The key of a seed's permutations of the texts' rows (the nulls of grid maxima)."""
  import jax
  return jax.random.PRNGKey(seed)


def text_subsets_key(seed: int):
  """The key of a seed's half-sized subsets of the texts' rows (the CIs of grid maxima)."""
  import jax
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def test_subsets(seed: int, num_resamples: int, num_rows: int) -> Optional[np.ndarray]:
  """[R, num_rows // 2] positions of a seed's half-sized subsets of a test set, drawn without replacement; None for
  fewer than 4 rows (no half then holds 2 rows and leaves some out), where a figure has no interval."""
  if num_rows < 4:
    return None
  import jax
  from xsim import resampling
  return np.asarray(resampling.subsets(jax.random.fold_in(jax.random.PRNGKey(seed), 2), num_resamples, num_rows))


def grid_max(matrix: np.ndarray, layers_a: Sequence[int], layers_b: Sequence[int], stats: StatisticsSettings,
             null_max: Optional[Sequence] = None, subsample_max: Optional[Sequence] = None,
             n: int = 0) -> dict:
  """A [La, Lb] grid's max, mean and argmax over its scored layer pairs and, where the resamples are given, the
  95th percentile of the permutation null of that max, its permutation p-value and its subsampling CI (n: the
  rows the grid was computed on). A grid with a non-finite scored value is undefined: max and mean NaN, argmax,
  null, p-value and CI None."""
  from xsim import resampling
  ia = layer_select.scored_positions(layers_a, stats.min_layer)
  ib = layer_select.scored_positions(layers_b, stats.min_layer)
  scored = matrix[np.ix_(ia, ib)]
  if not np.isfinite(scored).all():  # e.g. a layer whose rows have no spread: undefined, never a number with a p
    undefined = {"max": float("nan"), "mean": float("nan"), "argmax": None}
    return undefined if null_max is None else dict(undefined, null_max_q95=None, p_value=None, max_ci=None)
  i, j = np.unravel_index(np.argmax(scored), scored.shape)
  out = {"max": float(scored.max()), "mean": float(scored.mean()),
         "argmax": [int(layers_a[ia[i]]), int(layers_b[ib[j]])]}
  if null_max is not None:
    null_max = np.asarray(null_max, np.float64)
    out.update(null_max_q95=float(np.quantile(null_max, 0.95)),
               p_value=float(resampling.p_value(np.float64(scored.max()), null_max)),
               max_ci=[float(v) for v in resampling.subsample_interval(float(scored.max()), subsample_max, n,
                                                                       level=stats.ci_level)])
  return out
