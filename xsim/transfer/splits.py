"""Seeded train/val/test row splits and standardization statistics taken from the training rows only.

Every fit in xsim.transfer (maps, controls, probes) splits rows with `make_split`, so two fits with the same
n, fractions and seed hold out the same rows, and a probe's test rows are the rows its maps never trained on.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.lax import Precision

# A dimension whose training std is below this fraction of its magnitude is treated as constant and left
# unscaled: dividing float32 rounding noise by a near-zero std would turn it into unit-variance features.
_CONSTANT_RTOL = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Row indices of the three parts, each sorted ascending (sorted gathers read memory in order)."""
  train: np.ndarray  # [n_train] int
  val: np.ndarray  # [n_val] int
  test: np.ndarray  # [n_test] int

  def __eq__(self, other):
    return isinstance(other, Split) and all(
        np.array_equal(getattr(self, f), getattr(other, f)) for f in ("train", "val", "test"))

  def keep(self, rows: np.ndarray) -> Split:
    """The split restricted to the rows where the bool mask `rows` [n] is true (indices unchanged)."""
    return Split(*(part[rows[part]] for part in (self.train, self.val, self.test)))


def make_split(n: int, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Split:
  """Splits rows 0..n-1 by one seeded permutation: the first `test_fraction` is test, the next val, the rest train.

  Raises:
    ValueError: a fraction is outside (0, 1), they leave no training rows, or a part would be too small
      (train >= 2, val >= 1, test >= 2 rows).
  """
  for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
    if not 0.0 < fraction < 1.0:
      raise ValueError(f"{name}={fraction} must lie in (0, 1).")
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training rows; "
                     "keep their sum below 1.")
  n_test = int(round(test_fraction * n))
  n_val = int(round(val_fraction * n))
  n_train = n - n_test - n_val
  if n_train < 2 or n_val < 1 or n_test < 2:
    raise ValueError(f"n={n} rows give {n_train} train, {n_val} val and {n_test} test rows; need at least 2, 1 "
                     "and 2: use more rows or change val_fraction/test_fraction.")
  perm = np.random.default_rng(seed).permutation(n)
  return Split(train=np.sort(perm[n_test + n_val:]), val=np.sort(perm[n_test:n_test + n_val]),
               test=np.sort(perm[:n_test]))


def check_layers(x, name: str) -> None:
  """Raises a ValueError unless x is an array of shape [layers, n, d] with no empty axis."""
  if not hasattr(x, "shape") or len(x.shape) != 3 or 0 in x.shape:
    raise ValueError(f"{name} must be an array of shape [layers, n, d] with no empty axis, got "
                     f"{getattr(x, 'shape', type(x).__name__)}.")


def layer_moments(x, rows: np.ndarray, name: str, layers=None) -> tuple[np.ndarray, np.ndarray]:
  """Per-layer mean and std of the given rows, in float64 on the host, one layer at a time (bounded memory).

  Args:
    x: [L, n, d] activations (NumPy or JAX).
    rows: [m] row indices (the training rows).
    name: the argument's name, for error messages.
    layers: indices of the layers to measure (default: all); the others are left NaN.

  Returns:
    (mean, std), each [L, d] float32; constant dimensions get std 1 so they standardize to 0.

  Raises:
    ValueError: a measured layer holds NaN or inf.
  """
  mean = np.full((x.shape[0], x.shape[2]), np.nan, np.float32)
  std = np.full_like(mean, np.nan)
  for layer in range(x.shape[0]) if layers is None else layers:
    block = np.asarray(x[layer], np.float64)[rows]
    mean_l, std_l = block.mean(axis=0), block.std(axis=0)
    if not (np.all(np.isfinite(mean_l)) and np.all(np.isfinite(std_l))):
      raise ValueError(f"{name}[{layer}] holds NaN or inf values in its training rows; clean or drop them first.")
    mean[layer] = mean_l
    std[layer] = np.where(std_l > _CONSTANT_RTOL * np.maximum(np.abs(mean_l), 1.0), std_l, 1.0)
  return mean, std


def standardize(x, mean, std):
  """(x - mean) / std in float32; x: [..., n, d], mean and std: [..., d] (broadcast over rows)."""
  return (jnp.asarray(x, jnp.float32) - mean[..., None, :]) / std[..., None, :]


def centered_rows(x):
  """The rows of x - mean(x) in an orthonormal basis of the vectors orthogonal to the all-ones vector.

  They have the Gram matrix and cross products of the centred rows, so a least-squares fit on them is a fit with
  an intercept, but centring is exact: float32 rows centred by subtraction keep a rounding-sized mean, a
  spurious direction with a tiny singular value that a nearly unpenalized fit with n <= d divides by. The basis
  is rows 2..n of the Householder reflection H that maps 1 / sqrt(n) to -e_1. H acts on each column
  separately, so each column keeps its scale (raw features stay graded).

  Args:
    x: [..., n, d] rows, n >= 2.

  Returns:
    [..., n - 1, d] float32.
  """
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[-2]
  reflector = jnp.full((n,), 1.0 / np.sqrt(n), jnp.float32).at[0].add(1.0)
  reflector = reflector / jnp.linalg.norm(reflector)
  along = jnp.einsum("n,...nd->...d", reflector, x, precision=Precision.HIGHEST)
  return (x - 2.0 * reflector[:, None] * along[..., None, :])[..., 1:, :]
