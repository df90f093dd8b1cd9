"""Nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis").

Neighbours are ranked by the inner product of the (preprocessed) features, the sample itself excluded; Huh
et al. L2-normalize rows first, which is `preprocess="l2"` (cosine neighbours).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim.similarity import checks, kernels
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def knn_mask(gram: jnp.ndarray, k: int) -> jnp.ndarray:
  """gram: [n, n] inner products -> [n, n] 0/1, row i marking its k nearest other samples (ties: lower index)."""
  n = gram.shape[0]
  _, idx = jax.lax.top_k(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, gram), k)
  return jnp.zeros_like(gram).at[jnp.arange(n)[:, None], idx].set(1.0)


@functools.partial(jax.jit, static_argnames=("k", "prep"))
def _masks_and_grams(x, y, k, prep):
  k_x = kernels.gram_linear(apply_preprocess(x, prep))
  k_y = kernels.gram_linear(apply_preprocess(y, prep))
  return k_x, k_y, knn_mask(k_x, k), knn_mask(k_y, k)


def _inputs(x, y, k: int, dtype, min_n: int):
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  n = checks.same_samples(x, y, min_n=min_n)
  if not 1 <= k < n:
    raise ValueError(f"k={k} neighbours must lie in [1, n-1] = [1, {n - 1}].")
  return x, y


def mutual_knn(x, y, *, k: int = 10, preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> mean_i |N_k^x(i) & N_k^y(i)| / k in [0, 1].

  Invariant to orthogonal maps and isotropic scaling (of either side), and to any map that keeps each
  sample's neighbour order; not to translation unless the preprocessing removes it.
  """
  x, y = _inputs(x, y, k, dtype, min_n=2)
  _, _, m_x, m_y = _masks_and_grams(x, y, int(k), as_preprocess(preprocess))
  return jnp.mean(jnp.sum(m_x * m_y, 1)) / k


@functools.partial(jax.jit, static_argnames=("k", "debiased", "prep"))
def _cknna(x, y, k, debiased, prep):
  k_x, k_y, m_x, m_y = _masks_and_grams(x, y, k, prep)
  both = m_x * m_y
  hsic = functools.partial(kernels.hsic, debiased=debiased)
  return hsic(both * k_x, both * k_y) / jnp.sqrt(hsic(m_x * k_x, m_x * k_x) * hsic(m_y * k_y, m_y * k_y))


def cknna(x, y, *, k: int = 10, debiased: bool = True, preprocess: str | Preprocess = "none",
          dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> CKNNA = HSIC(M.K, M.L) / sqrt(HSIC(Mx.K, Mx.K) HSIC(My.L, My.L)).

  K, L linear Grams; Mx, My the directed k-NN masks, M = Mx * My (mutual neighbours only); HSIC as in
  kernels.hsic (debiased: Song et al.). Self is never a neighbour, in both estimators. Invariant to
  orthogonal maps and isotropic scaling; not clamped.
  """
  x, y = _inputs(x, y, k, dtype, min_n=4 if debiased else 2)
  return _cknna(x, y, int(k), bool(debiased), as_preprocess(preprocess))
