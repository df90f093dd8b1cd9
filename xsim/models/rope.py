"""Rotary position embeddings: inverse frequencies from a HF `rope_parameters` dict, and their application."""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(rope: Mapping[str, Any], rotary_dim: int, max_position_embeddings: int) -> tuple[float, ...]:
  """Inverse frequencies [rotary_dim // 2] for one RoPE parameter set, as transformers computes them (float32)."""
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f"RoPE type {rope_type!r} is not supported; xsim supports {SUPPORTED_ROPE_TYPES}. "
                     "Use a checkpoint without that rope scaling or add it to xsim/models/rope.py.")
  base = float(rope["rope_theta"])
  exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
  inv_freq = (1.0 / (np.float32(base) ** exponents)).astype(np.float32)
  if rope_type == "linear":
    inv_freq = inv_freq / np.float32(rope["factor"])
  elif rope_type == "llama3":
    inv_freq = _llama3_scaling(inv_freq, rope, max_position_embeddings)
  return tuple(float(f) for f in inv_freq)


def _llama3_scaling(inv_freq: np.ndarray, rope: Mapping[str, Any], max_position_embeddings: int) -> np.ndarray:
  """Llama 3.1's frequency-dependent stretch: long wavelengths divided by `factor`, short kept, smooth between."""
  factor = rope["factor"]
  low, high = rope["low_freq_factor"], rope["high_freq_factor"]
  old_context = rope.get("original_max_position_embeddings", max_position_embeddings)
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
  smooth = (old_context / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rotary_tables(inv_freq, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin: [batch, seq, rotary_dim] for integer positions [batch, seq], computed in float32."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotates the first rotary_dim dims of x: [batch, seq, heads, head_dim] (the HF "rotate_half" layout)."""
  rotary_dim = cos.shape[-1]
  rot, keep = x[..., :rotary_dim], x[..., rotary_dim:]
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  half = rotary_dim // 2
  rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  return jnp.concatenate([rot * cos + rotated_half * sin, keep], axis=-1)
