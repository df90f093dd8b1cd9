"""One config schema for every model family xsim ports.

Each family file (`llama.py`, `qwen.py`, `gemma.py`, `gpt_neox.py`) translates a Hugging Face config into a
`ModelConfig`; the shared decoder in `transformer.py` reads only this schema. `check_hf_shapes` refuses a
model file whose Hugging Face config describes no possible model, before any family code divides by its sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from xsim.errors import InputError

# The sizes of a model, as ModelConfig and as Hugging Face configs name them: each a positive int.
_SIZES = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size")
_HF_SIZES = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "head_dim", "vocab_size")


def _is_size(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer, as the shared building blocks need it.

  Attributes:
    family: "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3" or "gpt_neox".
    num_layers: transformer blocks; `hidden_states` has num_layers + 1 entries.
    hidden_size: residual-stream width d.
    intermediate_size: MLP width.
    num_heads / num_kv_heads / head_dim: attention shape (grouped-query when num_kv_heads < num_heads).
    vocab_size: rows of the embedding matrix.
    norm: "rms" (RMSNorm) or "layer" (LayerNorm with bias).
    norm_eps: epsilon of every norm.
    norm_weight_offset: 1.0 for Gemma, whose RMSNorm multiplies by (1 + w); else 0.0.
    norm_scale_in_float32: Gemma multiplies the weight before casting back ((x * w).to(dtype)); Llama casts first.
    mlp: "gated" (act(gate) * up, then down) or "plain" (act(in) then out).
    activation: "silu", "gelu" (exact) or "gelu_tanh".
    mlp_bias / qkv_bias / out_bias: whether those projections carry a bias.
    qk_norm: per-head norm on queries and keys before RoPE (Qwen3, Gemma 3).
    sandwich_norms: extra norms after attention and after the MLP (Gemma 2 and 3).
    parallel_residual: x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX); else sequential.
    rotary_dim: leading dims of each head that RoPE rotates (partial rotary when < head_dim).
    rope_inv_freq: inverse frequencies [rotary_dim // 2] for global (full-attention) layers.
    rope_inv_freq_local: inverse frequencies for sliding-window layers (Gemma 3 uses another base).
    sliding_window: window length in tokens of sliding layers (a key is visible if q - k < window).
    layer_is_sliding: one flag per block.
    attn_scale: multiplier of q.k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar ** -0.5).
    attn_softcap / final_softcap: tanh soft-capping of attention scores / output logits (Gemma 2).
    embed_scale: multiplier of the embedding output (sqrt(d) for Gemma), or None.
    tie_embeddings: the output head reuses the embedding matrix.
    max_position_embeddings: the longest input the model was trained for (HF max_position_embeddings, GGUF
      context_length), or None if unknown. Longer inputs run, but out of the model's training distribution.
    attention_block_size: queries and keys per block of the blockwise attention, or None for the platform's
      default (see `layers.blockwise_attention`). An execution choice: results agree up to rounding. Attention
      memory per layer is about batch x heads x block^2 floats.
    attention: "blockwise" (every family, every platform) or "fused": jax.nn.dot_product_attention, cuDNN's
      flash kernels on NVIDIA GPUs in bfloat16 / float16 (see `layers.fused_attention`); not for sliding-window
      layers or soft-capping. An execution choice like the block size.
  """
  family: str
  num_layers: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int
  norm: str = "rms"
  norm_eps: float = 1e-6
  norm_weight_offset: float = 0.0
  norm_scale_in_float32: bool = False
  mlp: str = "gated"
  activation: str = "silu"
  mlp_bias: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  sandwich_norms: bool = False
  parallel_residual: bool = False
  rotary_dim: int = 0
  rope_inv_freq: tuple[float, ...] = ()
  rope_inv_freq_local: Optional[tuple[float, ...]] = None
  sliding_window: Optional[int] = None
  layer_is_sliding: tuple[bool, ...] = ()
  attn_scale: float = 1.0
  attn_softcap: Optional[float] = None
  final_softcap: Optional[float] = None
  embed_scale: Optional[float] = None
  tie_embeddings: bool = False
  max_position_embeddings: Optional[int] = None
  attention_block_size: Optional[int] = None
  attention: str = "blockwise"

  def __post_init__(self):
    for name in _SIZES:
      if not _is_size(getattr(self, name)):
        raise ValueError(f"{name}={getattr(self, name)!r} must be a positive int.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}.")
    if len(self.layer_is_sliding) != self.num_layers:
      raise ValueError(f"layer_is_sliding has {len(self.layer_is_sliding)} flags for {self.num_layers} layers.")
    if any(self.layer_is_sliding) and not self.sliding_window:
      raise ValueError("Some layers are sliding-window layers but sliding_window is not set.")
    if 2 * len(self.rope_inv_freq) != self.rotary_dim or self.rotary_dim > self.head_dim:
      raise ValueError(f"rotary_dim={self.rotary_dim} must be 2 * len(rope_inv_freq) and <= head_dim.")
    if self.attention_block_size is not None and self.attention_block_size < 1:
      raise ValueError(f"attention_block_size={self.attention_block_size} must be positive.")
    if self.attention == "fused" and (any(self.layer_is_sliding) or self.attn_softcap is not None):
      raise ValueError(f"attention='fused' has no sliding-window layers or soft-capping, which this {self.family} "
                       "model uses; keep attention='blockwise'.")
    for name, allowed in (("norm", ("rms", "layer")), ("mlp", ("gated", "plain")),
                          ("activation", ("silu", "gelu", "gelu_tanh")), ("attention", ("blockwise", "fused"))):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}.")

  @property
  def num_params(self) -> int:
    """Parameter count implied by the shapes (embeddings counted once when tied)."""
    d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = d * f * (3 if self.mlp == "gated" else 2)
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.vocab_size * d + head + self.num_layers * (attn + mlp)

  def flops_per_token(self, seq_len: int, with_logits: bool = True) -> float:
    """Forward FLOPs per token: 2 x matmul parameters plus attention scores and values (causal average)."""
    d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
    attn_proj = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = d * f * (3 if self.mlp == "gated" else 2)
    scores = 2 * self.num_heads * hd * seq_len / 2  # q.k and p.v over on average seq_len / 2 keys
    per_layer = 2 * (attn_proj + mlp) + 2 * scores
    logits = 2 * self.vocab_size * d if with_logits else 0
    return self.num_layers * per_layer + logits


