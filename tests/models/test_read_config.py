"""read_config reads a model's ModelConfig without its weights; model_source classifies paths as load_model does."""
import json

import pytest

import xsim
from tests.models.hf_tiny import make_checkpoint
from tests.models.test_gguf import tiny_checkpoint
from xsim.models import assets, gguf, model_source, read_config
from xsim.models.safetensors_io import SafetensorsCheckpoint


def _no_weights(monkeypatch):
  """Any read of tensor data fails the test."""
  monkeypatch.setattr(SafetensorsCheckpoint, "__getitem__", lambda self, name: pytest.fail(f"read {name}"))
  monkeypatch.setattr(gguf, "_dequantize", lambda path, info, dtype: pytest.fail(f"dequantized {info.name}"))


@pytest.mark.parametrize("variant", ["llama_tied_bias", "gemma3", "pythia"])
def test_directory_config_equals_load_model_config(tmp_path, monkeypatch, variant):
  make_checkpoint(variant, tmp_path)
  loaded = xsim.load_model(str(tmp_path), load_tokenizer=False).config
  with monkeypatch.context() as m:
    _no_weights(m)
    assert read_config(str(tmp_path)) == loaded


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_config_equals_load_model_config(tmp_path, monkeypatch, arch):
  _, _, path = tiny_checkpoint(arch, tmp_path)
  loaded = xsim.load_model(str(path), load_tokenizer=False).config
  with monkeypatch.context() as m:
    _no_weights(m)
    assert read_config(str(path)) == loaded


def test_packaged_model_config_from_its_header(monkeypatch):
  path = assets.default_cache_dir() / assets.MODELS["smollm2-135m"].filename
  if not path.is_file():
    pytest.skip("smollm2-135m is not cached; fetch it with `python -m xsim.models.assets smollm2-135m`")
  _no_weights(monkeypatch)
  config = read_config("smollm2-135m")
  # shared/models/README.md: 30 blocks, d 576, 9 / 3 heads, FFN 1536, vocab 49152, tied embeddings.
  assert (config.family, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
          config.intermediate_size, config.vocab_size, config.tie_embeddings) == (
              "llama", 30, 576, 9, 3, 1536, 49152, True)


def test_config_errors_are_load_model_errors(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(OSError, match="Could not fetch 'some-org/not-cached'.*local directory"):
    read_config("some-org/not-cached")
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
  with pytest.raises(ValueError, match=r"Unknown architecture 'gpt2'"):
    read_config(str(tmp_path))
  make_checkpoint("llama", tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="yarn"):
    read_config(str(tmp_path))


def test_model_source_kinds(tmp_path):
  make_checkpoint("llama", tmp_path / "hf")
  (tmp_path / "m.gguf").write_bytes(b"")
  assert model_source(str(tmp_path / "hf")) == "directory"
  assert model_source(str(tmp_path / "m.gguf")) == "gguf"
  assert model_source("smollm2-135m") == "packaged"
  for hub_id in ("gpt2", "EleutherAI/pythia-70m", "org_1/model.v2-b"):
    assert model_source(hub_id) == "hub", hub_id


@pytest.mark.parametrize("path, message", [
    ("{tmp}/missing.gguf", "does not exist"),
    ("{tmp}/empty_dir", "no config.json"),
    ("./does/not/exist", "No model directory or GGUF file"),
    ("org/name/extra", "No model directory or GGUF file"),
    ("/abs/missing", "No model directory or GGUF file"),
])
def test_model_source_and_load_model_reject_alike(tmp_path, path, message):
  (tmp_path / "empty_dir").mkdir()
  path = path.format(tmp=tmp_path)
  for call in (model_source, read_config, lambda p: xsim.load_model(p, load_tokenizer=False)):
    with pytest.raises(FileNotFoundError, match=message):
      call(path)


def test_load_model_treats_a_bare_name_as_a_hub_id(monkeypatch):
  """'gpt2' is a hub id for both model_source and load_model: offline, loading fails at the hub, not earlier."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert model_source("gpt2") == "hub"
  with pytest.raises(OSError, match="Could not fetch 'gpt2' from the Hugging Face hub"):
    xsim.load_model("gpt2")
