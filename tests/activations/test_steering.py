"""Steering (activation addition): xsim's Steer against transformers' forward hooks, and the batched runner against
one forward per intervention (float32)."""
import numpy as np
import pytest
import torch
import transformers

import xsim
from tests.activations.tiny import TEXTS, make_model_dir
from tests.models.hf_tiny import VARIANTS, make_checkpoint, padded_batch
from xsim.activations import steering
from xsim.activations.rows import tokenize
from xsim.models import assets

ATOL = 1e-4


def _hooked_logits(torch_model, ids, mask, layer, added):
  """transformers' logits [B, S, V] with added [B, S, D] added to hidden state `layer`: for the embeddings a
  pre-hook on block 0's input, else a forward hook on block layer - 1's output."""
  blocks = torch_model.base_model.layers  # model.model.layers; model.gpt_neox.layers for GPT-NeoX
  added = torch.from_numpy(added)
  if layer == 0:
    def add_to_input(module, args, kwargs):  # the hidden states come first, or by name
      if args:
        return (args[0] + added, *args[1:]), kwargs
      return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + added}
    handle = blocks[0].register_forward_pre_hook(add_to_input, with_kwargs=True)
  else:
    def add_to_output(module, args, output):  # a tensor, or a tuple led by one in older transformers
      return (output[0] + added, *output[1:]) if isinstance(output, tuple) else output + added
    handle = blocks[layer - 1].register_forward_hook(add_to_output)
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)  # xsim's positions (see test_parity)
  try:
    with torch.no_grad():
      return torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         position_ids=torch.tensor(positions)).logits.numpy()
  finally:
    handle.remove()


def _assert_steering_matches(model, torch_model, ids, mask, norm):
  """A random vector of norm `norm` at hidden states 0, a middle one and L, on every real position or the last
  only: the six settings as rows of one xsim forward, each against its own hooked transformers forward."""
  L, D = model.config.num_layers, model.config.hidden_size
  vector = np.random.default_rng(0).standard_normal(D).astype(np.float32)
  vector *= norm / np.linalg.norm(vector)
  real, last = mask.astype(bool), np.arange(mask.shape[1]) == mask.sum(1, keepdims=True) - 1
  settings = [(layer, where) for layer in (0, (L + 1) // 2, L) for where in (real, last)]
  steer = xsim.Steer(np.repeat([layer for layer, _ in settings], len(ids)).astype(np.int32),
                     np.tile(vector, (len(settings) * len(ids), 1)),
                     np.concatenate([where for _, where in settings]).astype(np.float32))
  ours = np.asarray(model.forward(np.tile(ids, (len(settings), 1)), np.tile(mask, (len(settings), 1)),
                                  steer=steer).logits).reshape(len(settings), *ids.shape, -1)
  plain = _hooked_logits(torch_model, ids, mask, 0, np.zeros((*ids.shape, D), np.float32))  # unsteered
  for k, (layer, where) in enumerate(settings):
    theirs = _hooked_logits(torch_model, ids, mask, layer, where[..., None] * vector)
    assert np.abs(theirs - plain)[real].max() > 1e-2, "the vector should move the logits"
    np.testing.assert_allclose(ours[k][real], theirs[real], atol=ATOL, rtol=1e-4,
                               err_msg=f"layer {layer}, {'all' if where is real else 'the last'} position(s)")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_hooks(variant, tmp_path):
  torch_model = make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  ids, mask = padded_batch(model.config.vocab_size, [13, 9, 2], "right")
  _assert_steering_matches(model, torch_model, ids, mask, 16.0)


@pytest.mark.slow
def test_matches_transformers_hooks_on_smollm2():
  """A vector the size of an embedding (SmolLM2's have norms 2-3). Much larger ones on every position from layer 0
  on take the model where float32 itself is off by more than the tolerance: at norm 24, transformers' float32
  logits differ from its float64 ones by 2e-3 (and xsim's by 4e-3)."""
  path = assets.fetch_model("smollm2-135m")
  model = xsim.load_model(str(path))
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  dtype=torch.float32).eval()
  enc = model.tokenizer(["The capital of France is", "Steering vectors change what a model says next about"],
                        padding=True, return_tensors="np")
  _assert_steering_matches(model, torch_model, enc["input_ids"], enc["attention_mask"], 2.5)


@pytest.mark.parametrize("variant", ["llama", "gemma3", "pythia"])
def test_zero_vector_or_mask_changes_nothing(variant, tmp_path):
  make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  ids, mask = padded_batch(model.config.vocab_size, [13, 9, 2], "right")
  D = model.config.hidden_size
  plain = model.forward(ids, mask)
  layers = np.int32([0, 1, model.config.num_layers])
  vectors = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)
  for steer in (xsim.Steer(layers, np.zeros_like(vectors), mask.astype(np.float32)),
                xsim.Steer(layers, vectors, np.zeros(mask.shape, np.float32))):
    out = model.forward(ids, mask, steer=steer)
    np.testing.assert_array_equal(out.logits, plain.logits)
    np.testing.assert_array_equal(out.hidden_states, plain.hidden_states)


# ---------------------------------------------------------------------------------------------------------------
# The batched runner: 3 interventions x 5 prompts in batches of 4 (the last one filled) vs one forward per prompt


@pytest.fixture(scope="module", params=[("bytelevel", "llama"), ("sentencepiece", "gemma2")],
                ids=["no_bos", "bos_gemma2"])
def model(request, tmp_path_factory):
  return xsim.load_model(str(make_model_dir(tmp_path_factory.mktemp("m"), *request.param)))


