"""Patching, block-output sites, dtypes and random re-initialisation of ported models."""
import jax.numpy as jnp
import numpy as np
import pytest

import xsim
from tests.models.hf_tiny import make_checkpoint, padded_batch


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  directory = tmp_path_factory.mktemp("llama")
  make_checkpoint("llama", directory)
  return xsim.load_model(str(directory), load_tokenizer=False)


def _batch(model, side="right"):
  return padded_batch(model.config.vocab_size, [11, 7], side, seed=3)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_patching_own_activation_is_identity(llama, layer):
  ids, mask = _batch(llama)
  clean = llama.forward(ids, mask)
  positions = np.array([5, 6])
  values = np.asarray(clean.hidden_states[layer])[np.arange(2), positions]
  patched = llama.forward(ids, mask, patch=xsim.Patch(jnp.int32(layer), jnp.asarray(positions), jnp.asarray(values)))
  np.testing.assert_array_equal(np.asarray(patched.logits), np.asarray(clean.logits))


def test_patching_changes_only_later_positions(llama):
  ids, mask = _batch(llama)
  clean = llama.forward(ids, mask)
  positions = np.array([4, -1])  # row 1 is not patched
  values = np.random.default_rng(0).normal(size=(2, llama.config.hidden_size)).astype(np.float32)
  patched = llama.forward(ids, mask, patch=xsim.Patch(jnp.int32(2), jnp.asarray(positions), jnp.asarray(values)))
  diff = np.abs(np.asarray(patched.logits) - np.asarray(clean.logits)).max(-1)
  assert np.all(diff[0, :4] == 0) and np.all(diff[0, 4:] > 1e-3)
  assert np.all(diff[1] == 0)
  np.testing.assert_array_equal(np.asarray(patched.hidden_states[2][0, 4]), values[0])


def test_sites_sum_to_the_residual_stream(llama):
  ids, mask = _batch(llama)
  out = llama.forward(ids, mask, return_sites=True)
  L = llama.config.num_layers
  assert out.attn_out.shape == out.mlp_out.shape == (L, *ids.shape, llama.config.hidden_size)
  rebuilt = out.hidden_states[:-1] + out.attn_out + out.mlp_out
  np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(out.hidden_states[1:]), atol=1e-5)


def test_bfloat16_tracks_float32(tmp_path):
  make_checkpoint("gemma2", tmp_path)
  f32 = xsim.load_model(str(tmp_path), load_tokenizer=False)
  bf16 = xsim.load_model(str(tmp_path), dtype="bfloat16", load_tokenizer=False)
  assert bf16.params["params"]["embed"].dtype == jnp.bfloat16
  ids, mask = _batch(f32)
  a, b = f32.forward(ids, mask), bf16.forward(ids, mask)
  real = mask.astype(bool)
  h32, h16 = np.asarray(a.hidden_states)[:, real], np.asarray(b.hidden_states.astype(jnp.float32))[:, real]
  rel = np.linalg.norm(h32 - h16) / np.linalg.norm(h32)
  assert rel < 0.03, rel
  assert np.isfinite(h16).all()


def test_random_params_keep_architecture(llama):
  random = llama.with_random_params(seed=1)
  shapes = lambda m: [x.shape for x in __import__("jax").tree_util.tree_leaves(m.params)]
  assert shapes(random) == shapes(llama)
  ids, mask = _batch(llama)
  assert not np.allclose(np.asarray(random.forward(ids, mask).logits), np.asarray(llama.forward(ids, mask).logits))


def test_bad_inputs(llama):
  with pytest.raises(ValueError, match=r"\[batch, seq\]"):
    llama.forward(np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="attention_mask shape"):
    llama.forward(np.zeros((2, 5), np.int32), np.ones((2, 4), np.int32))


def test_logits_at_positions_equal_the_full_logits(llama):
  ids, mask = _batch(llama)
  positions = np.array([10, 3])
  full = np.asarray(llama.forward(ids, mask).logits)
  picked = np.asarray(llama.forward(ids, mask, logit_positions=positions).logits)
  np.testing.assert_allclose(picked, full[np.arange(2), positions], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("start,stop", [(0, 3), (2, 3), (1, 2), (2, 2)])  # the tiny model has 3 blocks
def test_a_span_from_the_stream_at_a_layer_equals_the_full_pass(llama, start, stop):
  """Running blocks start+1..stop from the residual stream at `start` gives the full pass's states there (and, with
  a steer at `start`, its steered states); the other hidden states repeat the ends."""
  ids, mask = _batch(llama)
  d = llama.config.hidden_size
  vectors = np.random.default_rng(1).normal(size=(2, d)).astype(np.float32)
  steer = xsim.Steer(jnp.full(2, start), jnp.asarray(vectors), jnp.asarray(mask, jnp.float32))
  full = llama.forward(ids, mask, steer=steer)
  clean = np.asarray(llama.forward(ids, mask).hidden_states)
  span = xsim.Span(jnp.int32(start), jnp.asarray(clean[start]), jnp.int32(stop))
  part = llama.forward(ids, mask, steer=steer, span=span)
  hidden, expected = np.asarray(part.hidden_states), np.asarray(full.hidden_states)
  np.testing.assert_allclose(hidden[start:stop + 1], expected[start:stop + 1], atol=1e-5, rtol=1e-5)
  assert np.all(hidden[:start] == hidden[start])
  assert np.all(hidden[stop + 1:] == hidden[stop])
  if stop == llama.config.num_layers:
    np.testing.assert_allclose(np.asarray(part.logits), np.asarray(full.logits), atol=1e-5, rtol=1e-5)
