"""Input checks shared by the public similarity functions, so bad input fails here and not inside XLA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Every float32 matmul in xsim.similarity runs at full precision: TF32 on NVIDIA GPUs moved debiased CKA by
# up to 3e-3 (shared/BENCHMARKS.md).
HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(dtype) -> jnp.dtype:
  """float32 (default) or float64; float64 needs x64 mode, which JAX keeps off by default."""
  dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)
  if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
    raise ValueError(f"dtype={dtype} is not supported; use float32 or float64.")
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype=float64 needs 64-bit mode: call inside `with jax.enable_x64(True):` or set "
                     "jax.config.update('jax_enable_x64', True) at start-up.")
  return dtype


def features(x, name: str, ndim: int, dtype) -> jnp.ndarray:
  """Returns x as a `dtype` array after checking it has `ndim` axes ([n, d] or [L, n, d]) and finite size."""
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  layout = "[n, d]" if ndim == 2 else "[layers, n, d]"
  if x.ndim != ndim:
    raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}.")
  if 0 in x.shape:
    raise ValueError(f"{name} has an empty axis, shape {tuple(x.shape)}.")
  return jnp.asarray(x, dtype)


def same_samples(x, y, min_n: int = 2) -> int:
  """Both arrays hold the same samples (axis -2) and at least `min_n` of them; returns n."""
  n, ny = x.shape[-2], y.shape[-2]
  if n != ny:
    raise ValueError(f"x and y must hold the same samples along axis -2, got n={n} and n={ny}.")
  if n < min_n:
    raise ValueError(f"this measure needs at least {min_n} samples, got n={n}.")
  return n
