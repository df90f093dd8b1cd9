"""Nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis").

Neighbours are ranked by the inner product of the (preprocessed) features, the sample itself excluded; Huh
et al. L2-normalize rows first, which is `preprocess="l2"` (cosine neighbours). Each measure splits into a
per-layer summary (Gram and k-NN mask) and a pair step, so grid.py builds each layer's summary once for a
whole layer grid.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim.similarity import checks, kernels
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def knn_mask(gram: jnp.ndarray, k: int) -> jnp.ndarray:
  """gram: [n, n] inner products -> [n, n] 0/1, row i marking its k nearest other samples (ties: lower index)."""
  n = gram.shape[0]
  _, idx = jax.lax.top_k(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, gram), k)
  return jnp.zeros_like(gram).at[jnp.arange(n)[:, None], idx].set(1.0)


def gram_and_mask(x, k: int, prep: Preprocess):
  """x: [n, d] -> (Gram [n, n] of the preprocessed features, its k-NN mask [n, n])."""
  gram = kernels.gram_linear(apply_preprocess(x, prep))
  return gram, knn_mask(gram, k)


def mutual_overlap(masks_x, masks_y, k: int) -> jnp.ndarray:
  """masks_x: [La, n, n], masks_y: [Lb, n, n] -> [La, Lb] mean_i |N_x(i) & N_y(i)| / k: one matmul of the
  flattened masks (the counts are exact integers; one division, as XLA turns it into a product by the
  reciprocal)."""
  n = masks_x.shape[-1]
  return jnp.einsum("aij,bij->ab", masks_x, masks_y, precision=HIGHEST) / (n * k)


def cknna_self(gram, mask, debiased: bool):
  """HSIC(M.K, M.K) of one layer's Gram [n, n] restricted to its k-NN mask [n, n]."""
  return kernels.hsic(mask * gram, mask * gram, debiased)


def cknna_cross(gram_x, mask_x, gram_y, mask_y, debiased: bool):
  """HSIC(M.K, M.L) with M = Mx * My, the mutual neighbours."""
  both = mask_x * mask_y
  return kernels.hsic(both * gram_x, both * gram_y, debiased)


def check_k(k: int, n: int):
  if not 1 <= k < n:
    raise ValueError(f"k={k} neighbours must lie in [1, n-1] = [1, {n - 1}].")


def _inputs(x, y, k: int, dtype, min_n: int):
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  check_k(k, checks.same_samples(x, y, min_n=min_n))
  return x, y


@functools.partial(jax.jit, static_argnames=("k", "prep"))
def _mutual_knn(x, y, k, prep):
  return mutual_overlap(gram_and_mask(x, k, prep)[1][None], gram_and_mask(y, k, prep)[1][None], k)[0, 0]


def mutual_knn(x, y, *, k: int = 10, preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> mean_i |N_k^x(i) & N_k^y(i)| / k in [0, 1].

  Invariant to orthogonal maps and isotropic scaling (of either side), and to any map that keeps each
  sample's neighbour order; not to translation unless the preprocessing removes it.
  """
  x, y = _inputs(x, y, k, dtype, min_n=2)
  return _mutual_knn(x, y, int(k), as_preprocess(preprocess))


@functools.partial(jax.jit, static_argnames=("k", "debiased", "prep"))
def _cknna(x, y, k, debiased, prep):
  (k_x, m_x), (k_y, m_y) = gram_and_mask(x, k, prep), gram_and_mask(y, k, prep)
  return cknna_cross(k_x, m_x, k_y, m_y, debiased) / jnp.sqrt(
      cknna_self(k_x, m_x, debiased) * cknna_self(k_y, m_y, debiased))


def cknna(x, y, *, k: int = 10, debiased: bool = True, preprocess: str | Preprocess = "none",
          dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> CKNNA = HSIC(M.K, M.L) / sqrt(HSIC(Mx.K, Mx.K) HSIC(My.L, My.L)).

  K, L linear Grams; Mx, My the directed k-NN masks, M = Mx * My (mutual neighbours only); HSIC as in
  kernels.hsic (debiased: Song et al.). Self is never a neighbour, in both estimators. Invariant to
  orthogonal maps and isotropic scaling; not clamped.
  """
  x, y = _inputs(x, y, k, dtype, min_n=4 if debiased else 2)
  return _cknna(x, y, int(k), bool(debiased), as_preprocess(preprocess))
