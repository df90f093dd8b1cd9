"""Parity of every ported family with transformers' PyTorch model on padded batches (float32)."""
import numpy as np
import pytest
import torch

import xsim
from tests.models.hf_tiny import VARIANTS, make_checkpoint, padded_batch

ATOL = 1e-4


def _reference(torch_model, ids, mask):
  # Positions that count real tokens, as xsim uses, so left-padded rows match their unpadded selves.
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(positions), output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def _assert_matches(model, torch_model, ids, mask):
  ref_logits, ref_hidden = _reference(torch_model, ids, mask)
  out = model.forward(ids, mask)
  real = mask.astype(bool)
  L = model.config.num_layers
  assert out.hidden_states.shape == (L + 1, *ids.shape, model.config.hidden_size)
  assert np.isfinite(np.asarray(out.hidden_states)).all()  # pad positions too
  for i in range(L):
    np.testing.assert_allclose(np.asarray(out.hidden_states[i])[real], ref_hidden[i][real], atol=ATOL, rtol=1e-4,
                               err_msg=f"hidden state {i}")
  # transformers' last hidden state has the final norm applied; xsim keeps both.
  np.testing.assert_allclose(np.asarray(out.final_hidden)[real], ref_hidden[L][real], atol=ATOL, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.logits)[real], ref_logits[real], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers(variant, side, tmp_path):
  torch_model = make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  assert model.config.max_position_embeddings == torch_model.config.max_position_embeddings
  # Longer than the sliding windows (4-5) and the llama3 original context (8).
  ids, mask = padded_batch(model.config.vocab_size, [13, 9, 2], side)
  _assert_matches(model, torch_model, ids, mask)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", ["llama", "gemma2", "gemma3"])
def test_attention_over_many_blocks_matches_transformers(variant, side, tmp_path):
  """Blocks of 4 tokens over 30: GQA, soft-capping, windows of 4 (older key blocks skipped) and global layers."""
  torch_model = make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  model = model.with_attention(block_size=4)
  ids, mask = padded_batch(model.config.vocab_size, [30, 21, 3], side)
  _assert_matches(model, torch_model, ids, mask)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", ["llama", "qwen3", "gemma", "pythia"])
def test_fused_attention_matches_transformers(variant, side, tmp_path):
  """attention="fused" (jax.nn.dot_product_attention; XLA's kernel on CPU): GQA, q/k norms, partial rotary."""
  torch_model = make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  model = model.with_attention("fused")
  ids, mask = padded_batch(model.config.vocab_size, [13, 9, 2], side)
  _assert_matches(model, torch_model, ids, mask)


@pytest.mark.parametrize("variant", ["gemma2", "gemma3", "mistral_sliding"])
def test_fused_attention_refuses_windows_and_soft_capping(variant, tmp_path):
  make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  with pytest.raises(ValueError, match="keep attention='blockwise'"):
    model.with_attention("fused")
  with pytest.raises(ValueError, match=r"attention='flash' is not one of \('blockwise', 'fused'\)"):
    model.with_attention("flash")
