"""SVCCA (Raghu et al. 2017): CCA between the top singular subspaces of two representations."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from xsim import linalg
from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def svcca_layer(x, keep: float, dims: Optional[int], prep: Preprocess):
  """x: [n, d] -> (U * mask [n, r], k): left singular vectors of the centered, preprocessed x, the k kept
  ones (`dims`, or the fewest holding a `keep` fraction of the variance) and zeros after them."""
  x = apply_preprocess(x, prep)
  u, s, _ = linalg.svd(x - x.mean(0))
  if dims is None:
    frac = jnp.cumsum(s * s) / jnp.sum(s * s)
    k = jnp.minimum(1 + jnp.sum(frac < keep), s.shape[0])
  else:
    k = jnp.asarray(dims)
  return u * (jnp.arange(s.shape[0]) < k), k


def svcca_pairs(bases_x, kept_x, bases_y, kept_y) -> jnp.ndarray:
  """bases_x: [La, n, r], kept_x: [La], and the same for y (svcca_layer) -> [La, Lb] mean canonical
  correlation, one x layer against all y layers at a time.

  Canonical correlations of two subspaces are the singular values of their orthonormal bases' product;
  the zeroed columns add only zeros, so the sum runs over the min(k_x, k_y) correlations.
  """
  def row(args):
    u, k = args
    rho = linalg.svd(jnp.einsum("nr,bns->brs", u, bases_y, precision=HIGHEST), compute_uv=False)
    return jnp.sum(rho, -1) / jnp.minimum(k, kept_y)
  return jax.lax.map(row, (bases_x, kept_x))


def check_svcca(keep: float, dims: Optional[int], rank: Optional[int] = None):
  """keep in (0, 1] (used when dims is None); dims in [1, rank], rank = min(n, d1, d2) when known."""
  if dims is None and not 0.0 < keep <= 1.0:
    raise ValueError(f"keep={keep} must be a variance fraction in (0, 1], e.g. 0.99.")
  if dims is not None and not 1 <= dims <= (dims if rank is None else rank):
    raise ValueError(f"dims={dims} must lie in [1, min(n, d1, d2)] = [1, {rank}].")


@functools.partial(jax.jit, static_argnames=("keep", "dims", "prep"))
def _svcca(x, y, keep, dims, prep):
  (u_x, k_x), (u_y, k_y) = svcca_layer(x, keep, dims, prep), svcca_layer(y, keep, dims, prep)
  return svcca_pairs(u_x[None], k_x[None], u_y[None], k_y[None])[0, 0]


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
  check_svcca(keep, dims, min(n, x.shape[1], y.shape[1]))
  return _svcca(x, y, float(keep), None if dims is None else int(dims), as_preprocess(preprocess))
