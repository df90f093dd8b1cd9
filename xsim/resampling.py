"""Resampling primitives shared by similarity and transfer: row permutations, subsets drawn without replacement,
the subsampling interval, permutation p-values and the bootstrap interval of a mean. Pure functions of arrays."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


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


def bootstrap_mean_ci(values, *, num_resamples: int = 1000, level: float = 0.95, seed: int = 0):
  """Percentile bootstrap confidence interval of the mean over the last axis (the rows).

  Unlike xsim.similarity.bootstrap_ci (any measure of two arrays, a JAX key, a tuple of bounds), this takes
  per-row scores, whose resampled means need no recomputation: a resample's mean is counts . values / m with
  counts the multiplicity of each row in the draw, so all resamples cost one [..., m] x [m, R] matmul. Every
  entry of the leading axes is resampled with the same row draws, so intervals of scores taken on the same rows
  (a map, its ceiling, its baseline) are paired.

  Args:
    values: [..., m] per-row scores (e.g. 0/1 hits).
    num_resamples: R, number of bootstrap resamples.
    level: coverage of the interval, in (0, 1).
    seed: seeds the row draws.

  Returns:
    [..., 2] lower and upper bounds.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  if num_resamples < 2:
    raise ValueError(f"num_resamples={num_resamples} must be at least 2.")
  values = jnp.asarray(values, jnp.float32)
  num_rows = values.shape[-1]
  draws = np.random.default_rng(seed).integers(0, num_rows, size=(num_resamples, num_rows))
  offsets = num_rows * np.arange(num_resamples)[:, None]  # one bincount for all resamples (XLA's CPU scatter is slow)
  counts = np.bincount((draws + offsets).ravel(), minlength=num_resamples * num_rows).reshape(draws.shape)
  means = jnp.einsum("...m,rm->...r", values, jnp.asarray(counts, jnp.float32),
                     precision=jax.lax.Precision.HIGHEST) / num_rows
  tail = (1.0 - level) / 2.0
  return jnp.moveaxis(jnp.quantile(means, jnp.array([tail, 1.0 - tail]), axis=-1), 0, -1)
