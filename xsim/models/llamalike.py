"""What Llama, Qwen and Gemma share: HF config reading and the `model.layers.{i}.*` tensor names.

Each family file states the HF config attributes it handles; any other attribute that differs from the config
class's default is refused by name (a port that ignores a config field computes a different model).
"""
from __future__ import annotations

from typing import Any, Iterable

from xsim.models.config import ModelConfig
from xsim.models.convert import TensorSpec, heads_bias, heads_in, heads_out, linear
from xsim.models.rope import inverse_frequencies

# Attributes that never change the forward pass of a float32/bfloat16 inference run.
IGNORED_ATTRIBUTES = frozenset({
    "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "model_type",
    "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "use_cache", "initializer_range", "attention_dropout",
    "hidden_dropout", "max_position_embeddings", "output_hidden_states", "output_attentions", "return_dict",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
    "pretraining_tp", "max_window_layers", "use_sliding_window", "_attn_implementation_autoset",
    "quantization_config", "_sliding_window_pattern", "sliding_window_pattern", "cache_implementation",
    "classifier_dropout", "finetuning_task", "is_decoder", "prefix", "task_specific_params", "num_labels",
})
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh"}


def check_attributes(hf_config: Any, handled: Iterable[str], family: str) -> None:
  """Raises if `hf_config` sets an attribute (away from its class default) that this family does not handle."""
  allowed = IGNORED_ATTRIBUTES | set(handled)
  unknown = sorted(k for k in hf_config.to_diff_dict() if k not in allowed)
  if unknown:
    raise ValueError(f"The {family} port does not implement config attributes {unknown} of this checkpoint; "
                     "its outputs would not match transformers. Add support in xsim/models/ or use another model.")


def activation(name: str) -> str:
  if name not in _ACTIVATIONS:
    raise ValueError(f"Activation {name!r} is not supported; xsim supports {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def head_dim(hf_config: Any) -> int:
  return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def rope_parameters(hf_config: Any, layer_type: str | None = None) -> dict:
  """The RoPE parameter dict for one layer type (transformers 5 nests it by layer type for Gemma 3)."""
  rope = dict(getattr(hf_config, "rope_parameters", None) or {})
  if layer_type is not None and layer_type in rope:
    rope = dict(rope[layer_type])
  if "rope_theta" not in rope:  # transformers 4.x configs keep theta and scaling as attributes
    rope.update(getattr(hf_config, "rope_scaling", None) or {})
    rope["rope_theta"] = getattr(hf_config, "rope_theta", 10000.0)
  return rope


def layer_types(hf_config: Any) -> list[str]:
  types = getattr(hf_config, "layer_types", None)
  if types:
    return list(types)
  sliding = getattr(hf_config, "sliding_window", None)
  return ["sliding_attention" if sliding else "full_attention"] * hf_config.num_hidden_layers


def base_config(hf_config: Any, family: str, **overrides) -> ModelConfig:
  """A ModelConfig for a Llama-like HF config; family files pass what differs (norms, biases, Gemma terms)."""
  dim = head_dim(hf_config)
  rotary_dim = int(dim * rope_parameters(hf_config).get("partial_rotary_factor", 1.0))
  max_pos = hf_config.max_position_embeddings
  types = layer_types(hf_config)
  unknown_types = set(types) - {"full_attention", "sliding_attention"}
  if unknown_types:
    raise ValueError(f"Layer types {sorted(unknown_types)} are not supported (only full and sliding attention).")
  is_sliding = tuple(t == "sliding_attention" for t in types)
  local = None
  if any(is_sliding) and "sliding_attention" in (getattr(hf_config, "rope_parameters", None) or {}):
    local = inverse_frequencies(rope_parameters(hf_config, "sliding_attention"), rotary_dim, max_pos)
  fields = dict(
      family=family,
      num_layers=hf_config.num_hidden_layers,
      hidden_size=hf_config.hidden_size,
      intermediate_size=hf_config.intermediate_size,
      num_heads=hf_config.num_attention_heads,
      num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
      head_dim=dim,
      vocab_size=hf_config.vocab_size,
      norm="rms",
      norm_eps=hf_config.rms_norm_eps,
      activation=activation(getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act),
      mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
      qkv_bias=bool(getattr(hf_config, "attention_bias", False)),
      out_bias=bool(getattr(hf_config, "attention_bias", False)),
      rotary_dim=rotary_dim,
      rope_inv_freq=inverse_frequencies(rope_parameters(hf_config, "full_attention"), rotary_dim, max_pos),
      rope_inv_freq_local=local,
      sliding_window=getattr(hf_config, "sliding_window", None) if any(is_sliding) else None,
      layer_is_sliding=is_sliding,
      attn_scale=dim ** -0.5,
      tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
      max_position_embeddings=max_pos,
  )
  fields.update(overrides)
  return ModelConfig(**fields)


def tensor_specs(config: ModelConfig, prefix: str = "model.") -> tuple[dict, dict]:
  """(top-level, per-layer) TensorSpecs for HF's `model.layers.{i}.self_attn.q_proj.weight` naming."""
  top = {("embed",): TensorSpec(f"{prefix}embed_tokens.weight"),
         ("final_norm", "scale"): TensorSpec(f"{prefix}norm.weight")}
  if not config.tie_embeddings:
    top[("lm_head",)] = TensorSpec("lm_head.weight", linear)
  layer = f"{prefix}layers.{{i}}."
  per_layer = {("attn_norm", "scale"): TensorSpec(layer + "input_layernorm.weight")}
  # Gemma 2/3 name the pre-MLP norm pre_feedforward_layernorm and use post_attention_layernorm after attention.
  if config.sandwich_norms:
    per_layer.update({("post_attn_norm", "scale"): TensorSpec(layer + "post_attention_layernorm.weight"),
                      ("mlp_norm", "scale"): TensorSpec(layer + "pre_feedforward_layernorm.weight"),
                      ("post_mlp_norm", "scale"): TensorSpec(layer + "post_feedforward_layernorm.weight")})
  else:
    per_layer[("mlp_norm", "scale")] = TensorSpec(layer + "post_attention_layernorm.weight")
  for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
    per_layer[("attn", ours, "kernel")] = TensorSpec(f"{layer}self_attn.{theirs}.weight", heads_in)
    if config.qkv_bias:
      per_layer[("attn", ours, "bias")] = TensorSpec(f"{layer}self_attn.{theirs}.bias", heads_bias)
  per_layer[("attn", "o", "kernel")] = TensorSpec(layer + "self_attn.o_proj.weight", heads_out)
  if config.out_bias:
    per_layer[("attn", "o", "bias")] = TensorSpec(layer + "self_attn.o_proj.bias")
  if config.qk_norm:
    per_layer[("attn", "q_norm", "scale")] = TensorSpec(layer + "self_attn.q_norm.weight")
    per_layer[("attn", "k_norm", "scale")] = TensorSpec(layer + "self_attn.k_norm.weight")
  for name in ("gate", "up", "down"):
    per_layer[("mlp", name, "kernel")] = TensorSpec(f"{layer}mlp.{name}_proj.weight", linear)
    if config.mlp_bias:
      per_layer[("mlp", name, "bias")] = TensorSpec(f"{layer}mlp.{name}_proj.bias")
  return top, per_layer
