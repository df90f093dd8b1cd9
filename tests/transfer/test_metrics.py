"""xsim.transfer.metrics against plain NumPy float64 references and known properties."""
import numpy as np
import pytest

from xsim.transfer import metrics


def _np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_r2(y, p):
  sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
  keep = sst > 0
  return np.mean(1.0 - ((y - p) ** 2).sum(axis=0)[keep] / sst[keep])


@pytest.fixture(name="logits")
def _logits():
  rng = np.random.default_rng(0)
  return rng.normal(size=(3, 7, 50)) * 3.0, rng.normal(size=(3, 7, 50)) * 3.0, rng.integers(0, 50, size=(3, 7))


def test_r2_matches_numpy_and_ignores_constant_dims():
  rng = np.random.default_rng(1)
  y = rng.normal(size=(2, 40, 5))
  y[1, :, 2] = 3.0  # a constant target dimension has no R^2 and is left out of the average
  pred = y + 0.5 * rng.normal(size=y.shape)
  got = np.asarray(metrics.r2_score(y, pred))
  np.testing.assert_allclose(got, [_np_r2(y[0], pred[0]), _np_r2(y[1], pred[1])], rtol=1e-5)
  np.testing.assert_allclose(metrics.r2_score(y, y), 1.0, atol=1e-6)
  constant = np.broadcast_to(y.mean(axis=1, keepdims=True) + 0.1, y.shape)  # any constant scores <= 0
  assert np.all(np.asarray(metrics.r2_score(y, constant)) < 0)


def test_kl_matches_numpy_and_vanishes_for_identical_logits(logits):
  clean, patched, _ = logits
  log_p, log_q = _np_log_softmax(clean), _np_log_softmax(patched)
  expected = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
  np.testing.assert_allclose(metrics.kl_divergence(clean, patched), expected, rtol=1e-4, atol=1e-6)
  assert np.all(expected > 0)
  np.testing.assert_allclose(metrics.kl_divergence(clean, clean + 5.0), 0.0, atol=1e-5)  # shift-invariant


def test_top1_agreement_and_topk_accuracy_match_numpy(logits):
  clean, patched, labels = logits
  np.testing.assert_array_equal(metrics.top1_agreement(clean, patched),
                                (clean.argmax(-1) == patched.argmax(-1)).astype(np.float32))
  np.testing.assert_array_equal(metrics.top1_agreement(clean, clean), 1.0)
  order = np.argsort(-patched, axis=-1)
  for k in (1, 5):
    expected = (order[..., :k] == labels[..., None]).any(-1).astype(np.float32)
    np.testing.assert_array_equal(metrics.topk_accuracy(patched, labels, k), expected)
  np.testing.assert_array_equal(metrics.topk_accuracy(patched, labels, 50), 1.0)


def test_next_token_scores_per_position(logits):
  clean, patched, labels = logits
  scores = metrics.next_token_scores(clean, patched, labels)
  assert set(scores) == {"kl", "top1_agreement", "next_token_accuracy", "clean_accuracy"}
  log_p, log_q = _np_log_softmax(clean), _np_log_softmax(patched)
  np.testing.assert_allclose(scores["kl"], (np.exp(log_p) * (log_p - log_q)).sum(axis=-1), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(scores["top1_agreement"], clean.argmax(-1) == patched.argmax(-1))
  np.testing.assert_array_equal(scores["next_token_accuracy"], patched.argmax(-1) == labels)
  np.testing.assert_array_equal(scores["clean_accuracy"], clean.argmax(-1) == labels)
  # Patching in the target's own activation (identity map) leaves the logits unchanged.
  identity = metrics.next_token_scores(clean, clean, labels)
  np.testing.assert_allclose(identity["kl"], 0.0, atol=1e-6)
  np.testing.assert_array_equal(identity["top1_agreement"], 1.0)
  np.testing.assert_array_equal(identity["next_token_accuracy"], identity["clean_accuracy"])
