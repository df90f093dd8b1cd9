"""`load_model`: a HF hub id, a local HF directory, a GGUF file, or a packaged offline model name -> `Model`."""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Optional

from xsim.models.model import Model, family_module, from_hf_tensors, resolve_dtype
from xsim.models.safetensors_io import SafetensorsCheckpoint, checkpoint_files

_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[\w.-]+)?")


def load_model(name_or_path: str, dtype="float32", *, load_tokenizer: bool = True, allow_pickle: bool = False,
               revision: Optional[str] = None) -> Model:
  """Loads a causal LM as an xsim Model.

  name_or_path: a local HF directory (config.json + safetensors), a `.gguf` file, a packaged offline model name
    (see `xsim.models.assets`, e.g. "smollm2-135m"), or a HF hub id (needs network or a filled HF cache).
  dtype: "float32", "bfloat16" or "float16" (Gemma overflows in float16: use bfloat16 or float32).
  allow_pickle: read `.bin` PyTorch pickles when no safetensors exist. Off by default: unpickling runs code.
  """
  path = os.path.expanduser(str(name_or_path))
  if path.endswith(".gguf"):
    return _load_gguf(path, dtype, load_tokenizer)
  if os.path.isdir(path):
    return _load_directory(path, dtype, load_tokenizer, allow_pickle, name=path)
  from xsim.models import assets
  if path in assets.MODELS:
    return _load_gguf(str(assets.fetch_model(path)), dtype, load_tokenizer)
  if not _HUB_ID.fullmatch(path):
    raise FileNotFoundError(f"No model directory or GGUF file at {path!r} (and it is not a hub id 'org/name').")
  return _load_directory(_download(path, revision), dtype, load_tokenizer, allow_pickle, name=path)


def _warn_dtype(model: Model) -> None:
  if model.config.family.startswith("gemma") and model.dtype == resolve_dtype("float16"):
    logging.warning("Gemma activations overflow float16; use dtype='bfloat16' or 'float32' for %s.", model.name)


def _load_directory(directory: str, dtype, load_tokenizer: bool, allow_pickle: bool, name: str) -> Model:
  from transformers import AutoConfig  # heavy import, only when loading
  if not os.path.exists(os.path.join(directory, "config.json")):
    raise FileNotFoundError(f"{directory} has no config.json; pass a Hugging Face model directory "
                            "(as written by save_pretrained) or a .gguf file.")
  hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
  family_module(hf_config)  # unknown architectures fail before any weights are read
  files = checkpoint_files(directory)
  if files:
    tensors = SafetensorsCheckpoint(files)
  else:
    tensors = _pickle_tensors(directory, allow_pickle)
  tokenizer = _tokenizer(directory) if load_tokenizer else None
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


def _load_gguf(path: str, dtype, load_tokenizer: bool) -> Model:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
  from xsim.models import gguf
  checkpoint = gguf.read_gguf(path)
  tokenizer = gguf.build_tokenizer(checkpoint.tokenizer_source) if load_tokenizer else None
  model = from_hf_tensors(checkpoint.config, checkpoint.state_dict, dtype, tokenizer=tokenizer, name=path)
  _warn_dtype(model)
  return model


def _download(repo_id: str, revision: Optional[str]) -> str:
  """A hub id -> local snapshot directory (safetensors, config and tokenizer files only)."""
  import huggingface_hub
  try:
    return huggingface_hub.snapshot_download(
        repo_id, revision=revision,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
  except Exception as e:  # offline, unknown repo, gated repo: all end here with the same advice
    raise OSError(f"Could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Offline? "
                  "Pass a local directory instead (download it elsewhere with `huggingface-cli download "
                  f"{repo_id} --local-dir DIR`), a .gguf file, or a packaged model name such as 'smollm2-135m'.") from e
