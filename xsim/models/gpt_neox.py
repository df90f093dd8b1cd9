"""GPT-NeoX / Pythia: LayerNorm with bias, fused QKV (per head: q, k, v), partial rotary, parallel residual."""
from xsim.models import llamalike
from xsim.models.config import ModelConfig
from xsim.models.convert import TensorSpec, heads_out, linear
from xsim.models.rope import inverse_frequencies

HANDLED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "hidden_act", "layer_norm_eps", "rope_parameters", "rotary_pct", "rotary_emb_base", "rope_scaling",
           "attention_bias", "use_parallel_residual", "tie_word_embeddings")


def config_from_hf(hf_config) -> ModelConfig:
  llamalike.check_attributes(hf_config, HANDLED, "gpt_neox")
  head_dim = hf_config.hidden_size // hf_config.num_attention_heads
  rope = llamalike.rope_parameters(hf_config)
  rotary_dim = int(head_dim * rope.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", 1.0)))
  bias = bool(getattr(hf_config, "attention_bias", True))
  return ModelConfig(
      family="gpt_neox", num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
      intermediate_size=hf_config.intermediate_size, num_heads=hf_config.num_attention_heads,
      num_kv_heads=hf_config.num_attention_heads, head_dim=head_dim, vocab_size=hf_config.vocab_size,
      norm="layer", norm_eps=hf_config.layer_norm_eps, mlp="plain",
      activation=llamalike.activation(hf_config.hidden_act), mlp_bias=True, qkv_bias=bias, out_bias=bias,
      parallel_residual=hf_config.use_parallel_residual, rotary_dim=rotary_dim,
      rope_inv_freq=inverse_frequencies(rope, rotary_dim, hf_config.max_position_embeddings),
      layer_is_sliding=(False,) * hf_config.num_hidden_layers, attn_scale=head_dim ** -0.5,
      tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
      max_position_embeddings=hf_config.max_position_embeddings)


def _fused(index: int, is_bias: bool):
  """Slice q (0), k (1) or v (2) out of the fused query_key_value tensor, laid out [heads, 3, E, ...]."""
  def transform(w, c):
    per_head = w.reshape(c.num_heads, 3, c.head_dim, *w.shape[1:])[:, index]
    return per_head if is_bias else per_head.transpose(2, 0, 1)  # [H, E, D] -> [D, H, E]
  return transform


def tensor_specs(config: ModelConfig):
  layer = "gpt_neox.layers.{i}."
  top = {("embed",): TensorSpec("gpt_neox.embed_in.weight"),
         ("final_norm", "scale"): TensorSpec("gpt_neox.final_layer_norm.weight"),
         ("final_norm", "bias"): TensorSpec("gpt_neox.final_layer_norm.bias")}
  if not config.tie_embeddings:
    top[("lm_head",)] = TensorSpec("embed_out.weight", linear)
  per_layer = {}
  for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
    per_layer[(ours, "scale")] = TensorSpec(f"{layer}{theirs}.weight")
    per_layer[(ours, "bias")] = TensorSpec(f"{layer}{theirs}.bias")
  for index, name in enumerate("qkv"):
    per_layer[("attn", name, "kernel")] = TensorSpec(layer + "attention.query_key_value.weight", _fused(index, False))
    if config.qkv_bias:
      per_layer[("attn", name, "bias")] = TensorSpec(layer + "attention.query_key_value.bias", _fused(index, True))
  per_layer[("attn", "o", "kernel")] = TensorSpec(layer + "attention.dense.weight", heads_out)
  if config.out_bias:
    per_layer[("attn", "o", "bias")] = TensorSpec(layer + "attention.dense.bias")
  for ours, theirs in (("up", "dense_h_to_4h"), ("down", "dense_4h_to_h")):
    per_layer[("mlp", ours, "kernel")] = TensorSpec(f"{layer}mlp.{theirs}.weight", linear)
    per_layer[("mlp", ours, "bias")] = TensorSpec(f"{layer}mlp.{theirs}.bias")
  return top, per_layer
