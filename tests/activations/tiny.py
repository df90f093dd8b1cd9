"""Tiny checkpoints with real (trained) fast tokenizers of two different kinds, for extraction tests.

With PyTorch, transformers initialises and saves the model; without it (the newest Python's stack, where CI runs
the tests that need no PyTorch), the same architecture's tensors are drawn with NumPy and saved as safetensors
under transformers' names.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, and Berlin is in Germany.",
    "A model reads text one token at a time; words split into pieces.", "Numbers like 1234 and 56 appear too!",
    "Representations of different language models may share structure.", "She said: hello, world. Then left.",
] * 20
TEXTS = ["The capital of France is Paris.", "Quick brown foxes jump over lazy dogs again and again",
         "Language models read text, one token at a time.", "Hello world", "Berlin is in Germany; Paris is not.",
         "Numbers: 1234, 56 and 7.", "She said hello, then the fox left the quick dog.",
         "Words split into pieces of different lengths for each tokenizer we train here."]


def sentencepiece_like(vocab_size: int = 160):
  """Metaspace BPE that prepends BOS and pads on the left (like Gemma's)."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(TRAINING_TEXT, trainers.BpeTrainer(vocab_size=vocab_size,
                                                             special_tokens=["<pad>", "<bos>", "<unk>"]))
  tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                              unk_token="<unk>", padding_side="left")


def bytelevel_like(vocab_size: int = 300):
  """GPT-2-style byte-level BPE with no BOS that pads on the right (like SmolLM2's and Qwen's)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  tok.train_from_iterator(TRAINING_TEXT, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                              eos_token="<|endoftext|>", padding_side="right")


def make_model_dir(directory, tokenizer_kind: str, family: str = "llama", seed: int = 0):
  """Saves a random tiny model whose vocabulary fits the tokenizer, with the tokenizer, to `directory`."""
  tokenizer = sentencepiece_like() if tokenizer_kind == "sentencepiece" else bytelevel_like()
  vocab = len(tokenizer)
  if family == "llama":
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
  else:
    config = transformers.Gemma2Config(vocab_size=vocab, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=6,
                                       query_pre_attn_scalar=16, max_position_embeddings=512)
  if importlib.util.find_spec("torch") is None:
    _save_numpy_model(config, directory, seed)
  else:
    import torch
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
  tokenizer.save_pretrained(directory)
  return directory


def _save_numpy_model(config, directory, seed: int) -> None:
  """config's model with N(0, 0.02) weights (norm scales 1, Gemma's 0, its scale being 1 + w) in transformers'
  tensor names, as model.safetensors beside config.json."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
  q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
  gemma = config.model_type.startswith("gemma")
  norm = lambda: (np.zeros if gemma else np.ones)(d, np.float32)
  weight = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  tensors = {"model.embed_tokens.weight": weight(v, d), "model.norm.weight": norm()}
  if not config.tie_word_embeddings:
    tensors["lm_head.weight"] = weight(v, d)
  norms = ("input_layernorm", "post_attention_layernorm") + (
      ("pre_feedforward_layernorm", "post_feedforward_layernorm") if gemma else ())
  for i in range(config.num_hidden_layers):
    layer = f"model.layers.{i}."
    tensors.update({layer + n + ".weight": norm() for n in norms})
    tensors.update({layer + "self_attn.q_proj.weight": weight(q, d), layer + "self_attn.k_proj.weight": weight(kv, d),
                    layer + "self_attn.v_proj.weight": weight(kv, d), layer + "self_attn.o_proj.weight": weight(d, q),
                    layer + "mlp.gate_proj.weight": weight(f, d), layer + "mlp.up_proj.weight": weight(f, d),
                    layer + "mlp.down_proj.weight": weight(d, f)})
  config.save_pretrained(directory)
  save_file(tensors, f"{directory}/model.safetensors", metadata={"format": "pt"})
