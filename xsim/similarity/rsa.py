"""Representational similarity analysis (Kriegeskorte et al. 2008): correlate two dissimilarity matrices."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim.similarity import checks, kernels
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


def _pearson(a, b):
  a, b = a - a.mean(), b - b.mean()
  return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


def _ranks(v):
  """Ordinal ranks (ties broken by position: continuous dissimilarities rarely tie)."""
  return jnp.argsort(jnp.argsort(v)).astype(v.dtype)


@functools.partial(jax.jit, static_argnames=("kind", "compare", "prep"))
def _rsa(x, y, kind, compare, prep):
  rows, cols = jnp.triu_indices(x.shape[0], 1)
  a = rdm(apply_preprocess(x, prep), kind)[rows, cols]
  b = rdm(apply_preprocess(y, prep), kind)[rows, cols]
  if compare == "spearman":
    a, b = _ranks(a), _ranks(b)
  return _pearson(a, b)


def rsa(x, y, *, rdm: str = "correlation", compare: str = "spearman", preprocess: str | Preprocess = "none",
        dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> Spearman (or Pearson) correlation of the upper triangles of the two RDMs.

  Euclidean RDMs make it invariant to translation and orthogonal maps; Spearman adds isotropic scaling;
  correlation RDMs are invariant to per-sample shifts and scales, not to orthogonal maps.
  """
  if rdm not in RDMS or compare not in COMPARES:
    raise ValueError(f"rdm={rdm!r}, compare={compare!r}: use rdm in {RDMS} and compare in {COMPARES}.")
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  checks.same_samples(x, y, min_n=3)
  return _rsa(x, y, rdm, compare, as_preprocess(preprocess))
