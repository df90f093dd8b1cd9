"""Closed-form ridge maps with a whole regularization path from one eigendecomposition per source layer.

For standardized (training-centered) X and Y, ridge with penalty lambda is W(lambda) = Q D(lambda) Q' X'Y with
X'X = Q diag(e) Q' and D(lambda) = diag(1 / (e + lambda)). The eigendecomposition depends on the source layer
only, so it is shared by every target layer, and each lambda's validation error follows from a few matrices
that do not depend on lambda (see `ridge_path`): the path costs about two matmuls per pair, not one per lambda.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.lax import Precision


class RidgePath(NamedTuple):
  """Everything needed to form W(lambda) for any lambda, and the validation error along the path."""
  eigvals: jnp.ndarray  # [da] eigenvalues of X'X (clipped at 0)
  eigvecs: jnp.ndarray  # [da, da] Q
  proj: jnp.ndarray  # [T, da, db] Q' X' Y_t
  val_sse: jnp.ndarray  # [T, K] validation sum of squared errors for each target and lambda


def ridge_path(x_train, y_train, x_val, y_val, lambdas) -> RidgePath:
  """Ridge solutions of one source layer to T target layers, and their validation error for each lambda.

  With Z = X_val Q, C_t = Q' X' Y_t, G = Z'Z and H_t = Z' Y_val,t, the validation error of W(lambda) is
    |Y_val,t|^2 - 2 sum_kj H_kj d_k C_kj + d' (G o C_t C_t') d,   d = 1 / (e + lambda),
  so the lambda path needs G, H_t and C_t C_t' once; each lambda costs O(da^2) per target.

  Args:
    x_train: [n, da] standardized source rows.
    y_train: [T, n, db] standardized target rows.
    x_val: [m, da] standardized validation source rows.
    y_val: [T, m, db].
    lambdas: [K] positive penalties in the units of |XW - Y|^2 + lambda |W|^2.

  Returns:
    RidgePath.
  """
  eigvals, eigvecs = jnp.linalg.eigh(jnp.einsum("na,nb->ab", x_train, x_train, precision=Precision.HIGHEST))
  eigvals = jnp.maximum(eigvals, 0.0)  # X'X is PSD; rounding can leave tiny negative eigenvalues
  proj = jnp.einsum("na,ak,tnj->tkj", x_train, eigvecs, y_train, precision=Precision.HIGHEST)
  z_val = jnp.einsum("ma,ak->mk", x_val, eigvecs, precision=Precision.HIGHEST)
  gram_val = jnp.einsum("mk,ml->kl", z_val, z_val, precision=Precision.HIGHEST)
  cross_val = jnp.einsum("mk,tmj->tkj", z_val, y_val, precision=Precision.HIGHEST)
  proj_gram = jnp.einsum("tkj,tlj->tkl", proj, proj, precision=Precision.HIGHEST)
  shrink = 1.0 / (eigvals[None, :] + jnp.asarray(lambdas)[:, None])  # [K, da]
  linear = jnp.einsum("tkj,tkj->tk", cross_val, proj, precision=Precision.HIGHEST)
  quadratic = jnp.einsum("sk,tkl,sl->ts", shrink, gram_val[None] * proj_gram, shrink, precision=Precision.HIGHEST)
  val_sse = (jnp.sum(y_val**2, axis=(1, 2))[:, None]
             - 2.0 * jnp.einsum("tk,sk->ts", linear, shrink, precision=Precision.HIGHEST) + quadratic)
  return RidgePath(eigvals=eigvals, eigvecs=eigvecs, proj=proj, val_sse=val_sse)


def ridge_weights(path: RidgePath, lambdas) -> jnp.ndarray:
  """W_t(lambda_t) = Q D(lambda_t) C_t for each target, transposed to the [db, da] layout of train.py's maps
  (y = x W'); lambdas: [T] -> [T, db, da]."""
  shrink = 1.0 / (path.eigvals[None, :] + jnp.asarray(lambdas)[:, None])
  return jnp.einsum("ak,tk,tkj->tja", path.eigvecs, shrink, path.proj, precision=Precision.HIGHEST)


def fit_ridge(x_train, y_train, x_val, y_val, penalties):
  """Ridge maps with the penalty chosen per target by validation error.

  Args:
    x_train, y_train, x_val, y_val: as in `ridge_path`.
    penalties: [K] per-row penalties, lambda = penalty * n_train: the minimizer of the mean squared error (over
      rows and target dims) + penalty * |W|_F^2 / db, the optax trainer's objective, so a penalty means the
      same for every n and both trainers.

  Returns:
    (weight [T, db, da], penalty [T]) at the chosen penalty.
  """
  penalties = jnp.asarray(penalties, jnp.float32)
  path = ridge_path(x_train, y_train, x_val, y_val, penalties * x_train.shape[0])
  chosen = penalties[jnp.argmin(path.val_sse, axis=1)]
  return ridge_weights(path, chosen * x_train.shape[0]), chosen
