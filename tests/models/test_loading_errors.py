"""load_model's errors name the problem and the fix; loading holds one parameter at a time beyond the model."""
import dataclasses
import json
import weakref

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

import xsim
from tests.models.hf_tiny import make_checkpoint
from tests.models.test_gguf import tiny_llama
from xsim.errors import InputError
from xsim.models import gguf as xsim_gguf
from xsim.models import model as model_lib
from xsim.models import read_config
from xsim.models.convert import convert_checkpoint
from xsim.models.safetensors_io import SafetensorsCheckpoint


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


# ---------------------------------------------------------------------------------------------------------------
# Impossible configs: InputError naming config.json, the field and its value, before transformers or any family
# code divides by a size.


def _edit_config(directory, **changes):
  """Rewrites directory/config.json with `changes` (None deletes the field); returns its path."""
  path = directory / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
  return path


# The tiny llama: 3 layers, d 64, 4 heads of 16 (head_dim stated), 2 KV heads, FFN 88, vocab 97.
@pytest.mark.parametrize("changes, named", [
    (dict(num_hidden_layers=0), "num_hidden_layers=0 is impossible"),
    (dict(num_hidden_layers=-1), "num_hidden_layers=-1 is impossible"),
    (dict(num_hidden_layers="3"), "num_hidden_layers='3' is impossible"),
    (dict(hidden_size=-64), "hidden_size=-64 is impossible"),
    (dict(intermediate_size=0), "intermediate_size=0 is impossible"),
    (dict(vocab_size=0), "vocab_size=0 is impossible"),
    (dict(num_attention_heads=0), "num_attention_heads=0 is impossible"),  # was a ZeroDivisionError in transformers
    (dict(num_key_value_heads=0), "num_key_value_heads=0 is impossible"),
    (dict(head_dim=0), "head_dim=0 is impossible"),
    (dict(num_key_value_heads=3), "num_key_value_heads=3 does not divide num_attention_heads=4"),
    (dict(head_dim=None, num_attention_heads=6, num_key_value_heads=1),
     "hidden_size=64 is not divisible by num_attention_heads=6 and no head_dim is given"),
    (dict(rms_norm_eps="small"), "transformers refuses this config: .*'rms_norm_eps'"),
])
def test_impossible_config_names_file_and_field(tmp_path, changes, named):
  make_checkpoint("llama", tmp_path)
  path = _edit_config(tmp_path, **changes)
  for load in (lambda: xsim.load_model(str(tmp_path), load_tokenizer=False), lambda: read_config(str(tmp_path))):
    with pytest.raises(InputError, match=rf"^{path}: {named}"):
      load()


