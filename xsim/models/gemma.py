"""Gemma 1, 2 and 3: sqrt(d)-scaled embeddings, RMSNorm with (1 + w), GeGLU; Gemma 2/3 add sandwich norms,
alternating sliding/global layers and query_pre_attn_scalar; Gemma 2 soft-caps attention and logits; Gemma 3
adds q/k norms and a separate RoPE base for sliding layers."""
from xsim.models import llamalike

HANDLED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "hidden_activation", "rms_norm_eps", "rope_parameters",
           "rope_theta", "rope_local_base_freq", "rope_scaling", "attention_bias", "tie_word_embeddings",
           "sliding_window", "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping",
           "final_logit_softcapping", "use_bidirectional_attention")


def config_from_hf(hf_config):
  family = {"gemma3_text": "gemma3"}.get(hf_config.model_type, hf_config.model_type)
  llamalike.check_attributes(hf_config, HANDLED, family)
  if getattr(hf_config, "use_bidirectional_attention", False):
    raise ValueError("Gemma with use_bidirectional_attention=True is an encoder; xsim ports causal LMs only.")
  gemma_terms = dict(norm_weight_offset=1.0, norm_scale_in_float32=True, embed_scale=hf_config.hidden_size ** 0.5)
  if family == "gemma":
    return llamalike.base_config(hf_config, family, **gemma_terms)
  return llamalike.base_config(
      hf_config, family, sandwich_norms=True, qk_norm=(family == "gemma3"),
      attn_scale=hf_config.query_pre_attn_scalar ** -0.5,
      attn_softcap=getattr(hf_config, "attn_logit_softcapping", None),
      final_softcap=getattr(hf_config, "final_logit_softcapping", None), **gemma_terms)


tensor_specs = llamalike.tensor_specs
