"""Feature preprocessing applied the same way before every similarity measure.

Massive activations (a few dimensions near 1,000 in some layers) dominate linear CKA, so raw and treated
features must be comparable side by side (STUDY.md, point 4). Every option acts on one layer's [n, d] block
and maps over any leading axes, so `xs: [L, n, d]` is treated layer by layer.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

METHODS = ("none", "center", "standardize", "clip", "drop_outliers", "l2")
OUTLIER_SCORES = ("max_abs", "variance")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """One preprocessing option and its parameters (hashable, so it can be a static jit argument).

  method: "none"; "center" (subtract the column mean); "standardize" (per dimension: zero mean, unit std;
    constant dimensions become 0); "clip" (clip |x| at the `quantile` of |x| over the layer's entries, as
    Huh et al. 2024); "drop_outliers" (zero the `k` dimensions with the largest `outlier_by` score:
    "max_abs" = max_i |x_id|, the massive-activation criterion, or "variance"; zeroing equals removal for
    every measure here and keeps shapes static); "l2" (scale each row to unit norm; zero rows stay 0).
  """
  method: str = "none"
  quantile: float = 0.99
  k: int = 0
  outlier_by: str = "max_abs"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"preprocess method {self.method!r} is unknown; use one of {METHODS}.")
    if self.method == "clip" and not 0.0 < self.quantile <= 1.0:
      raise ValueError(f"clip quantile={self.quantile} must lie in (0, 1], e.g. 0.99.")
    if self.method == "drop_outliers":
      if self.k < 1:
        raise ValueError(f"drop_outliers needs k >= 1 dimensions to drop, got k={self.k}.")
      if self.outlier_by not in OUTLIER_SCORES:
        raise ValueError(f"outlier_by={self.outlier_by!r} is unknown; use one of {OUTLIER_SCORES}.")


def as_preprocess(spec: str | Preprocess | None) -> Preprocess:
  """Accepts a `Preprocess`, a method name (default parameters) or None (= "none")."""
  if spec is None:
    return Preprocess()
  if isinstance(spec, Preprocess):
    return spec
  if isinstance(spec, str):
    return Preprocess(spec)
  raise ValueError(f"preprocess must be a method name or a Preprocess, got {type(spec).__name__}.")


def _one_layer(x: jnp.ndarray, p: Preprocess) -> jnp.ndarray:
  """x: [n, d] -> [n, d]."""
  if p.method == "none":
    return x
  if p.method == "center":
    return x - x.mean(0)
  if p.method == "standardize":
    std = x.std(0)
    return (x - x.mean(0)) / jnp.where(std > 0, std, 1.0)
  if p.method == "clip":
    bound = jnp.quantile(jnp.abs(x), p.quantile)
    return jnp.clip(x, -bound, bound)
  if p.method == "drop_outliers":
    if p.k >= x.shape[-1]:
      raise ValueError(f"drop_outliers k={p.k} would drop every one of the {x.shape[-1]} dimensions.")
    score = jnp.abs(x).max(0) if p.outlier_by == "max_abs" else x.var(0)
    _, top = jax.lax.top_k(score, p.k)
    return x.at[:, top].set(0.0)
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)  # "l2"
  return x / jnp.where(norm > 0, norm, 1.0)


def preprocess(x: jnp.ndarray, spec: str | Preprocess | None) -> jnp.ndarray:
  """x: [..., n, d] -> [..., n, d], each [n, d] block treated on its own."""
  p = as_preprocess(spec)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"preprocess needs features of shape [..., n, d], got shape {x.shape}.")
  fn = lambda block: _one_layer(block, p)
  for _ in range(x.ndim - 2):
    fn = jax.vmap(fn)
  return fn(x)
