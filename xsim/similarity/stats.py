"""Baselines and statistics for similarity scores: permutation nulls, bootstrap and subsampling intervals,
p-values, summaries.

A permutation of the rows of y breaks the sample correspondence and keeps everything else, so the null
distribution of any measure (and of the maximum over all layer pairs, which the published study reported
without a null: STUDY.md point 6) is the measure on permuted data. For a grid, one permutation is applied to
every layer of ys jointly, as the layers of one model share their samples.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.cka import LinearTerms, cka_from_terms, gram_tiles, pad_axis
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess

Measure = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def permutations(key: jax.Array, num: int, n: int) -> jnp.ndarray:
  """-> [num, n] independent uniform permutations of range(n)."""
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num))


@functools.partial(jax.jit, static_argnames=("measure", "resample_x", "batch_size"))
def _resample_map(measure: Measure, x, y, index: jnp.ndarray, resample_x: bool, batch_size: Optional[int]):
  """Applies measure(x[idx], y[idx]) (or measure(x, y[idx])) for each row of index [R, m], rows on axis -2.

  Compiled once per measure object and shapes; lax.map with batch_size vmaps that many resamples at a time.
  """
  def one(idx):
    xi = jnp.take(x, idx, axis=-2) if resample_x else x
    return measure(xi, jnp.take(y, idx, axis=-2))
  return jax.lax.map(one, index, batch_size=batch_size)


def _arrays(x, y, dtype):
  dtype = checks.compute_dtype(dtype)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  if x.ndim < 2 or y.ndim < 2:
    raise ValueError(f"x and y need samples on axis -2 ([n, d] or [L, n, d]), got {x.shape} and {y.shape}.")
  return x, y, checks.same_samples(x, y)


def permutation_null(measure: Measure, x, y, *, key: jax.Array, num_permutations: int = 200,
                     batch_size: Optional[int] = 8, dtype=None) -> jnp.ndarray:
  """measure(x, y) -> S; x: [..., n, d1], y: [..., n, d2] -> [P, *S.shape] of measure(x, y[perm]).

  `measure` must be traceable (every xsim.similarity measure is, without `mesh`); it is vmapped over
  `batch_size` permutations at a time (None: one at a time), so memory grows with batch_size. The same
  permutation moves the rows of every layer of y, so the null of S.max() is the null of the max over
  layer pairs. For linear CKA grids, cka_matrix_null gives the same numbers much faster.
  """
  x, y, n = _arrays(x, y, dtype)
  return _resample_map(measure, x, y, permutations(key, num_permutations, n), False, batch_size)


def bootstrap(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 1000,
              batch_size: Optional[int] = 8, dtype=None) -> jnp.ndarray:
  """-> [R, *S.shape] of measure on rows drawn with replacement (the same rows for x and y, all layers).

  Duplicated rows bias debiased HSIC upward: a duplicated pair enters the off-diagonal Gram entries as a
  perfectly shared sample, which the unbiased estimator (Song et al. 2012) only removes from the diagonal.
  Percentile intervals of debiased CKA (and of its max over a layer grid) therefore sit above the point
  estimate, far above it when d >> n; use subsample_ci for those.
  """
  x, y, n = _arrays(x, y, dtype)
  index = jax.random.randint(key, (num_resamples, n), 0, n)
  return _resample_map(measure, x, y, index, True, batch_size)


def bootstrap_ci(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 1000, level: float = 0.95,
                 batch_size: Optional[int] = 8, dtype=None):
  """-> (low, high), each shaped like measure(x, y): the percentile bootstrap interval at `level`.

  Biased upward for debiased CKA (see bootstrap); subsample_ci is the interval to use there.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  samples = bootstrap(measure, x, y, key=key, num_resamples=num_resamples, batch_size=batch_size, dtype=dtype)
  alpha = (1.0 - level) / 2.0
  return jnp.quantile(samples, alpha, axis=0), jnp.quantile(samples, 1.0 - alpha, axis=0)


def _subsample_size(size: Optional[int], n: int) -> int:
  size = n // 2 if size is None else size
  if not 2 <= size < n:
    raise ValueError(f"size={size} must satisfy 2 <= size < n={n} (rows drawn without replacement); pass "
                     f"size=None for n // 2 = {n // 2}, or use more samples.")
  return int(size)


