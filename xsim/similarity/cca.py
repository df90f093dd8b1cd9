"""SVCCA (Raghu et al. 2017): CCA between the top singular subspaces of two representations."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def _top_subspace(x, keep: float, dims: Optional[int]):
  """x: [n, d] centered -> (U * mask [n, r], k): left singular vectors of the k kept components, zeroed after.

  k is `dims`, or the fewest components holding a `keep` fraction of the variance.
  """
  u, s, _ = jnp.linalg.svd(x, full_matrices=False)
  if dims is None:
    frac = jnp.cumsum(s * s) / jnp.sum(s * s)
    k = jnp.minimum(1 + jnp.sum(frac < keep), s.shape[0])
  else:
    k = dims
  return u * (jnp.arange(s.shape[0]) < k), k


@functools.partial(jax.jit, static_argnames=("keep", "dims", "prep"))
def _svcca(x, y, keep, dims, prep):
  x, y = apply_preprocess(x, prep), apply_preprocess(y, prep)
  u_x, k_x = _top_subspace(x - x.mean(0), keep, dims)
  u_y, k_y = _top_subspace(y - y.mean(0), keep, dims)
  # Canonical correlations of two subspaces are the singular values of their orthonormal bases' product;
  # the zeroed columns add only zeros, so the sum runs over the min(k_x, k_y) correlations.
  rho = jnp.linalg.svd(jnp.einsum("nr,ns->rs", u_x, u_y, precision=HIGHEST), compute_uv=False)
  return jnp.sum(rho) / jnp.minimum(k_x, k_y)


def svcca(x, y, *, keep: float = 0.99, dims: Optional[int] = None, preprocess: str | Preprocess = "none",
          dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> mean canonical correlation between the top-`keep`-variance (or top-`dims`)
  principal subspaces of centered x and y, in [0, 1].

  Invariant to translation, orthogonal maps and isotropic scaling; CCA alone would be invariant to every
  invertible map, the SVD truncation is not. With k close to n, every correlation tends to 1: keep n >> k.
  """
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  n = checks.same_samples(x, y)
  if dims is None and not 0.0 < keep <= 1.0:
    raise ValueError(f"keep={keep} must be a variance fraction in (0, 1], e.g. 0.99.")
  rank = min(n, x.shape[1], y.shape[1])
  if dims is not None and not 1 <= dims <= rank:
    raise ValueError(f"dims={dims} must lie in [1, min(n, d1, d2)] = [1, {rank}].")
  return _svcca(x, y, float(keep), None if dims is None else int(dims), as_preprocess(preprocess))
