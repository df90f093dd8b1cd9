"""Gram matrices and HSIC estimators for arbitrary kernels (the linear all-pairs fast path is in cka.py)."""
from __future__ import annotations

import jax.numpy as jnp

from xsim.similarity.checks import HIGHEST


def gram_linear(x: jnp.ndarray) -> jnp.ndarray:
  """x: [n, d] -> K: [n, n], K_ij = x_i . x_j."""
  return jnp.einsum("id,jd->ij", x, x, precision=HIGHEST)


def gram_rbf(x: jnp.ndarray, bandwidth: float = 1.0) -> jnp.ndarray:
  """x: [n, d] -> K_ij = exp(-|x_i - x_j|^2 / (2 s^2)), s = bandwidth * median distance.

  The median is over all n^2 squared distances, diagonal included (Kornblith et al. 2019's notebook).
  """
  sq_norms = jnp.sum(x * x, axis=1)
  sq_dist = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram_linear(x), 0.0)
  return jnp.exp(-sq_dist / (2.0 * bandwidth**2 * jnp.median(sq_dist)))


def hsic(k: jnp.ndarray, l: jnp.ndarray, debiased: bool) -> jnp.ndarray:
  """k, l: [n, n] Grams (need not be symmetric) -> HSIC estimate (scalar).

  Biased (Gretton et al. 2005): tr(K H L H) / (n-1)^2, H = I - 11^T/n. Debiased (Song et al. 2012), with
  K~, L~ the Grams with zeroed diagonals: [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
  """
  n = k.shape[0]
  if not debiased:
    kc = k - k.mean(0, keepdims=True)
    lc = l - l.mean(0, keepdims=True)
    return jnp.sum(kc * lc.T) / (n - 1) ** 2  # tr(KHLH) = tr((HK)(HL)): cyclic trace, H idempotent
  zero_diag = 1.0 - jnp.eye(n, dtype=k.dtype)
  kt, lt = k * zero_diag, l * zero_diag
  trace = jnp.sum(kt * lt.T)
  sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
  cross = jnp.dot(kt.sum(0), lt.sum(1), precision=HIGHEST)  # 1'K~ L~1
  return (trace + sums - 2.0 * cross / (n - 2)) / (n * (n - 3))


def cka_from_grams(k: jnp.ndarray, l: jnp.ndarray, debiased: bool) -> jnp.ndarray:
  """k, l: [n, n] -> HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); not clamped, so debiased values may be < 0."""
  return hsic(k, l, debiased) / jnp.sqrt(hsic(k, k, debiased) * hsic(l, l, debiased))
