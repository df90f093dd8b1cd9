"""Closed-form ridge maps with a whole regularization path from one SVD per source layer.

For training rows X = U S V' (thin SVD, s: [r]) and targets Y_t, ridge with penalty lambda is
  W_t(lambda) = V diag(s / (s^2 + lambda)) U' Y_t.
The SVD depends on the source layer only, so it serves every target layer and every lambda, and each lambda's
validation error follows from a few matrices that do not depend on lambda (see `ridge_path`): the path costs
about two matmuls per pair, not one solve per lambda.

Accuracy. An eigendecomposition of X'X squares the condition number of X: raw activations (massive dimensions
near 1e3 beside others near 0.1) reach 1e5, which leaves float32 (eps = 1.2e-7) no digit. A backward-stable
float32 SVD perturbs X by about eps |X|; by the least-squares perturbation bound (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed., Thm. 20.1) that moves W by about
  eps * kappa * (1 + kappa |R| / (s_1 |W|))  relative,   kappa = s_1 max_k s_k / (s_k^2 + lambda),
with R the training residual and kappa the ridge problem's condition number (s_1 / s_r as lambda -> 0): some
1e-3 for kappa ~ 1e4. Where this bound exceeds REFINE_ABOVE, `ridge_weights` applies iterative refinement
(Higham ch. 12 and 20.5): the residual of the normal equations, X'(Y - X W) - lambda W, is computed from the rows,
where float32 errs in proportion to each column's own scale, and solved with the SVD. Each step shrinks the error
by a factor of about eps * kappa, so a few steps reach float32 accuracy (about 1e-6 relative) for kappa up to
about 1e6; refinement stops when a correction no longer halves, keeping the last weights it improved.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import Precision

from xsim import linalg
from xsim.transfer import train

# Weights whose first-order error bound (module docstring) exceeds this are refined, so unrefined weights stay
# well within 1e-4 of float64: on the raw and standardized rows we measured, the SVD's error was 0.2x to 1.5x the
# bound.
REFINE_ABOVE = 1e-5
MAX_REFINEMENTS = 8
_EPS = float(np.finfo(np.float32).eps)


class RidgePath(NamedTuple):
  """Everything needed to form W(lambda) for any lambda, and the validation error along the path."""
  singular_values: jnp.ndarray  # [r] s of the training rows, descending; r = min(n, da)
  right_vectors: jnp.ndarray  # [r, da] V'
  proj: jnp.ndarray  # [T, r, db] U' Y_t
  val_sse: jnp.ndarray  # [T, K] validation sum of squared errors for each target and lambda
  x_train: jnp.ndarray  # [n, da] the training rows, for refinement
  y_train: jnp.ndarray  # [T, n, db]


def _einsum(spec, *operands):
  return jnp.einsum(spec, *operands, precision=Precision.HIGHEST)


def _shrink(singular_values, lambdas):
  """s / (s^2 + lambda): [r], [K] -> [K, r] (0 where s = 0)."""
  return singular_values / (singular_values**2 + jnp.asarray(lambdas, jnp.float32)[:, None])


def ridge_path(x_train, y_train, x_val, y_val, lambdas) -> RidgePath:
  """Ridge solutions of one source layer to T target layers, and their validation error for each lambda.

  With Z = X_val V, P_t = U' Y_t, G = Z'Z and H_t = Z' Y_val,t, the validation error of W(lambda) is
    |Y_val,t|^2 - 2 sum_kj H_kj f_k P_kj + f' (G o P_t P_t') f,   f = s / (s^2 + lambda),
  so the lambda path needs G, H_t and P_t P_t' once; each lambda costs O(r^2) per target. The errors come from the
  SVD's weights (accurate to the bound in the module docstring), which is ample to rank penalties.

  Args:
    x_train: [n, da] training source rows; the fit has no intercept, so centre them first (for raw features with
      splits.centered_rows, which centres exactly).
    y_train: [T, n, db] training target rows, centred like x_train.
    x_val: [m, da] validation source rows, centred with the training statistics.
    y_val: [T, m, db].
    lambdas: [K] positive penalties in the units of |XW - Y|^2 + lambda |W|^2.

  Returns:
    RidgePath.
  """
  u, s, vt = linalg.svd(x_train)
  proj = _einsum("nk,tnj->tkj", u, y_train)
  z_val = _einsum("ma,ka->mk", x_val, vt)
  gram_val = _einsum("mk,ml->kl", z_val, z_val)
  cross_val = _einsum("mk,tmj->tkj", z_val, y_val)
  proj_gram = _einsum("tkj,tlj->tkl", proj, proj)
  shrink = _shrink(s, lambdas)  # [K, r]
  linear = _einsum("tkj,tkj->tk", cross_val, proj)
  quadratic = _einsum("sk,tkl,sl->ts", shrink, gram_val[None] * proj_gram, shrink)
  val_sse = jnp.sum(y_val**2, axis=(1, 2))[:, None] - 2.0 * _einsum("tk,sk->ts", linear, shrink) + quadratic
  return RidgePath(singular_values=s, right_vectors=vt, proj=proj, val_sse=val_sse, x_train=x_train,
                   y_train=y_train)


def ridge_weights(path: RidgePath, lambdas) -> jnp.ndarray:
  """W_t(lambda_t) for each target, refined where the SVD alone may miss float32 accuracy (module docstring), in
  the [db, da] layout of train.py's maps (y = x W'); lambdas: [T] -> [T, db, da]."""
  lambdas = jnp.asarray(lambdas, jnp.float32)
  s = path.singular_values
  shrink = _shrink(s, lambdas)  # [T, r]
  weights = _einsum("ka,tk,tkj->tja", path.right_vectors, shrink, path.proj)
  # The first-order bound of the module docstring, from the SVD: |W|^2 = sum_k f_k^2 |P_k|^2 and
  # |R|^2 = |Y|^2 - sum_k (1 - (1 - s_k f_k)^2) |P_k|^2.
  proj_norms = jnp.sum(path.proj**2, axis=2)  # [T, r]
  weight_norm = jnp.sqrt(jnp.sum(shrink**2 * proj_norms, axis=1))
  explained = jnp.sum((1.0 - (1.0 - s * shrink) ** 2) * proj_norms, axis=1)
  residual_norm = jnp.sqrt(jnp.maximum(jnp.sum(path.y_train**2, axis=(1, 2)) - explained, 0.0))
  kappa = s[0] * jnp.max(shrink, axis=1)
  relative_residual = jnp.where(weight_norm > 0, residual_norm / (s[0] * jnp.maximum(weight_norm, 1e-30)), 0.0)
  bound = _EPS * kappa * (1.0 + kappa * relative_residual)
  return _refine(path, weights, lambdas, bound > REFINE_ABOVE)


def _refine(path: RidgePath, weights, lambdas, active):
  """Iterative refinement of weights [T, db, da] for the targets where `active` [T] is true.

  A correction is kept only if the next one is at most half its size (else refinement is not converging and the
  weights before it are kept); a target stops once the error predicted after its last correction,
  |d_k|^2 / |d_(k-1)|, is below eps |W|.
  """
  x, y, vt = path.x_train, path.y_train, path.right_vectors
  inverse = 1.0 / (path.singular_values**2 + lambdas[:, None])  # [T, r]

  def correction(w):
    gradient = (_einsum("tnj,na->tja", y - _einsum("na,tja->tnj", x, w), x) - lambdas[:, None, None] * w)
    return _einsum("tja,ka,tk,kb->tjb", gradient, vt, inverse, vt)

  def norm(a):
    return jnp.sqrt(jnp.sum(a**2, axis=(1, 2)))

  def body(state):
    w, delta, scale, active, trusted, step = state
    candidate = w + delta
    new = correction(candidate)
    size = norm(new)
    halves = size <= scale / 2
    converged = size**2 <= _EPS * scale * norm(candidate)
    w = train.masked(active & halves, candidate, w)
    return (w, train.masked(active, new, delta), train.masked(active, size, scale), active & halves & ~converged,
            train.masked(active, halves, trusted), step + 1)

  def cond(state):
    return (state[5] < MAX_REFINEMENTS) & jnp.any(state[3])

  # Step 0 has no pending correction: its candidate is the SVD's weights, which a first correction must halve.
  state = (weights, jnp.zeros_like(weights), norm(weights), active, jnp.zeros_like(active), jnp.int32(0))
  w, delta, _, _, trusted, _ = jax.lax.while_loop(cond, body, state)
  return train.masked(trusted, w + delta, w)


def fit_ridge(x_train, y_train, x_val, y_val, penalties, num_rows=None):
  """Ridge maps with the penalty chosen per target by validation error.

  Args:
    x_train, y_train, x_val, y_val: as in `ridge_path`.
    penalties: [K] per-row penalties, lambda = penalty * num_rows: the minimizer of the mean squared error (over
      rows and target dims) + penalty * |W|_F^2 / db, the optax trainer's objective, so a penalty means the
      same for every n and both trainers.
    num_rows: training rows the mean is over; None for x_train.shape[0] (pass n for the n - 1 rows of
      splits.centered_rows).

  Returns:
    (weight [T, db, da], penalty [T]) at the chosen penalty, and V' [r, da] (r = min(n, da)): the weights lie in
    the span of the training rows, W = (W V) V'.
  """
  penalties = jnp.asarray(penalties, jnp.float32)
  num_rows = x_train.shape[0] if num_rows is None else num_rows
  path = ridge_path(x_train, y_train, x_val, y_val, penalties * num_rows)
  chosen = penalties[jnp.argmin(path.val_sse, axis=1)]
  return ridge_weights(path, chosen * num_rows), chosen, path.right_vectors
