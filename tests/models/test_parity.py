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


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers(variant, side, tmp_path):
  torch_model = make_checkpoint(variant, tmp_path)
  model = xsim.load_model(str(tmp_path), load_tokenizer=False)
  # Longer than the sliding windows (4-5) and the llama3 original context (8).
  ids, mask = padded_batch(model.config.vocab_size, [13, 9, 2], side)
  ref_logits, ref_hidden = _reference(torch_model, ids, mask)
  out = model.forward(ids, mask)
  real = mask.astype(bool)
  L = model.config.num_layers
  assert out.hidden_states.shape == (L + 1, *ids.shape, model.config.hidden_size)
  for i in range(L):
    np.testing.assert_allclose(np.asarray(out.hidden_states[i])[real], ref_hidden[i][real], atol=ATOL, rtol=1e-4,
                               err_msg=f"hidden state {i}")
  # transformers' last hidden state has the final norm applied; xsim keeps both.
  np.testing.assert_allclose(np.asarray(out.final_hidden)[real], ref_hidden[L][real], atol=ATOL, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.logits)[real], ref_logits[real], atol=ATOL, rtol=1e-4)
