"""Tiny random transformers checkpoints of every ported variant, written with save_pretrained."""
from __future__ import annotations

import numpy as np
import torch
import transformers

_COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
               max_position_embeddings=256)

# name -> (config class, kwargs). Odd sizes, GQA and every feature the ports must honour.
VARIANTS = {
    "llama": (transformers.LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama_tied_bias": (transformers.LlamaConfig, dict(num_key_value_heads=4, tie_word_embeddings=True,
                                                       attention_bias=True, mlp_bias=True)),
    "llama3_rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=2, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=8))),
    "mistral_sliding": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=1, head_dim=16)),
    "gemma2": (transformers.Gemma2Config, dict(num_key_value_heads=2, head_dim=16, sliding_window=4,
                                               query_pre_attn_scalar=20, attn_logit_softcapping=5.0,
                                               final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(
        num_hidden_layers=4, num_key_value_heads=1, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                         "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=8.0)})),
    "pythia": (transformers.GPTNeoXConfig, dict(rotary_pct=0.25, use_parallel_residual=True)),
    "neox_sequential": (transformers.GPTNeoXConfig, dict(rotary_pct=0.5, use_parallel_residual=False,
                                                         hidden_act="gelu", attention_bias=False)),
}


def make_checkpoint(variant: str, directory, seed: int = 0):
  """Writes a random tiny model of `variant` to `directory`; returns the torch model (eval, float32)."""
  config_class, overrides = VARIANTS[variant]
  kwargs = {**_COMMON, **overrides}
  if config_class is transformers.GPTNeoXConfig:
    kwargs.pop("num_key_value_heads", None)
  config = config_class(**kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():  # random norms and biases too, so a mis-mapped one cannot hide behind its init
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(torch.randn_like(p) * 0.2 + (0.0 if "norm" in name and "gemma" in config.model_type else
                                              (1.0 if "norm" in name or "layernorm" in name else 0.0)))
      else:
        p.copy_(torch.randn_like(p) * 0.1)
  model.save_pretrained(directory)
  return model


def padded_batch(vocab: int, lengths: list[int], side: str, seed: int = 0):
  """Random ids [B, S] and mask [B, S] with each row's real tokens on the given padding side."""
  rng = np.random.default_rng(seed)
  seq = max(lengths)
  ids = np.zeros((len(lengths), seq), np.int64)
  mask = np.zeros((len(lengths), seq), np.int64)
  for row, n in enumerate(lengths):
    span = slice(seq - n, seq) if side == "left" else slice(0, n)
    ids[row, span] = rng.integers(1, vocab, n)
    mask[row, span] = 1
  return ids, mask