def check_hf_shapes(fields: Mapping[str, Any], config_class: Any, source: str,
                    keys: Optional[Mapping[str, str]] = None) -> None:
  """Raises InputError naming `source`, the field and its value if a HF config's sizes describe no model.

  fields: HF attribute -> value as the file states it; an absent one takes `config_class`'s default (a
    transformers config class, or None for no defaults). keys: HF attribute -> the file's own name for it where
    that differs (a GGUF key such as "llama.attention.head_count").
  Every size that is set (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads,
  num_key_value_heads, head_dim, vocab_size) must be a positive int, num_key_value_heads must divide
  num_attention_heads, and where neither the file nor the class gives head_dim (heads are then
  hidden_size / num_attention_heads wide) the division must be exact.
  """
  keys = keys or {}
  values = {f: fields[f] if f in fields else getattr(config_class, f, None) for f in _HF_SIZES}

  def named(f: str) -> str:
    return f"{keys.get(f, f)}={values[f]!r}" + ("" if f in fields else " (not set: the default)")

  fix = ("The file is damaged or was edited: restore the value from the original model's config, or re-download "
         "or re-convert the model.")
  for f, value in values.items():
    if value is not None and not _is_size(value):
      raise InputError(f"{source}: {named(f)} is impossible: a size must be a positive int. {fix}")
  heads, kv_heads, hidden = values["num_attention_heads"], values["num_key_value_heads"], values["hidden_size"]
  if heads is not None and kv_heads is not None and heads % kv_heads:
    raise InputError(f"{source}: {named('num_key_value_heads')} does not divide {named('num_attention_heads')}; "
                     f"each key/value head must serve a whole number of query heads. {fix}")
  if values["head_dim"] is None and heads is not None and hidden is not None and hidden % heads:
    raise InputError(f"{source}: {named('hidden_size')} is not divisible by {named('num_attention_heads')} and no "
                     f"head_dim is given, so the heads would be {hidden} / {heads} wide. {fix}")
