"""load_model's errors name the problem and the fix."""
import json

import numpy as np
import pytest
import torch

import xsim
from tests.models.hf_tiny import make_checkpoint


def test_unknown_architecture_names_supported(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
  with pytest.raises(ValueError, match=r"Unknown architecture 'gpt2'.*llama"):
    xsim.load_model(str(tmp_path))


def test_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    xsim.load_model(str(tmp_path))


def test_missing_path():
  with pytest.raises(FileNotFoundError, match="No model directory or GGUF file"):
    xsim.load_model("./does/not/exist")


def test_missing_gguf(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    xsim.load_model(str(tmp_path / "model.gguf"))


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
  model = make_checkpoint("llama", tmp_path)
  (tmp_path / "model.safetensors").unlink()
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  with pytest.raises(ValueError, match="allow_pickle=True"):
    xsim.load_model(str(tmp_path), load_tokenizer=False)
  loaded = xsim.load_model(str(tmp_path), load_tokenizer=False, allow_pickle=True)
  np.testing.assert_allclose(np.asarray(loaded.params["params"]["embed"]),
                             model.model.embed_tokens.weight.detach().numpy())


def test_hub_id_offline_says_how_to_pass_a_directory(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(OSError, match="local directory"):
    xsim.load_model("some-org/some-model-that-is-not-cached")


def test_unsupported_config_attribute_is_refused(tmp_path):
  make_checkpoint("llama", tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="yarn"):
    xsim.load_model(str(tmp_path), load_tokenizer=False)


def test_checkpoint_config_mismatch(tmp_path):
  make_checkpoint("llama", tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["intermediate_size"] = 90
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="disagree"):
    xsim.load_model(str(tmp_path), load_tokenizer=False)
