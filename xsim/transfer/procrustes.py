"""Scaled orthogonal (Procrustes) maps: W = s U V' from the SVD of X'Y (Schonemann 1966).

With W W' = I (orthonormal rows, so da <= db), |XW|^2 = |X|^2 does not depend on W and minimizing |sXW - Y|^2
means maximizing tr(W'X'Y), solved by U V' for X'Y = U S V'; the best scale is then s = sum(S) / |X|^2. With
da > db the rows cannot be orthonormal and |XW|^2 depends on W, so no closed form exists (maps.py refuses it).

Accuracy: nothing here forms X'X; the SVD of X'Y is backward stable, so the map is as accurate as X'Y's own
conditioning allows. For a near-rotation of raw features that is about kappa(X)^2 (X'Y ~ X'X R), beyond float32
at kappa ~ 1e4: the weights along the smallest directions of X are then unreliable, though predictions, which
scale those directions down, stay within a few 1e-4 relative (measured).
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax.lax import Precision
from jax.sharding import Mesh

from xsim import linalg, sharding


def fit_procrustes(x_train, y_train, mesh: Optional[Mesh] = None):
  """Scaled orthogonal maps from one source layer to T target layers.

  Args:
    x_train: [n, da] centred source rows (maps.py passes splits.centered_rows of the standardized rows).
    y_train: [T, n, db] centred target rows, db >= da.
    mesh: y_train's target axis is laid out over all devices of this mesh (T a multiple of its size); each device
      decomposes its own targets.

  Returns:
    [T, db, da] weights (s_t U_t V_t')', in the layout of train.py's maps (y = x W').
  """
  cross = jnp.einsum("na,tnb->tab", x_train, y_train, precision=Precision.HIGHEST)
  u, s, vt = linalg.svd(cross) if mesh is None else sharding.blockwise(linalg.svd, mesh, cross)
  scale = jnp.sum(s, axis=-1) / jnp.sum(x_train**2)
  return scale[:, None, None] * jnp.einsum("tak,tkb->tba", u, vt, precision=Precision.HIGHEST)
