"""Orthogonal Procrustes similarity (Schonemann 1966; as a representation metric, Williams et al. 2021)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim import linalg
from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def procrustes_layer(x, prep: Preprocess):
  """x: [n, d] -> (B [n, min(n, d)], |X|_F) of the centered, preprocessed X, with B'B_y having the singular
  values of X'Y: B = X, or U S of X = U S V' when d > n (V's orthonormal columns leave them unchanged and
  every pair's product shrinks to n x n)."""
  x = apply_preprocess(x, prep)
  x = x - x.mean(0)
  norm = jnp.linalg.norm(x)
  if x.shape[1] > x.shape[0]:
    u, s, _ = linalg.svd(x)
    x = u * s
  return x, norm


def procrustes_pairs(bases_x, norms_x, bases_y, norms_y) -> jnp.ndarray:
  """bases_x: [La, n, r], norms_x: [La], and the same for y (procrustes_layer) -> [La, Lb] |X'Y|_* / (|X| |Y|),
  one x layer against all y layers at a time."""
  def row(args):
    b, norm = args
    c = jnp.einsum("nr,bns->brs", b, bases_y, precision=HIGHEST)
    return jnp.sum(linalg.svd(c, compute_uv=False), -1) / (norm * norms_y)
  return jax.lax.map(row, (bases_x, norms_x))


@functools.partial(jax.jit, static_argnames=("prep",))
def _procrustes(x, y, prep):
  (bx, nx), (by, ny) = procrustes_layer(x, prep), procrustes_layer(y, prep)
  return procrustes_pairs(bx[None], nx[None], by[None], ny[None])[0, 0]


def procrustes(x, y, *, preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> |X'Y|_* / (|X|_F |Y|_F) of centered X, Y, in [0, 1].

  Equals 1 - min_R |X/|X| - Y/|Y| R|_F^2 / 2 over orthogonal R (partial isometries when d1 != d2).
  Invariant to translation, orthogonal maps and isotropic scaling; not to other invertible maps.
  """
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  checks.same_samples(x, y)
  return _procrustes(x, y, as_preprocess(preprocess))
