"""Qwen family: Qwen2/2.5 (bias on q, k, v only) and Qwen3 (per-head RMSNorm on q and k)."""
from xsim.models import llamalike

HANDLED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_parameters", "rope_theta",
           "rope_scaling", "attention_bias", "tie_word_embeddings", "sliding_window", "layer_types")


def config_from_hf(hf_config):
  family = hf_config.model_type
  llamalike.check_attributes(hf_config, HANDLED, family)
  if family == "qwen2":  # Qwen2 hard-codes bias on q, k and v, and none on o.
    return llamalike.base_config(hf_config, family, qkv_bias=True, out_bias=False)
  return llamalike.base_config(hf_config, family, qk_norm=True)


tensor_specs = llamalike.tensor_specs
