"""Next-token transfer by patching through a ported model's remaining layers."""
import numpy as np
import pytest

import xsim
from tests.activations.tiny import TEXTS, make_model_dir
from xsim.activations import patching
from xsim.transfer import metrics


@pytest.fixture(scope="module")
def target(tmp_path_factory):
  return xsim.load_model(str(make_model_dir(tmp_path_factory.mktemp("t"), "bytelevel", "llama")))


@pytest.fixture(scope="module")
def samples(target):
  texts = [t for t in TEXTS if len(t.split()) > 3]
  return patching.next_token_samples(target, texts, max_words=3)


def _scores(target, samples, layer, values):
  """The per-sample scores of a patched pass, as the runner takes them."""
  return metrics.patching_scores(patching.clean_logits(target, samples),
                                 patching.patched_logits(target, samples, layer, values), samples.next_tokens)


def test_labels_come_from_the_text_after_the_cut(target, samples):
  for prefix, ids, p, label in zip(samples.prefixes, samples.ids, samples.positions, samples.next_tokens):
    assert ids[p + 1] == label and p + 2 == len(ids)
    decoded_prefix = target.tokenizer.decode(ids[:p + 1], skip_special_tokens=True)
    assert decoded_prefix == prefix and label != ids[p]


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_identity_patch_has_zero_kl_and_full_agreement(target, samples, layer):
  own = patching.own_activations(target, samples, [layer])[0]
  scores = _scores(target, samples, layer, own)
  np.testing.assert_allclose(scores["kl"], 0.0, atol=1e-6)
  np.testing.assert_array_equal(scores["top1_agreement"], 1.0)
  np.testing.assert_array_equal(scores["next_token_accuracy"], scores["clean_accuracy"])


def test_mean_ablation_moves_the_prediction(target, samples):
  own = patching.own_activations(target, samples, [2])[0]
  ablated = np.broadcast_to(own.mean(0), own.shape)  # the mean-ablation baseline
  scores = _scores(target, samples, 2, ablated)
  assert scores["kl"].mean() > 1e-3 and scores["top1_agreement"].mean() < 1.0


def test_reference_kl_in_numpy(target, samples):
  """KL from a direct forward pass with the patched vector written in by hand (float64 NumPy)."""
  own = patching.own_activations(target, samples, [1])[0]
  values = own + np.random.default_rng(1).normal(size=own.shape).astype(np.float32)
  scores = _scores(target, samples, 1, values)
  k = 0
  ids = samples.ids[k][None]
  clean = np.asarray(target.forward(ids).logits[0, samples.positions[k]], np.float64)
  patch = xsim.Patch(np.int32(1), np.asarray([samples.positions[k]]), values[k][None])
  patched = np.asarray(target.forward(ids, patch=patch).logits[0, samples.positions[k]], np.float64)
  log_p = clean - np.logaddexp.reduce(clean)
  log_q = patched - np.logaddexp.reduce(patched)
  assert scores["kl"][k] == pytest.approx(np.sum(np.exp(log_p) * (log_p - log_q)), rel=1e-4, abs=1e-6)
  assert scores["top1_agreement"][k] == float(clean.argmax() == patched.argmax())
  assert scores["next_token_accuracy"][k] == float(patched.argmax() == samples.next_tokens[k])
  assert scores["clean_accuracy"][k] == float(clean.argmax() == samples.next_tokens[k])


def test_batches_are_scored_in_sample_order(target, samples, monkeypatch):
  """Several batches, the last one padded: each sample's scores land in its own row. The forward pass is
  replaced by a fixed linear read-out of the written vector, so no model is compiled."""
  rng = np.random.default_rng(2)
  n, d, vocab = len(samples.ids), target.config.hidden_size, target.config.vocab_size
  readout = rng.normal(size=(d, vocab)).astype(np.float32)
  monkeypatch.setattr(patching, "_logits_at", lambda model, ids, mask, positions, patch: patch.values @ readout)
  values = rng.normal(size=(n, d)).astype(np.float32)
  clean = rng.normal(size=(n, vocab)).astype(np.float32)
  assert n % 2 == 1  # batches of 2: the last one is padded
  got = metrics.patching_scores(clean, patching.patched_logits(target, samples, 1, values, batch_size=2),
                                samples.next_tokens, batch_size=2)
  want = metrics.next_token_scores(clean, values @ readout, samples.next_tokens)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_wrong_shape_is_refused(target, samples):
  with pytest.raises(ValueError, match="values must be"):
    patching.patched_logits(target, samples, 1, np.zeros((2, 3)))
