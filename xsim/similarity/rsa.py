"""Representational similarity analysis (Kriegeskorte et al. 2008): correlate two dissimilarity matrices."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim.similarity import checks, kernels
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess

RDMS = ("correlation", "euclidean")
COMPARES = ("spearman", "pearson")


def rdm(x: jnp.ndarray, kind: str = "correlation") -> jnp.ndarray:
  """x: [n, d] -> [n, n] dissimilarities: 1 - Pearson r between rows ("correlation"), or |x_i - x_j|."""
  if kind == "correlation":
    z = x - x.mean(1, keepdims=True)
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    return 1.0 - kernels.gram_linear(z)
  sq = jnp.sum(x * x, 1)
  return jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * kernels.gram_linear(x), 0.0))


def _ranks(v):
  """Ordinal ranks (ties broken by position: continuous dissimilarities rarely tie)."""
  return jnp.argsort(jnp.argsort(v)).astype(v.dtype)


def rsa_layer(x, kind: str, compare: str, prep: Preprocess) -> jnp.ndarray:
  """x: [n, d] -> Z [n, n], symmetric with a zero diagonal: the RDM's upper triangle (ranked for Spearman),
  centered and scaled to unit norm, in both triangles / sqrt(2), so sum(Z_a * Z_b) is the correlation of
  two layers' upper triangles."""
  n = x.shape[0]
  rows, cols = jnp.triu_indices(n, 1)
  v = rdm(apply_preprocess(x, prep), kind)[rows, cols]
  if compare == "spearman":
    v = _ranks(v)
  v = v - v.mean()
  v = v / (jnp.linalg.norm(v) * 2.0**0.5)
  return jnp.zeros((n, n), v.dtype).at[rows, cols].set(v).at[cols, rows].set(v)


def rsa_pairs(zs_x, zs_y) -> jnp.ndarray:
  """zs_x: [La, n, n], zs_y: [Lb, n, n] (rsa_layer) -> [La, Lb] correlations, one matmul."""
  return jnp.einsum("aij,bij->ab", zs_x, zs_y, precision=HIGHEST)


def check_kinds(kind: str, compare: str):
  if kind not in RDMS or compare not in COMPARES:
    raise ValueError(f"rdm={kind!r}, compare={compare!r}: use rdm in {RDMS} and compare in {COMPARES}.")


@functools.partial(jax.jit, static_argnames=("kind", "compare", "prep"))
def _rsa(x, y, kind, compare, prep):
  return rsa_pairs(rsa_layer(x, kind, compare, prep)[None], rsa_layer(y, kind, compare, prep)[None])[0, 0]


def rsa(x, y, *, rdm: str = "correlation", compare: str = "spearman", preprocess: str | Preprocess = "none",
        dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> Spearman (or Pearson) correlation of the upper triangles of the two RDMs.

  Euclidean RDMs make it invariant to translation and orthogonal maps; Spearman adds isotropic scaling;
  correlation RDMs are invariant to per-sample shifts and scales, not to orthogonal maps.
  """
  check_kinds(rdm, compare)
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  checks.same_samples(x, y, min_n=3)
  return _rsa(x, y, rdm, compare, as_preprocess(preprocess))