def subsample(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 200, size: Optional[int] = None,
              batch_size: Optional[int] = 8, dtype=None) -> jnp.ndarray:
  """-> [R, *S.shape] of measure on `size` rows drawn without replacement (default n // 2).

  The same rows for x and y and for every layer; resample r uses rows permutations(key, R, n)[r, :size].
  No row is repeated, so each subsample is an ordinary sample of size m and debiased HSIC stays unbiased.
  """
  x, y, n = _arrays(x, y, dtype)
  size = _subsample_size(size, n)
  index = permutations(key, num_resamples, n)[:, :size]
  return _resample_map(measure, x, y, index, True, batch_size)


def subsample_ci(measure: Measure, x, y, *, key: jax.Array, num_resamples: int = 200, level: float = 0.95,
                 size: Optional[int] = None, batch_size: Optional[int] = 8, dtype=None):
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
  size = _subsample_size(size, n)
  samples = subsample(measure, x, y, key=key, num_resamples=num_resamples, size=size, batch_size=batch_size,
                      dtype=dtype)
  estimate = jnp.asarray(measure(x, y))
  deviations = samples - estimate
  scale = (size / (n - size)) ** 0.5
  alpha = (1.0 - level) / 2.0
  return (estimate - scale * jnp.quantile(deviations, 1.0 - alpha, axis=0),
          estimate - scale * jnp.quantile(deviations, alpha, axis=0))


def p_value(observed, null) -> jnp.ndarray:
  """observed: S, null: [P, *S] -> (1 + #{null >= observed}) / (P + 1), elementwise (never 0: the observed
  arrangement is itself one of the equally likely permutations under the null)."""
  observed, null = jnp.asarray(observed), jnp.asarray(null)
  if null.shape[1:] != observed.shape:
    raise ValueError(f"null must be [P, *observed.shape]; got {null.shape} for observed {observed.shape}.")
  return (1.0 + jnp.sum(null >= observed, axis=0)) / (null.shape[0] + 1.0)


def max_adjusted_p_values(observed, null) -> jnp.ndarray:
  """observed: [La, Lb], null: [P, La, Lb] -> [La, Lb] p-values against the null of the max over all pairs
  (Westfall-Young single step), which control the family-wise error over the grid."""
  observed, null = jnp.asarray(observed), jnp.asarray(null)
  if observed.ndim != 2 or null.shape[1:] != observed.shape:
    raise ValueError(f"need observed [La, Lb] and null [P, La, Lb]; got {observed.shape} and {null.shape}.")
  null_max = null.max((1, 2))
  return (1.0 + jnp.sum(null_max[:, None, None] >= observed, axis=0)) / (null.shape[0] + 1.0)


@functools.partial(jax.jit, static_argnames=("debiased", "prep", "chunk_size"))
def _cka_null(xs, ys, perms, debiased, prep, chunk_size):
  xs, ys = apply_preprocess(xs, prep), apply_preprocess(ys, prep)
  xs, ys = xs - xs.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
  n = xs.shape[1]
  tiles, size, side = gram_tiles(n, chunk_size)
  # Zero rows and columns of the padded Grams add nothing; padded indices map to themselves.
  xs, ys = pad_axis(xs, 1, size), pad_axis(ys, 1, size)
  perms = jnp.concatenate([perms, jnp.broadcast_to(jnp.arange(n, size), (perms.shape[0], size - n))], 1)
  ein = functools.partial(jnp.einsum, precision=HIGHEST)
  # Every Gram once, kept for all permutations. K is kept as its tiles on or above the diagonal (symmetry:
  # they are weighted as in gram_tiles), each flattened so a tile's pair sums are one plain [La, side^2] x
  # [side^2, Lb] matmul; L whole, with its layers last, so a permuted tile gathers whole [Lb] vectors (on
  # CPU, other layouts made the gather or the contraction several times slower).
  def k_tile(tile):
    rows = lambda b: jax.lax.dynamic_slice_in_dim(xs, tile[b] * side, side, axis=1)
    return ein("aid,ajd->aij", rows(0), rows(1)).reshape(xs.shape[0], side * side)
  k_tiles = jax.lax.map(k_tile, tiles)  # [T, La, side^2]
  weights = tiles[:, 2].astype(xs.dtype)
  l = ein("bid,bjd->ijb", ys, ys)
  dx, dy = jnp.sum(xs * xs, -1), jnp.sum(ys * ys, -1)
  fixed = dict(self_x=ein("t,tas,tas->a", weights, k_tiles, k_tiles), self_x_diag=jnp.sum(dx * dx, -1),
               trace_x=jnp.sum(dx, -1), self_y=ein("ijb,ijb->b", l, l), self_y_diag=jnp.sum(dy * dy, -1),
               trace_y=jnp.sum(dy, -1), n=jnp.asarray(n, xs.dtype))

  def one(perm):
    # The permuted y's Gram is L[perm][:, perm], symmetric like K: the weighted upper tiles give its
    # product with K.
    def step(_, tile_and_k):
      tile, k_t = tile_and_k
      rows = jax.lax.dynamic_slice_in_dim(perm, tile[0] * side, side)
      cols = jax.lax.dynamic_slice_in_dim(perm, tile[1] * side, side)
      l_t = l[rows[:, None], cols[None, :]].reshape(side * side, -1)
      return None, tile[2].astype(k_t.dtype) * jnp.dot(k_t, l_t, precision=HIGHEST)
    cross = jax.lax.scan(step, None, (tiles, k_tiles))[1].sum(0)
    terms = LinearTerms(cross=cross, cross_diag=ein("an,bn->ab", dx, dy[:, perm]), **fixed)
    return cka_from_terms(terms, debiased)

  # One permutation at a time: vmapping several made the gathers and matmuls slower on CPU.
  return jax.lax.map(one, perms)


