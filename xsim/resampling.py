"""Resampling primitives shared by similarity and transfer: row permutations, subsets drawn without replacement,
the subsampling interval (of any estimate, and of a mean of per-row scores) and permutation p-values. Pure
functions of arrays."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def permutations(key: jax.Array, num: int, n: int) -> jnp.ndarray:
  """-> [num, n] independent uniform permutations of range(n)."""
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num))


def subsample_size(size: Optional[int], n: int) -> int:
  """The rows of a subsample of n rows drawn without replacement: `size`, or n // 2 when None (2 <= size < n)."""
  size = n // 2 if size is None else size
  if not 2 <= size < n:
    raise ValueError(f"size={size} must satisfy 2 <= size < n={n} (rows drawn without replacement); pass "
                     f"size=None for n // 2 = {n // 2}, or use more samples.")
  return int(size)


def subsets(key: jax.Array, num: int, n: int, size: Optional[int] = None) -> jnp.ndarray:
  """-> [num, size] rows of range(n), each drawn without replacement (default size n // 2, see subsample_size):
  row r is the first size entries of permutations(key, num, n)[r]."""
  return permutations(key, num, n)[:, :subsample_size(size, n)]


def subsample_interval(estimate, samples, n: int, *, size: Optional[int] = None, level: float = 0.95):
  """-> (low, high): the basic subsampling interval (xsim.similarity.subsample_ci) from an estimate t (shape S) on
  all n rows and its values samples [R, *S] on subsamples of `size` rows (default n // 2), however they were
  computed (e.g. combined from chunks of a layer grid, or a ratio of several pairs' values on shared subsamples)."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  size = subsample_size(size, n)
  estimate = jnp.asarray(estimate)
  deviations = jnp.asarray(samples) - estimate
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


def mean_interval(values, subsets, *, level: float = 0.95, bounds: Optional[tuple] = None):
  """-> [..., 2]: the subsampling interval (subsample_interval) of the mean over the last axis of per-row scores
  values [..., m] (e.g. 0/1 hits), from subsets [R, s] of the m rows (`subsets`). Every entry of the leading axes
  is resampled on the same rows, so intervals of scores on the same rows (a map, its ceiling, its baseline) are
  paired; bounds (low, high) clip the interval to the scores' range (a basic interval can leave it, e.g. (0, 1)
  for accuracies)."""
  values, subsets = jnp.asarray(values, jnp.float32), jnp.asarray(subsets)
  m = values.shape[-1]
  if subsets.ndim != 2 or int(subsets.max()) >= m:
    raise ValueError(f"subsets must be [R, s] rows of the {m} scored rows, got shape {subsets.shape} with max "
                     f"{int(subsets.max())}; draw them with subsets(key, R, {m}).")
  samples = jnp.moveaxis(values[..., subsets].mean(-1), -1, 0)  # [R, ...]
  low, high = subsample_interval(values.mean(-1), samples, m, size=subsets.shape[1], level=level)
  if bounds is not None:
    low, high = jnp.clip(low, *bounds), jnp.clip(high, *bounds)
  return jnp.stack([low, high], -1)
