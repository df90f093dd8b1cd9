"""Shared building blocks of every ported family: norms, attention, MLPs and the transformer block.

Shapes: batch B, sequence S (queries) and T (keys), model width D, heads H, key/value heads K, head width E.
Every family is one `ModelConfig`; nothing here knows family names.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xsim.models.config import ModelConfig
from xsim.models.rope import apply_rotary

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
# HF checkpoints initialise weights from N(0, 0.02); random-init baselines use the same scale.
kernel_init = nn.initializers.normal(stddev=0.02)


class Norm(nn.Module):
  """RMSNorm (optionally Gemma's (1 + w) form) or LayerNorm over the last axis, computed in float32."""
  config: ModelConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    dim = x.shape[-1]
    # Gemma stores w with the norm computing (1 + w): a zero init is the identity there.
    scale_init = nn.initializers.zeros if c.norm_weight_offset else nn.initializers.ones
    scale = self.param("scale", scale_init, (dim,), self.dtype)
    x32 = x.astype(jnp.float32)
    if c.norm == "layer":
      bias = self.param("bias", nn.initializers.zeros, (dim,), self.dtype)
      centered = x32 - x32.mean(-1, keepdims=True)
      y = centered * jax.lax.rsqrt((centered**2).mean(-1, keepdims=True) + c.norm_eps)
      return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
    y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + c.norm_eps)
    if c.norm_scale_in_float32:  # Gemma: (x * (1 + w)).to(dtype)
      return (y * (scale.astype(jnp.float32) + c.norm_weight_offset)).astype(x.dtype)
    return y.astype(x.dtype) * scale.astype(x.dtype)  # Llama: w * x.to(dtype)


class Attention(nn.Module):
  """Causal multi-head attention with grouped-query heads, RoPE, optional q/k norms and soft-capping."""
  config: ModelConfig
  dtype: Any = jnp.float32
  precision: Any = None

  def _proj(self, name: str, x: jnp.ndarray, heads: int) -> jnp.ndarray:
    c = self.config
    return nn.DenseGeneral((heads, c.head_dim), use_bias=c.qkv_bias, dtype=self.dtype, param_dtype=self.dtype,
                           precision=self.precision, kernel_init=kernel_init, name=name)(x)

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """x: [B, S, D]; cos, sin: [B, S, rotary_dim]; mask: [B, S, S] bool (True = may attend). Returns [B, S, D]."""
    c = self.config
    q = self._proj("q", x, c.num_heads)      # [B, S, H, E]
    k = self._proj("k", x, c.num_kv_heads)   # [B, T, K, E]
    v = self._proj("v", x, c.num_kv_heads)
    if c.qk_norm:
      q = Norm(c, self.dtype, name="q_norm")(q)
      k = Norm(c, self.dtype, name="k_norm")(k)
    if c.rotary_dim:
      q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    groups = c.num_heads // c.num_kv_heads
    # Query head h reads key/value head h // groups (HF's repeat_kv).
    q = q.reshape(*q.shape[:2], c.num_kv_heads, groups, c.head_dim)
    scores = jnp.einsum("bskge,btke->bkgst", q, k, precision=self.precision).astype(jnp.float32) * c.attn_scale
    if c.attn_softcap is not None:  # Gemma 2: cap * tanh(scores / cap), before the mask.
      scores = c.attn_softcap * jnp.tanh(scores / c.attn_softcap)
    # A finite fill keeps fully masked rows (left-padding queries) finite instead of NaN.
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgst,btke->bskge", probs, v, precision=self.precision)
    out = out.reshape(*out.shape[:2], c.num_heads, c.head_dim)
    return nn.DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=c.out_bias, dtype=self.dtype,
                           param_dtype=self.dtype, precision=self.precision, kernel_init=kernel_init,
                           name="o")(out)


class MLP(nn.Module):
  """Gated (SwiGLU / GeGLU: down(act(gate x) * up x)) or plain (out(act(in x))) feed-forward block."""
  config: ModelConfig
  dtype: Any = jnp.float32
  precision: Any = None

  def _dense(self, name: str, features: int) -> nn.Dense:
    return nn.Dense(features, use_bias=self.config.mlp_bias, dtype=self.dtype, param_dtype=self.dtype,
                    precision=self.precision, kernel_init=kernel_init, name=name)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = self.config
    act = _ACTIVATIONS[c.activation]
    if c.mlp == "gated":
      hidden = act(self._dense("gate", c.intermediate_size)(x)) * self._dense("up", c.intermediate_size)(x)
    else:
      hidden = act(self._dense("up", c.intermediate_size)(x))
    return self._dense("down", c.hidden_size)(hidden)


class Block(nn.Module):
  """One transformer block: pre-norm attention and MLP, sequential or parallel, with optional sandwich norms."""
  config: ModelConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, h: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray,
               mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """h: [B, S, D] residual stream in. Returns (residual out, attention output, MLP output), each [B, S, D]."""
    c = self.config
    norm = lambda name: Norm(c, self.dtype, name=name)
    attn = Attention(c, self.dtype, self.precision, name="attn")(norm("attn_norm")(h), cos, sin, mask)
    if c.sandwich_norms:
      attn = norm("post_attn_norm")(attn)
    mlp_module = MLP(c, self.dtype, self.precision, name="mlp")
    if c.parallel_residual:
      mlp = mlp_module(norm("mlp_norm")(h))
      return h + attn + mlp, attn, mlp
    h = h + attn
    mlp = mlp_module(norm("mlp_norm")(h))
    if c.sandwich_norms:
      mlp = norm("post_mlp_norm")(mlp)
    return h + mlp, attn, mlp


def attention_masks(attention_mask: jnp.ndarray, sliding_window: Optional[int]):
  """Causal masks [B, S, S] from a padding mask [B, S]: (global, sliding or None). Pads are never keys.

  Masks use sequence indices, so either padding side works: distances between real tokens are the same.
  """
  seq = attention_mask.shape[1]
  idx = jnp.arange(seq)
  causal = idx[:, None] >= idx[None, :]
  keys = attention_mask.astype(bool)[:, None, :]
  full = causal[None] & keys
  if sliding_window is None:
    return full, None
  near = (idx[:, None] - idx[None, :]) < sliding_window
  return full, full & near[None]