def cka_matrix_null(xs, ys, *, key: jax.Array, num_permutations: int = 200, debiased: bool = True,
                    preprocess: str | Preprocess = "none", chunk_size: int = 512, dtype=None) -> jnp.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [P, La, Lb] linear CKA with the rows of all ys layers permuted.

  Same numbers as permutation_null(cka_matrix, ...) with the same key, much faster: the Grams are built
  once and each permutation only reorders tiles of L_b. Memory: about (La / 2 + Lb) n^2 floats for the
  Grams (K as its upper tiles) plus Lb * chunk_size^2 for a permuted tile.
  """
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  n = checks.same_samples(xs, ys, min_n=4 if debiased else 2)
  if min(chunk_size, num_permutations) < 1:
    raise ValueError(f"chunk_size={chunk_size} and num_permutations={num_permutations} must be positive.")
  out = _cka_null(xs, ys, permutations(key, num_permutations, n), bool(debiased), as_preprocess(preprocess),
                  int(chunk_size))
  chex.assert_shape(out, (num_permutations, xs.shape[0], ys.shape[0]))
  return out


class MatrixSummary(NamedTuple):
  """Summary of a [La, Lb] similarity matrix (x layers on rows).

  max, mean: scalars; argmax: (a, b) of the max; depths [m]: relative depths 0..1; diagonal [m]: the value
  at layers round(t (La-1)), round(t (Lb-1)) for each depth t; best_y [La], best_y_value [La]: each x
  layer's best partner and its value; best_x [Lb], best_x_value [Lb]: the same for each y layer.
  """
  max: jnp.ndarray
  argmax: tuple
  mean: jnp.ndarray
  depths: jnp.ndarray
  diagonal: jnp.ndarray
  best_y: jnp.ndarray
  best_y_value: jnp.ndarray
  best_x: jnp.ndarray
  best_x_value: jnp.ndarray


def summarize(matrix, num_depths: int = 9) -> MatrixSummary:
  """matrix: [La, Lb] -> MatrixSummary; 9 depths = 0, 1/8, ..., 1, as in the published study."""
  matrix = jnp.asarray(matrix)
  if matrix.ndim != 2 or num_depths < 2:
    raise ValueError(f"summarize needs a [La, Lb] matrix and num_depths >= 2; got {matrix.shape}, {num_depths}.")
  return _summarize(matrix, int(num_depths))


@functools.partial(jax.jit, static_argnames=("num_depths",))
def _summarize(matrix, num_depths: int) -> MatrixSummary:
  la, lb = matrix.shape
  depths = jnp.linspace(0.0, 1.0, num_depths)
  rows = jnp.round(depths * (la - 1)).astype(int)
  cols = jnp.round(depths * (lb - 1)).astype(int)
  return MatrixSummary(
      max=matrix.max(), argmax=jnp.unravel_index(jnp.argmax(matrix), matrix.shape), mean=matrix.mean(),
      depths=depths, diagonal=matrix[rows, cols],
      best_y=jnp.argmax(matrix, 1), best_y_value=matrix.max(1),
      best_x=jnp.argmax(matrix, 0), best_x_value=matrix.max(0))
