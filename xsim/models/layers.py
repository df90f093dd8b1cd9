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
# Blockwise attention: fewer, larger steps are faster until a block's scores leave the cache. On 2 CPU cores,
# causal attention over 1,024-8,192 tokens runs 1.2-1.7x faster with blocks of 256 than of 128 (heads of 12 and
# 64 wide; at 512 tokens within 1.6x either way); accelerators want 512.
DEFAULT_BLOCK_SIZE = {"cpu": 256, "gpu": 512, "tpu": 512}
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
  def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, key_mask: jnp.ndarray,
               window: Optional[jnp.ndarray]) -> jnp.ndarray:
    """x: [B, S, D]; cos, sin: [B, S, rotary_dim]; key_mask: [B, S] bool (False = pad); window: [] int or None
    (see `blockwise_attention`). Returns [B, S, D]."""
    c = self.config
    q = self._proj("q", x, c.num_heads)      # [B, S, H, E]
    k = self._proj("k", x, c.num_kv_heads)   # [B, T, K, E]
    v = self._proj("v", x, c.num_kv_heads)
    if c.qk_norm:
      q = Norm(c, self.dtype, name="q_norm")(q)
      k = Norm(c, self.dtype, name="k_norm")(k)
    if c.rotary_dim:
      q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    # Query head h reads key/value head h // groups (HF's repeat_kv).
    q = q.reshape(*q.shape[:2], c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
    if c.attention == "fused":
      out = fused_attention(q, k, v, key_mask, scale=c.attn_scale, precision=self.precision)
    else:
      out = blockwise_attention(q, k, v, key_mask, scale=c.attn_scale, softcap=c.attn_softcap, window=window,
                                block_size=c.attention_block_size, precision=self.precision)
    out = out.reshape(*out.shape[:2], c.num_heads, c.head_dim)
    return nn.DenseGeneral(c.hidden_size, axis=(-2, -1), use_bias=c.out_bias, dtype=self.dtype,
                           param_dtype=self.dtype, precision=self.precision, kernel_init=kernel_init,
                           name="o")(out)


def blockwise_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, key_mask: jnp.ndarray, *, scale: float,
                        softcap: Optional[float] = None, window: Optional[jnp.ndarray] = None,
                        block_size: Optional[int] = None, precision: Any = None) -> jnp.ndarray:
  """Causal softmax(scale * q.k) v, one block of queries against one block of keys at a time.

  The online softmax of FlashAttention (Dao et al. 2022) carries each query row's running max, sum and output
  over key blocks, so memory is linear in sequence length. Key blocks wholly in the future (or wholly before a
  sliding window) are skipped, and blocks whose every pair is visible skip the mask. Scores and softmax are
  float32; the result equals the dense softmax up to rounding. Causality and windows use sequence indices, so
  either padding side works.

  q: [B, S, K, G, E] (G query heads share key/value head K); k, v: [B, S, K, E]; key_mask: [B, S] bool, False
  for pads, which are never keys. scale: > 0. softcap: Gemma 2's cap * tanh(scores / cap), before masking.
  window: [] int or None: key t is visible to query s if s - t < window. block_size: queries and keys per
  block (the whole sequence when shorter), None for `default_block_size()`. Query rows with no visible key
  (left-padding queries) return zeros. Returns [B, S, K, G, E] in v's dtype.
  """
  batch, seq, heads, groups, dim = q.shape
  block = min(block_size or default_block_size(), seq)
  num_blocks = -(-seq // block)
  pad = num_blocks * block - seq  # the padded tail is masked out as keys and sliced off as queries

  def blocks(x, seq_axis):  # [B, S, ...] -> [num_blocks, ...] with the block's sequence axis at seq_axis
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(batch, num_blocks, block, *x.shape[2:])
    return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, seq_axis + 1)

  q_blocks = blocks(q, 3)  # [n, B, K, G, block, E]
  # v gets a column of ones, so the same matmul that sums probabilities times values sums the probabilities
  # (the softmax denominator): one pass less over each block's scores.
  k_blocks, v_blocks = blocks(k, 2), blocks(jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1), 2)
  mask_blocks = blocks(key_mask, 1)  # [n, B, block]
  offsets = jnp.arange(block)
  lowest = jnp.finfo(jnp.float32).min

  def logits(dots):
    """Scaled (and soft-capped) scores: monotonic in q.k, so the row max can be taken before this."""
    dots = dots * scale
    return dots if softcap is None else softcap * jnp.tanh(dots / softcap)

  def attend(carry, i, q_i, j, masked: bool):
    """Folds key block j into query block i's running (max, output and sum); masked=False: every pair visible."""
    row_max, acc = carry
    dots = jnp.einsum("bkgse,bkte->bkgst", q_i, k_blocks[j], precision=precision,
                      preferred_element_type=jnp.float32)
    if masked:
      distance = (i - j) * block + offsets[:, None] - offsets[None, :]  # query index - key index
      visible = distance >= 0
      if window is not None:
        visible &= distance < window
      visible = (visible[None] & mask_blocks[j][:, None, :])[:, None, None]  # [B, 1, 1, S_block, T_block]
      dots = jnp.where(visible, dots, -jnp.inf)
    # A row with no visible key yet keeps the finite `lowest` as its max, never -inf - -inf = NaN.
    new_max = jnp.maximum(row_max, logits(dots.max(-1)))
    probs = jnp.exp(logits(dots) - new_max[..., None])
    if masked:  # masked terms are exactly 0 (soft-capping maps -inf to -cap, not -inf)
      probs = jnp.where(visible, probs, 0.0)
    values = jnp.einsum("bkgst,bkte->bkgse", probs.astype(v.dtype), v_blocks[j], precision=precision,
                        preferred_element_type=jnp.float32)
    return new_max, acc * jnp.exp(row_max - new_max)[..., None] + values

  def query_block(args):
    i, q_i = args
    init = (jnp.full((batch, heads, groups, block), lowest), jnp.zeros((batch, heads, groups, block, dim + 1)))

    def step(carry, j):
      needed, unmasked = j <= i, (j < i) & mask_blocks[j].all()
      if window is not None:  # query-key distances in the block: (i - j - 1) * block + 1 .. (i - j + 1) * block - 1
        needed &= (i - j - 1) * block + 1 < window
        unmasked &= (i - j + 1) * block - 1 < window
      branches = (lambda c: c, lambda c: attend(c, i, q_i, j, False), lambda c: attend(c, i, q_i, j, True))
      return jax.lax.switch(jnp.where(needed, jnp.where(unmasked, 1, 2), 0), branches, carry), None

    (_, acc), _ = jax.lax.scan(step, init, jnp.arange(num_blocks))
    values, row_sum = acc[..., :dim], acc[..., dim:]
    return (values / jnp.where(row_sum > 0, row_sum, 1.0)).astype(v.dtype)

  out = jax.lax.map(query_block, (jnp.arange(num_blocks), q_blocks))  # [n, B, K, G, block, E]
  out = jnp.moveaxis(out, 4, 1).reshape(num_blocks * block, batch, heads, groups, dim)
  return jnp.moveaxis(out, 0, 1)[:, :seq]


