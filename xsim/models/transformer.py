"""The decoder every family shares: embeddings, a `nn.scan` over blocks, final norm and output head.

Scanning over layers keeps compile time flat in depth; per-layer differences (sliding-window or global
attention, and their RoPE tables) are scanned-in flags, not separate code paths.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from xsim.models.config import ModelConfig
from xsim.models.layers import Block, Norm, kernel_init
from xsim.models.rope import rotary_tables


class Patch(NamedTuple):
  """Replace the residual stream at hidden-state index `layer` (0 = embeddings) for each row.

  layer: [] int; positions: [B] int (rows with a negative position are left alone); values: [B, D].
  """
  layer: jnp.ndarray
  positions: jnp.ndarray
  values: jnp.ndarray


class Steer(NamedTuple):
  """Add a vector to the residual stream at hidden-state index `layers[b]` (0 = embeddings) of each row b, at the
  positions `mask[b]` marks (activation addition).

  layers: [B] int; vectors: [B, D], any scale folded in; mask: [B, S] float, 1.0 where the vector is added.
  """
  layers: jnp.ndarray
  vectors: jnp.ndarray
  mask: jnp.ndarray


class Span(NamedTuple):
  """Run only the blocks between two hidden-state indices, from the residual stream at the first: blocks
  start+1..stop (hidden-state indices start..stop), the rest pass it through unchanged (a lax.cond: they cost
  nothing). For interventions after a block: the unchanged lower blocks are computed once, in an earlier pass.

  start: [] int hidden-state index of `hidden` (0 = embeddings); hidden: [B, S, D] the residual stream there, or
  None for the embeddings of the input ids (start 0); stop: [] int the last hidden-state index computed.
  """
  start: jnp.ndarray
  hidden: Optional[jnp.ndarray]
  stop: jnp.ndarray


@flax.struct.dataclass
class ForwardOutput:
  """logits: [B, S, V] ([B, V] with logit_positions) or None; hidden_states: [L + 1, B, S, D], index 0 the (scaled) embeddings and index i the
  residual stream after block i, before the final norm; final_hidden: [B, S, D] after the final norm;
  attn_out, mlp_out: [L, B, S, D] block outputs (only with return_sites=True)."""
  logits: Optional[jnp.ndarray]
  hidden_states: jnp.ndarray
  final_hidden: jnp.ndarray
  attn_out: Optional[jnp.ndarray] = None
  mlp_out: Optional[jnp.ndarray] = None


def _apply_patch(h: jnp.ndarray, index: jnp.ndarray, patch: Optional[Patch]) -> jnp.ndarray:
  if patch is None:
    return h
  rows = jnp.arange(h.shape[0])
  target = jnp.clip(patch.positions, 0, h.shape[1] - 1)
  current = h[rows, target]
  new = jnp.where((patch.positions >= 0)[:, None], patch.values.astype(h.dtype), current)
  return jnp.where(index == patch.layer, h.at[rows, target].set(new), h)


def _apply_steer(h: jnp.ndarray, index: jnp.ndarray, steer: Optional[Steer]) -> jnp.ndarray:
  if steer is None:
    return h
  added = (index == steer.layers)[:, None, None] * steer.mask[..., None] * steer.vectors[:, None, :]
  return h + added.astype(h.dtype)  # exactly h where nothing is added


class _ScannedBlock(nn.Module):
  """Scan body: one block, then the optional patch and steer at the hidden-state index it produces; with a span
  (start, stop), only blocks start..stop - 1 run (the others return h, and zero block outputs)."""
  config: ModelConfig
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, h, layer_inputs, tables, key_mask, patch, steer, span):
    index, is_sliding = layer_inputs
    (cos, sin), (cos_local, sin_local) = tables
    window = None
    if any(self.config.layer_is_sliding):  # global layers get a window no distance reaches
      window = jnp.where(is_sliding, self.config.sliding_window, jnp.iinfo(jnp.int32).max)
    if cos_local is not None:
      cos, sin = jnp.where(is_sliding, cos_local, cos), jnp.where(is_sliding, sin_local, sin)

    def run(block, h):
      h, attn, mlp = block(h, cos, sin, key_mask, window)
      return _apply_steer(_apply_patch(h, index + 1, patch), index + 1, steer), attn, mlp

    block = Block(self.config, self.dtype, self.precision, name="block")
    if span is None:
      h, attn, mlp = run(block, h)
    else:
      start, stop = span
      h, attn, mlp = nn.cond((index >= start) & (index < stop), run,
                             lambda _, h: (h, jnp.zeros_like(h), jnp.zeros_like(h)), block, h)
    return h, (h, attn, mlp)


class Decoder(nn.Module):
  """A causal LM. Call with input_ids [B, S] int and attention_mask [B, S] (1 = token, 0 = pad; either side)."""
  config: ModelConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray, patch: Optional[Patch] = None,
               steer: Optional[Steer] = None, compute_logits: bool = True, return_sites: bool = False,
               logit_positions: Optional[jnp.ndarray] = None, span: Optional[Span] = None) -> ForwardOutput:
    """logit_positions: [B] int, to compute logits [B, V] at one position per row only (large vocabularies).
    At each hidden-state index the patch is written first, then the steer added. With span.hidden, input_ids only
    shape the call (the residual stream starts from span.hidden): hidden states before span.start repeat the one
    there, those after span.stop repeat the one there, and logits are read from span.stop."""
    c = self.config
    embedding = self.param("embed", kernel_init, (c.vocab_size, c.hidden_size), self.dtype)
    h = jnp.take(embedding, input_ids, axis=0)
    if c.embed_scale is not None:  # Gemma: embeddings * sqrt(d), the scale rounded to the weight dtype.
      h = h * jnp.asarray(c.embed_scale, self.dtype)
    first = jnp.zeros((), jnp.int32)  # hidden-state index 0
    if span is not None and span.hidden is not None:
      h, first = span.hidden.astype(self.dtype), jnp.asarray(span.start, jnp.int32)
    h = _apply_steer(_apply_patch(h, first, patch), first, steer)

    # Positions count real tokens, so a left-padded row gets the positions of its unpadded self.
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    tables = (rotary_tables(c.rope_inv_freq, positions),
              rotary_tables(c.rope_inv_freq_local, positions) if c.rope_inv_freq_local else (None, None))
    layer_inputs = (jnp.arange(c.num_layers), jnp.asarray(c.layer_is_sliding, bool))

    scan = nn.scan(_ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(0,) + (nn.broadcast,) * 5, length=c.num_layers)
    h_last, (per_layer, attn, mlp) = scan(c, self.dtype, self.precision, name="layers")(
        h, layer_inputs, tables, attention_mask.astype(bool), patch, steer,
        None if span is None else (first, jnp.asarray(span.stop, jnp.int32)))
    hidden_states = jnp.concatenate([h[None], per_layer], axis=0)
    final_hidden = Norm(c, self.dtype, name="final_norm")(h_last)

    logits = None
    if compute_logits:
      if c.tie_embeddings:
        head = embedding.T
      else:
        head = self.param("lm_head", kernel_init, (c.hidden_size, c.vocab_size), self.dtype)
      selected = final_hidden
      if logit_positions is not None:
        selected = final_hidden[jnp.arange(final_hidden.shape[0]), logit_positions][:, None]
      logits = jnp.einsum("bsd,dv->bsv", selected, head, precision=self.precision)
      if logit_positions is not None:
        logits = logits[:, 0]
      if c.final_softcap is not None:
        logits = c.final_softcap * jnp.tanh(logits.astype(jnp.float32) / c.final_softcap)
    return ForwardOutput(logits=logits, hidden_states=hidden_states, final_hidden=final_hidden,
                         attn_out=attn if return_sites else None, mlp_out=mlp if return_sites else None)