def _interventions(model):
  """Hidden states 0 (a zero vector: unsteered), 1 and L."""
  rng = np.random.default_rng(1)
  vectors = rng.standard_normal((3, model.config.hidden_size)).astype(np.float32) * np.float32([[0.0], [0.5], [1.0]])
  return np.int32([0, 1, model.config.num_layers]), vectors


def _direct(model, prompt, layers, vectors, where="all"):
  """One forward of the prompt in I rows, row i steered by intervention i, right-padded to 64 tokens (one
  compilation for all prompts): (ids [T], ForwardOutput)."""
  ids = tokenize(model.tokenizer, prompt).ids
  real = np.arange(64) < len(ids)
  added = real if where == "all" else np.arange(64) == len(ids) - 1
  steer = xsim.Steer(layers, vectors, np.tile(added, (len(layers), 1)).astype(np.float32))
  padded = np.where(real, np.pad(ids, (0, 64 - len(ids))), 0)
  return ids, model.forward(np.tile(padded, (len(layers), 1)), np.tile(real, (len(layers), 1)), steer=steer)


@pytest.mark.parametrize("where", steering.POSITIONS)
def test_token_log_mass_equals_single_forwards(model, where):
  layers, vectors = _interventions(model)
  token_ids = [3, 10, 11, 40]
  got = steering.token_log_mass(model, TEXTS[:5], layers, vectors, token_ids, positions=where, batch_size=4)
  assert got.shape == (3, 5) and got.dtype == np.float32
  for p, prompt in enumerate(TEXTS[:5]):
    ids, out = _direct(model, prompt, layers, vectors, where)
    logits = np.asarray(out.logits[:, len(ids) - 1], np.float64)  # [I, V]
    want = np.logaddexp.reduce(logits[:, token_ids], -1) - np.logaddexp.reduce(logits, -1)
    np.testing.assert_allclose(got[:, p], want, rtol=1e-5, atol=1e-5, err_msg=prompt)
  assert np.abs(got[2] - got[0]).max() > 1e-3, "the vector should move the mass"


def test_mean_nll_equals_numpy(model):
  layers, vectors = _interventions(model)
  got = steering.mean_nll(model, TEXTS[:5], layers, vectors, batch_size=4)
  assert got.shape == (3, 5) and got.dtype == np.float32
  for p, passage in enumerate(TEXTS[:5]):
    ids, out = _direct(model, passage, layers, vectors)
    logits = np.asarray(out.logits[:, :len(ids) - 1], np.float64)  # [I, T - 1, V] predicting ids[1:]
    nll = np.logaddexp.reduce(logits, -1) - logits[:, np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(got[:, p], nll.mean(-1), rtol=1e-5, atol=1e-5, err_msg=passage)


@pytest.mark.parametrize("where", steering.POSITIONS)
def test_hidden_at_last_equals_single_forwards(model, where):
  layers, vectors = _interventions(model)
  layers[-1] = 1  # read at or after every intervention
  read = [1, model.config.num_layers]
  got = steering.hidden_at_last(model, TEXTS[:5], layers, vectors, read, positions=where, batch_size=4)
  assert got.shape == (3, 2, 5, model.config.hidden_size) and got.dtype == np.float32
  for p, prompt in enumerate(TEXTS[:5]):
    ids, out = _direct(model, prompt, layers, vectors, where)
    want = np.asarray(out.hidden_states[np.asarray(read), :, len(ids) - 1]).swapaxes(0, 1)  # [I, R, D]
    np.testing.assert_allclose(got[:, :, p], want, rtol=1e-5, atol=1e-5, err_msg=prompt)


def test_bad_inputs_are_named(model):
  layers, vectors = _interventions(model)
  L, D, V = model.config.num_layers, model.config.hidden_size, model.config.vocab_size
  mass = lambda **kw: steering.token_log_mass(model, **{**dict(prompts=TEXTS[:2], layers=layers, vectors=vectors,
                                                               token_ids=[1]), **kw})
  with pytest.raises(ValueError, match=rf"vectors must be \[3, {D}\].*got \(3, 7\)"):
    mass(vectors=np.zeros((3, 7)))
  with pytest.raises(ValueError, match=rf"layer {L + 1} is out of range 0..{L}"):
    mass(layers=[0, 1, L + 1])
  with pytest.raises(ValueError, match="layers must be a non-empty"):
    mass(layers=[], vectors=np.zeros((0, D)))
  with pytest.raises(ValueError, match="prompts must be a non-empty list"):
    mass(prompts=[])
  with pytest.raises(ValueError, match="prompts must be a non-empty list"):
    mass(prompts="one string")
  with pytest.raises(ValueError, match=rf"token_ids must be .* ids in 0..{V - 1}"):
    mass(token_ids=[V])
  with pytest.raises(ValueError, match=r"positions='first' is not one of \('all', 'last'\)"):
    mass(positions="first")
  with pytest.raises(ValueError, match="batch_size=0 must be positive"):
    mass(batch_size=0)
  with pytest.raises(ValueError, match=rf"read_layers must be hidden-state indices in 0..{L}"):
    steering.hidden_at_last(model, TEXTS[:2], layers, vectors, [L + 1])
  with pytest.raises(ValueError,
                     match=rf"read_layers \[1\] must be at or after every intervention's layer \(up to {L}"):
    steering.hidden_at_last(model, TEXTS[:2], layers, vectors, [1])
  with pytest.raises(ValueError, match=r"prompt 1 \(''\) has [01] token\(s\); each needs at least 2"):
    steering.mean_nll(model, [TEXTS[0], ""], layers, vectors)  # BOS alone, or no token at all
