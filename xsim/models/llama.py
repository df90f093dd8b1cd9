"""Llama family (Llama 2, Llama 3.x with llama3 rope scaling, SmolLM2, Mistral): RMSNorm, RoPE, GQA, SwiGLU."""
from xsim.models import llamalike

HANDLED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_parameters", "rope_theta",
           "rope_scaling", "attention_bias", "mlp_bias", "tie_word_embeddings", "sliding_window", "layer_types")


def config_from_hf(hf_config):
  llamalike.check_attributes(hf_config, HANDLED, "llama")
  return llamalike.base_config(hf_config, "llama")


tensor_specs = llamalike.tensor_specs
