"""Orthogonal Procrustes similarity (Schonemann 1966; as a representation metric, Williams et al. 2021)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


@functools.partial(jax.jit, static_argnames=("prep",))
def _procrustes(x, y, prep):
  x, y = apply_preprocess(x, prep), apply_preprocess(y, prep)
  x, y = x - x.mean(0), y - y.mean(0)
  nuclear = jnp.sum(jnp.linalg.svd(jnp.einsum("nd,ne->de", x, y, precision=HIGHEST), compute_uv=False))
  return nuclear / (jnp.linalg.norm(x) * jnp.linalg.norm(y))


def procrustes(x, y, *, preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> |X'Y|_* / (|X|_F |Y|_F) of centered X, Y, in [0, 1].

  Equals 1 - min_R |X/|X| - Y/|Y| R|_F^2 / 2 over orthogonal R (partial isometries when d1 != d2).
  Invariant to translation, orthogonal maps and isotropic scaling; not to other invertible maps.
  """
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  checks.same_samples(x, y)
  return _procrustes(x, y, as_preprocess(preprocess))
