"""`load_model`: a HF hub id, a local HF directory, a GGUF file, or a packaged offline model name -> `Model`.

`model_source` says which of these a model path is (and rejects one that is none of them, with load_model's own
errors); `read_config` reads only its configuration, for validating an experiment before any weights are read.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Optional

from xsim.errors import InputError
from xsim.models.config import ModelConfig, check_hf_shapes
from xsim.models.model import FAMILIES, Model, family_module, from_hf_tensors, resolve_dtype
from xsim.models.safetensors_io import SafetensorsCheckpoint, checkpoint_files

_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# What a hub snapshot needs: configs, safetensors and tokenizer files (never pickles).
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[\w.-]+)?")
SOURCES = ("gguf", "directory", "packaged", "hub")


def model_source(name_or_path: str) -> str:
  """The kind of model `name_or_path` names, as `load_model` reads it: one of SOURCES.

  "gguf": an existing .gguf file; "directory": a local directory with a config.json; "packaged": a name in
  `xsim.models.assets.MODELS` (fetched into the cache on first use); "hub": anything shaped like a Hugging Face
  hub id ("gpt2", "org/name"), which only loading can prove exists. Raises FileNotFoundError (as load_model
  would) for a missing .gguf file, a directory without config.json, or a path that is none of these.
  """
  from xsim.models import assets
  path = os.path.expanduser(str(name_or_path))
  if path.endswith(".gguf"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    return "gguf"
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"{path} has no config.json; pass a Hugging Face model directory "
                              "(as written by save_pretrained) or a .gguf file.")
    return "directory"
  if path in assets.MODELS:
    return "packaged"
  if not _HUB_ID.fullmatch(path):
    raise FileNotFoundError(f"No model directory or GGUF file at {path!r} (and it is not a packaged model "
                            f"{sorted(assets.MODELS)} or a hub id 'org/name').")
  return "hub"


def read_config(name_or_path: str, *, revision: Optional[str] = None) -> ModelConfig:
  """The ModelConfig `load_model(name_or_path)` would build, without reading any weights.

  Reads config.json (a directory, or a hub id's, fetching that file alone), or a GGUF file's header (a .gguf
  path, or a packaged name, whose file is fetched into the cache first if absent, as load_model would). Raises
  load_model's errors: unknown architecture, unsupported config attribute, impossible sizes (InputError), hub
  unreachable, missing path.
  """
  kind = model_source(name_or_path)
  path = os.path.expanduser(str(name_or_path))
  if kind in ("gguf", "packaged"):
    from xsim.models import gguf
    hf_config = gguf.read_gguf_config(_gguf_path(path, kind))
  else:
    directory = path if kind == "directory" else _download(path, revision, ["config.json"])
    hf_config = _hf_config(directory)
  return family_module(hf_config).config_from_hf(hf_config)


def load_model(name_or_path: str, dtype="float32", *, load_tokenizer: bool = True, allow_pickle: bool = False,
               revision: Optional[str] = None) -> Model:
  """Loads a causal LM as an xsim Model.

  name_or_path: a local HF directory (config.json + safetensors), a `.gguf` file, a packaged offline model name
    (see `xsim.models.assets`, e.g. "smollm2-135m"), or a HF hub id (needs network or a filled HF cache); see
    `model_source`.
  dtype: "float32", "bfloat16" or "float16" (Gemma overflows in float16: use bfloat16 or float32).
  allow_pickle: read `.bin` PyTorch pickles when no safetensors exist. Off by default: unpickling runs code.

  Weights are converted and placed one tensor at a time: peak memory is about the parameters' bytes in `dtype`
  (plus one tensor), not several copies of them.
  """
  kind = model_source(name_or_path)
  path = os.path.expanduser(str(name_or_path))
  if kind in ("gguf", "packaged"):
    return _load_gguf(_gguf_path(path, kind), dtype, load_tokenizer)
  directory = path if kind == "directory" else _download(path, revision, _SNAPSHOT_FILES)
  return _load_directory(directory, dtype, load_tokenizer, allow_pickle, name=path)


def _gguf_path(path: str, kind: str) -> str:
  from xsim.models import assets
  return str(assets.fetch_model(path)) if kind == "packaged" else path


def _warn_dtype(model: Model) -> None:
  if model.config.family.startswith("gemma") and model.dtype == resolve_dtype("float16"):
    logging.warning("Gemma activations overflow float16; use dtype='bfloat16' or 'float32' for %s.", model.name)


def _hf_config(directory: str):
  """The transformers config of a model directory; its config.json's sizes are checked first (`check_hf_shapes`),
  since transformers divides by some of them (a head count of 0 raises ZeroDivisionError inside LlamaConfig)."""
  from huggingface_hub.errors import StrictDataclassError
  from transformers import CONFIG_MAPPING, AutoConfig  # heavy import, only when needed
  path = os.path.join(directory, "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      fields = json.load(f)
  except ValueError as e:  # not UTF-8, or not JSON
    raise InputError(f"{path} is not a JSON file ({e}); restore it from the original model, or re-download it.") from e
  if not isinstance(fields, dict):
    raise InputError(f"{path} holds a JSON {type(fields).__name__}, not an object of config attributes; restore it "
                     "from the original model, or re-download it.")
  model_type = fields.get("model_type")
  check_hf_shapes(fields, CONFIG_MAPPING[model_type] if model_type in FAMILIES else None, path)
  try:
    return AutoConfig.from_pretrained(directory, trust_remote_code=False)
  except StrictDataclassError as e:  # transformers' own validation: a field of the wrong type, sizes it refuses
    raise InputError(f"{path}: transformers refuses this config: {e}\nFix that field, or re-download the model.") from e


def _load_directory(directory: str, dtype, load_tokenizer: bool, allow_pickle: bool, name: str) -> Model:
  hf_config = _hf_config(directory)
  family_module(hf_config)  # unknown architectures fail before any weights are read
  files = checkpoint_files(directory)
  if files:
    tensors = SafetensorsCheckpoint(files)
  else:
    tensors = _pickle_tensors(directory, allow_pickle)
  tokenizer = _tokenizer(directory) if load_tokenizer else None
  if tokenizer is not None:
    _check_vocab(tokenizer, hf_config.vocab_size, directory)
  model = from_hf_tensors(hf_config, tensors, dtype, tokenizer=tokenizer, name=name)
  _warn_dtype(model)
  return model


def _pickle_tensors(directory: str, allow_pickle: bool) -> dict:
  pickles = sorted(p for pattern in _PICKLE_PATTERNS for p in glob.glob(os.path.join(directory, pattern)))
  if not pickles:
    raise FileNotFoundError(f"{directory} has no model.safetensors (or sharded index) and no weights at all.")
  if not allow_pickle:
    raise ValueError(f"{directory} holds only pickled PyTorch weights ({os.path.basename(pickles[0])}); loading them "
                     "can execute arbitrary code. Convert them to safetensors, or pass allow_pickle=True if you "
                     "trust the source.")
  import torch  # only on explicit opt-in
  tensors = {}
  for path in pickles:
    tensors.update({k: v.float().numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})
  return tensors


def _tokenizer(directory: str):
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
  except (OSError, ValueError) as e:
    logging.warning("No tokenizer in %s (%s); model.tokenizer is None.", directory, e)
    return None


def _check_vocab(tokenizer, vocab_size: int, directory: str) -> None:
  """Refuses a tokenizer whose ids reach past the embedding matrix: the embedding lookup (jnp.take) gives NaN
  rows for them, which surfaces only much later, e.g. as NaN/Inf in a float32 run's activations."""
  vocab = tokenizer.get_vocab()
  largest = max(vocab.values(), default=-1)
  if largest >= vocab_size:
    token = next(t for t, i in vocab.items() if i == largest)
    raise InputError(
        f"{os.path.join(directory, 'config.json')}: vocab_size={vocab_size}, but the tokenizer in {directory} has ids "
        f"up to {largest} (token {token!r}), past the embedding matrix's {vocab_size} rows. The tokenizer files "
        "belong to another model, or vocab_size was edited: restore the model's own tokenizer or config.json.")


def _load_gguf(path: str, dtype, load_tokenizer: bool) -> Model:
  from xsim.models import gguf
  checkpoint = gguf.read_gguf(path, resolve_dtype(dtype))  # tensors come in `dtype`: no float32 copy is kept
  tokenizer = gguf.build_tokenizer(checkpoint.tokenizer_source) if load_tokenizer else None
  model = from_hf_tensors(checkpoint.config, checkpoint.state_dict, dtype, tokenizer=tokenizer, name=path)
  _warn_dtype(model)
  return model



def _download(repo_id: str, revision: Optional[str], allow_patterns: list[str]) -> str:
  """A hub id -> local snapshot directory holding the files that match `allow_patterns`."""
  import huggingface_hub
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
  except Exception as e:  # offline, unknown repo, gated repo: all end here with the same advice
    raise OSError(f"Could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Offline? "
                  "Pass a local directory instead (download it elsewhere with `huggingface-cli download "
                  f"{repo_id} --local-dir DIR`), a .gguf file, or a packaged model name such as 'smollm2-135m'.") from e