def test_config_json_that_is_not_json_names_the_file(tmp_path):
  make_checkpoint("llama", tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": "llama",')
  with pytest.raises(InputError, match=rf"^{tmp_path / 'config.json'} is not a JSON file .*line 1"):
    read_config(str(tmp_path))


def test_head_dim_default_of_the_config_class_counts_as_given(tmp_path):
  """Gemma's class gives head_dim 256 when config.json does not: d / heads need not be whole (not refused)."""
  make_checkpoint("gemma", tmp_path)
  _edit_config(tmp_path, head_dim=None, num_attention_heads=6, num_key_value_heads=1)
  config = read_config(str(tmp_path))
  assert (config.hidden_size, config.num_heads, config.head_dim) == (64, 6, 256)


def _save_word_tokenizer(directory, size: int) -> None:
  vocab = {f"w{i}": i for i in range(size)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0").save_pretrained(directory)


def test_tokenizer_ids_past_vocab_size_name_config_and_field(tmp_path):
  """Ids >= vocab_size would read no embedding row (NaN activations much later); refused at load time."""
  make_checkpoint("llama", tmp_path)  # vocab_size 97
  _save_word_tokenizer(tmp_path, 97)
  assert len(xsim.load_model(str(tmp_path)).tokenizer) == 97  # ids 0..96 fit
  _save_word_tokenizer(tmp_path, 120)
  with pytest.raises(InputError, match=rf"^{tmp_path / 'config.json'}: vocab_size=97, but the tokenizer in {tmp_path} "
                                       r"has ids up to 119 \(token 'w119'\)"):
    xsim.load_model(str(tmp_path))


def test_model_config_refuses_non_positive_sizes(tmp_path):
  make_checkpoint("llama", tmp_path)
  config = read_config(str(tmp_path))
  for field in ("num_layers", "num_kv_heads", "head_dim", "vocab_size"):
    with pytest.raises(ValueError, match=f"^{field}=0 must be a positive int"):
      dataclasses.replace(config, **{field: 0})


# ---------------------------------------------------------------------------------------------------------------
# Damaged files: the error names the file, the tensor and the fix, before any weights are converted.


def _header_length(path) -> int:
  with open(path, "rb") as f:
    return int.from_bytes(f.read(8), "little")


def test_truncated_safetensors_names_file_and_tensor(tmp_path):
  make_checkpoint("llama", tmp_path)
  path = tmp_path / "model.safetensors"
  data = path.read_bytes()
  header = json.loads(data[8:8 + _header_length(path)])
  last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
  path.write_bytes(data[:-100])
  with pytest.raises(ValueError, match=rf"{path} is truncated: tensor '{last}' .*Re-download"):
    xsim.load_model(str(tmp_path), load_tokenizer=False)


@pytest.mark.parametrize("damage, message", [
    (lambda data, n: data[:8] + b"\x00garbage" + data[16:], "corrupt safetensors header .*not JSON"),
    (lambda data, n: (len(data) + 1).to_bytes(8, "little") + data[8:], "header length field says"),
    (lambda data, n: data.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1), "corrupt safetensors header: "
                                                                                    "tensor '.*' of shape"),
])
def test_corrupt_safetensors_header_names_file(tmp_path, damage, message):
  make_checkpoint("llama", tmp_path)
  path = tmp_path / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(damage(data, _header_length(path)))
  with pytest.raises(ValueError, match=rf"{path} .*{message}.*Re-download"):
    xsim.load_model(str(tmp_path), load_tokenizer=False)


def test_truncated_gguf_names_file_and_tensor(tmp_path):
  _, _, path = tiny_llama(tmp_path, tied=False)
  last = max(gguf.GGUFReader(path).tensors, key=lambda t: t.data_offset)  # the tensor stored last
  data = path.read_bytes()
  path.write_bytes(data[:-7])
  with pytest.raises(ValueError, match=rf"{path} is truncated: tensor '{last.name}' .*Re-download"):
    xsim.load_model(str(path), load_tokenizer=False)
  path.write_bytes(data[:40])  # cut inside the metadata: no tensor to name, still the file and the fix
  with pytest.raises(ValueError, match=rf"{path} is not a readable GGUF file .*header ends early.*Re-download"):
    xsim.load_model(str(path), load_tokenizer=False)


@pytest.mark.parametrize("tensor, found, expected", [
    ("model.layers.1.mlp.gate_proj.weight", (64, 88), (88, 64)),  # Linear [out, in] stored [in, out]
    ("model.layers.2.self_attn.k_proj.weight", (64, 32), (32, 64)),  # 2 KV heads of 16 over d = 64
    ("model.norm.weight", (65,), (64,)),
])
def test_misshaped_tensor_names_file_tensor_and_both_shapes(tmp_path, monkeypatch, tensor, found, expected):
  make_checkpoint("llama", tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  w = tensors[tensor]
  tensors[tensor] = np.ascontiguousarray(w.T) if w.ndim == 2 else np.concatenate([w, w[:1]])
  safetensors.numpy.save_file(tensors, path)
  # Shapes come from the header: the error is raised before any tensor's data is read.
  monkeypatch.setattr(SafetensorsCheckpoint, "__getitem__", lambda self, name: pytest.fail(f"read {name}"))
  with pytest.raises(ValueError) as error:
    xsim.load_model(str(tmp_path), load_tokenizer=False)
  message = str(error.value)
  for part in (str(path), repr(tensor), f"shape {found}", f"implies {expected}", "Re-download", "re-convert"):
    assert part in message, (part, message)


# ---------------------------------------------------------------------------------------------------------------
# Bounded memory: parameters are built and placed one at a time, in the target dtype, aligned for aliasing.


def _llama_parts(tmp_path):
  """A tiny llama checkpoint's ModelConfig, name table (top, per-layer) and lazy tensors."""
  make_checkpoint("llama", tmp_path)
  hf_config = transformers.AutoConfig.from_pretrained(tmp_path)
  family = model_lib.family_module(hf_config)
  config = family.config_from_hf(hf_config)
  top, per_layer = family.tensor_specs(config)
  return config, top, per_layer, SafetensorsCheckpoint([str(tmp_path / "model.safetensors")])


def test_parameters_are_built_and_placed_one_at_a_time(tmp_path):
  config, top, per_layer, tensors = _llama_parts(tmp_path)
  expected = model_lib.param_shapes(config, jnp.bfloat16)
  alive = []  # weak references to every host array handed to `place`

  def place(host):
    assert not any(ref() is not None for ref in alive), "an earlier parameter's host array is still alive"
    assert host.dtype == jnp.bfloat16 and host.flags.c_contiguous and host.ctypes.data % 64 == 0
    alive.append(weakref.ref(host.base))
    return ("placed", host.shape)

  params = convert_checkpoint(config, tensors, top, per_layer, expected, np.dtype(jnp.bfloat16), place)
  assert len(alive) == len(expected)
  flat = {tuple(k.key for k in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, tuple))[0]}
  assert flat == {path: ("placed", shape) for path, shape in expected.items()}


def test_name_table_must_match_the_module(tmp_path):
  config, top, per_layer, tensors = _llama_parts(tmp_path)
  expected = model_lib.param_shapes(config)
  extra = {**top, ("final_norm", "bias"): top[("final_norm", "scale")]}
  with pytest.raises(ValueError, match=r"mapped to parameters the module does not have: \['final_norm/bias'\]"):
    convert_checkpoint(config, tensors, extra, per_layer, expected, np.float32)
  del top[("embed",)]
  with pytest.raises(ValueError, match=r"the architecture: no weights mapped for parameters \['embed'\]\.$"):
    convert_checkpoint(config, tensors, top, per_layer, expected, np.float32)


@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_cpu_params_alias_the_converted_arrays(tmp_path, monkeypatch, source):
  """On CPU, jax.device_put keeps each aligned host array as the device buffer (no second copy of the weights);
  a GGUF file's embedding is the dequantized array itself (no copy to convert it either)."""
  if source == "gguf":
    _, _, path = tiny_llama(tmp_path, tied=False)
  else:
    make_checkpoint("llama", tmp_path)
    path = tmp_path
  placed, dequantized = set(), set()
  real_place, real_dequantize = jax.device_put, xsim_gguf._dequantize

  def recording_place(x):
    placed.add(x.ctypes.data)
    return real_place(x)

  def recording_dequantize(path, info, dtype):
    w = real_dequantize(path, info, dtype)
    dequantized.add(w.ctypes.data)
    return w

  monkeypatch.setattr(model_lib.jax, "device_put", recording_place)
  monkeypatch.setattr(xsim_gguf, "_dequantize", recording_dequantize)
  model = xsim.load_model(str(path), load_tokenizer=False)
  assert {leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(model.params)} == placed
  if source == "gguf":
    assert model.params["params"]["embed"].unsafe_buffer_pointer() in dequantized
