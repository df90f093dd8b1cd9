"""Baselines and statistics for similarity scores: permutation nulls, bootstrap and subsampling intervals of any
measure; resamples are mapped inside one compiled call and, with a mesh, split over its devices. The primitives
(permutations, subsets, subsample_interval, p_value) live in xsim.resampling.

A permutation of the rows of y breaks the sample correspondence and keeps everything else, so the null
distribution of any measure (and of the maximum over all layer pairs, which the published study reported
without a null: STUDY.md point 6) is the measure on permuted data. For a grid, one permutation is applied to
every layer of ys jointly, as the layers of one model share their samples.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from xsim import sharding
from xsim.resampling import permutations, subsample_interval, subsample_size, subsets
from xsim.similarity import checks

Measure = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


@functools.partial(jax.jit, static_argnames=("measure", "resample_x", "batch_size", "mesh"))
def _resample_map(measure: Measure, x, y, index: jnp.ndarray, resample_x: bool, batch_size: Optional[int],
                  mesh: Optional[Mesh]):
  """Applies measure(x[idx], y[idx]) (or measure(x, y[idx])) for each row of index [R, m], rows on axis -2.

  Compiled once per measure object and shapes; lax.map with batch_size vmaps that many resamples at a time.
  With a mesh, each device maps its share of the rows of index (x and y replicated).
  """
  def block(rows, x, y):
    def one(idx):
      xi = jnp.take(x, idx, axis=-2) if resample_x else x
      return measure(xi, jnp.take(y, idx, axis=-2))
    return jax.lax.map(one, rows, batch_size=batch_size)

  if mesh is None:
    return block(index, x, y)
  return jax.tree.map(lambda a: a[:index.shape[0]], sharding.split_map(block, mesh, [index], [x, y]))


def _arrays(x, y, dtype):
  dtype = checks.compute_dtype(dtype)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  if x.ndim < 2 or y.ndim < 2:
    raise ValueError(f"x and y need samples on axis -2 ([n, d] or [L, n, d]), got {x.shape} and {y.shape}.")
  return x, y, checks.same_samples(x, y)


def permutation_null(measure: Measure, x, y, *, key: jax.Array, num_permutations: int = 200,
                     batch_size: Optional[int] = 8, mesh: Optional[Mesh] = None, dtype=None) -> jnp.ndarray:
  """measure(x, y) -> S; x: [..., n, d1], y: [..., n, d2] -> [P, *S.shape] of measure(x, y[perm]).

  `measure` must be traceable (every xsim.similarity measure is, without `mesh`); it is vmapped over
  `batch_size` permutations at a time (None: one at a time), so memory grows with batch_size; `mesh`
  splits the permutations over its devices (same numbers). The same permutation moves the rows of every
  layer of y, so the null of S.max() is the null of the max over layer pairs. For layer grids,
  grid.grid_null_max and cka_matrix_null give the same numbers much faster.
  """
  x, y, n = _arrays(x, y, dtype)
  return _resample_map(measure, x, y, permutations(key, num_permutations, n), False, batch_size, mesh)


def bootstrap(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 1000,
              batch_size: Optional[int] = 8, mesh: Optional[Mesh] = None, dtype=None) -> jnp.ndarray:
  """-> [R, *S.shape] of measure on rows drawn with replacement (the same rows for x and y, all layers).

  Duplicated rows bias debiased HSIC upward: a duplicated pair enters the off-diagonal Gram entries as a
  perfectly shared sample, which the unbiased estimator (Song et al. 2012) only removes from the diagonal.
  Percentile intervals of debiased CKA (and of its max over a layer grid) therefore sit above the point
  estimate, far above it when d >> n; use subsample_ci for those.
  """
  x, y, n = _arrays(x, y, dtype)
  index = jax.random.randint(key, (num_resamples, n), 0, n)
  return _resample_map(measure, x, y, index, True, batch_size, mesh)


def bootstrap_ci(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 1000, level: float = 0.95,
                 batch_size: Optional[int] = 8, mesh: Optional[Mesh] = None, dtype=None):
  """-> (low, high), each shaped like measure(x, y): the percentile bootstrap interval at `level`.

  Biased upward for debiased CKA (see bootstrap); subsample_ci is the interval to use there.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  samples = bootstrap(measure, x, y, key=key, num_resamples=num_resamples, batch_size=batch_size, mesh=mesh,
                      dtype=dtype)
  alpha = (1.0 - level) / 2.0
  return jnp.quantile(samples, alpha, axis=0), jnp.quantile(samples, 1.0 - alpha, axis=0)


def subsample(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 200, size: Optional[int] = None,
              batch_size: Optional[int] = 8, mesh: Optional[Mesh] = None, dtype=None) -> jnp.ndarray:
  """-> [R, *S.shape] of measure on `size` rows drawn without replacement (default n // 2).

  The same rows for x and y and for every layer; resample r uses rows subsets(key, R, n, size)[r], i.e.
  permutations(key, R, n)[r, :size].
  No row is repeated, so each subsample is an ordinary sample of size m and debiased HSIC stays unbiased.
  """
  x, y, n = _arrays(x, y, dtype)
  index = subsets(key, num_resamples, n, size)
  return _resample_map(measure, x, y, index, True, batch_size, mesh)


def subsample_ci(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 200, level: float = 0.95,
                 size: Optional[int] = None, batch_size: Optional[int] = 8, mesh: Optional[Mesh] = None,
                 dtype=None):
  """-> (low, high), each shaped like measure(x, y): the subsampling (delete-d jackknife) interval at `level`.

  With t = measure(x, y), d_r = t_r - t over subsamples of m rows (see subsample) and alpha = (1 - level)/2:
  [t - s q_{1-alpha}(d), t - s q_alpha(d)], s = sqrt(m / (n - m)) (1 for the default m = n // 2). For a
  root-n estimator Var(t_m - t_n) ~ sigma^2 (1/m - 1/n) (rows drawn without replacement) and
  Var(t_n) = sigma^2 / n, so s d has the spread of t - truth; the "basic" form t - s d also subtracts the
  estimate's small-sample bias (its 1/n term exactly at m = n / 2). Politis, Romano & Wolf, Subsampling
  (1999); Shao & Tu, The Jackknife and Bootstrap (1995), delete-d jackknife.

  Prefer it to bootstrap_ci for debiased CKA and its max over a layer grid: no row is duplicated, so
  debiased HSIC stays unbiased on every subsample. Where the true CKA is 0 the estimator converges at rate
  1/n, not 1/sqrt(n), and the interval errs on the wide side (about sqrt(3) x for m = n / 2).
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  x, y, n = _arrays(x, y, dtype)
  size = subsample_size(size, n)
  samples = subsample(measure, x, y, key=key, num_resamples=num_resamples, size=size, batch_size=batch_size,
                      mesh=mesh, dtype=dtype)
  return subsample_interval(measure(x, y), samples, n, size=size, level=level)