def fused_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, key_mask: jnp.ndarray, *, scale: float,
                    precision: Any = None) -> jnp.ndarray:
  """Causal softmax(scale * q.k) v through `jax.nn.dot_product_attention`: cuDNN's flash kernels on NVIDIA GPUs
  for bfloat16 / float16 heads of at most 128, XLA's dense attention otherwise (memory quadratic in sequence
  length).

  cuDNN masks padding by sequence lengths, that is real tokens first. Each row is rotated so that its real tokens
  (one contiguous run, on either side: how every xsim batch pads) lead, attended and rotated back. Real queries
  get what `blockwise_attention` gives; pad queries get zeros (there, pads after the real tokens attend to them;
  no xsim result reads a pad position). Shapes as there: q [B, S, K, G, E], k and v [B, S, K, E], key_mask
  [B, S] bool. precision: HIGHEST keeps float32 matmuls at full precision on GPUs (no TF32).
  """
  batch, seq, heads, groups, dim = q.shape
  lengths = key_mask.sum(-1, dtype=jnp.int32)
  first = jnp.argmax(key_mask, axis=-1)  # the first real token of each row

  def rotate(x, shift):  # x: [B, S, ...] -> x[b, (s + shift[b]) % S]
    index = (jnp.arange(seq)[None] + shift[:, None]) % seq
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

  # cuDNN's flash attention takes 16-bit inputs and heads up to 128 wide (256 from Hopper), a multiple of 8.
  cudnn = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and dim % 8 == 0 and dim <= 128
  # Query head k * G + g reads key/value head k, as jax.nn.dot_product_attention groups heads.
  with jax.default_matmul_precision("highest" if precision == jax.lax.Precision.HIGHEST else None):
    out = jax.nn.dot_product_attention(
        rotate(q, first).reshape(batch, seq, heads * groups, dim), rotate(k, first), rotate(v, first),
        scale=scale, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation="cudnn" if cudnn else None)
  out = rotate(out.reshape(q.shape), -first)
  return jnp.where(key_mask[:, :, None, None, None], out, 0).astype(v.dtype)


def default_block_size() -> int:
  """The attention block of the default backend (DEFAULT_BLOCK_SIZE; 512 for other platforms)."""
  return DEFAULT_BLOCK_SIZE.get(jax.default_backend(), 512)


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
  def __call__(self, h: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, key_mask: jnp.ndarray,
               window: Optional[jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """h: [B, S, D] residual stream in; the rest as `Attention`. Returns (residual out, attention output, MLP
    output), each [B, S, D]."""
    c = self.config
    norm = lambda name: Norm(c, self.dtype, name=name)
    attn = Attention(c, self.dtype, self.precision, name="attn")(norm("attn_norm")(h), cos, sin, key_mask, window)
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

