"""Probes against NumPy float64 Newton solvers, and the probe-transfer table."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from xsim import resampling, transfer

PENALTIES = (1e-3, 3e-2, 1.0)
TRAINING = transfer.ProbeTraining(PENALTIES)


def _standardized(x, rows):
  x = x.astype(np.float64)
  return (x - x[rows].mean(axis=0)) / x[rows].std(axis=0)


def _np_softmax_probe(x, labels, num_classes, penalty, binary):
  """Newton's method on mean cross-entropy + penalty / 2 |W|^2 (bias unpenalized), in float64.

  Binary probes are IRLS on the sigmoid model; softmax probes use the full Hessian, whose bias block is singular
  (adding a constant to every class's bias changes nothing), so each step is a least-squares solve.
  """
  n, d = x.shape
  xb = np.hstack([x, np.ones((n, 1))])
  outputs = 1 if binary else num_classes
  theta = np.zeros((d + 1, outputs))
  reg = np.diag(np.r_[np.full(d, penalty), 0.0])
  for _ in range(50):
    z = xb @ theta
    if binary:
      p = 1 / (1 + np.exp(-z[:, 0]))
      grad = xb.T @ (p - labels) / n + reg @ theta[:, 0]
      hess = xb.T @ (xb * (p * (1 - p))[:, None]) / n + reg
      theta[:, 0] -= np.linalg.solve(hess, grad)
    else:
      p = np.exp(z - z.max(axis=1, keepdims=True))
      p /= p.sum(axis=1, keepdims=True)
      grad = (xb.T @ (p - np.eye(num_classes)[labels]) / n + reg @ theta).ravel()
      # Hessian: mean over rows of (x x') (x) (diag(p) - p p'), plus the penalty on the weights.
      cov = np.einsum("nk,kl->nkl", p, np.eye(outputs)) - np.einsum("nk,nl->nkl", p, p)
      hess = np.einsum("na,nb,nkl->akbl", xb, xb, cov) / n + np.einsum("ab,kl->akbl", reg, np.eye(outputs))
      step = np.linalg.lstsq(hess.reshape(grad.size, grad.size), grad, rcond=None)[0]
      theta -= step.reshape(theta.shape)
  return theta[:d], theta[d]


def _np_loss(x, labels, weights, bias, binary):
  z = x @ weights + bias
  if binary:
    return np.mean(np.logaddexp(0, z[:, 0]) - labels * z[:, 0])
  z = z - z.max(axis=1, keepdims=True)
  return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels])


@pytest.mark.parametrize("binary", [True, False])
def test_probes_wider_than_their_training_rows_match_the_full_space_newton_solution(binary):
  # 80 features, 42 training rows: the solver works in the rows' span; the reference solves in all 80 dimensions.
  rng = np.random.default_rng(2)
  features = rng.normal(size=(1, 70, 80)).astype(np.float32)
  if binary:
    labels = (features[0, :, 0] + 0.5 * rng.normal(size=70) > 0).astype(np.int64)
    probe = transfer.fit_logistic_probes(features, labels, transfer.ProbeTraining((0.05,)))
  else:
    labels = rng.integers(0, 3, size=70)
    probe = transfer.fit_token_probes(features, labels, transfer.ProbeTraining((0.05,)), num_classes=3)
  split = probe.split
  x = _standardized(features[0], split.train)
  weights, bias = _np_softmax_probe(x[split.train], labels[split.train], 2 if binary else 3, 0.05, binary)
  assert len(split.train) < x.shape[1]
  np.testing.assert_allclose(probe.weights[0], weights, atol=1e-4)
  centered = lambda b: b - b.mean()
  np.testing.assert_allclose(centered(probe.bias[0]), centered(bias), atol=1e-4)


@pytest.fixture(scope="module", name="task")
def _task():
  """Two models' activations of one binary task: the source is a noisy rotation of the target."""
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 600, 6))
  labels = (target[1] @ rng.normal(size=6) + 0.8 * rng.normal(size=600) > 0.3).astype(np.int64)
  rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  source = target @ rotation + 0.05 * rng.normal(size=target.shape)
  return source.astype(np.float32), target.astype(np.float32), labels, rotation


@pytest.fixture(scope="module", name="target_probe")
def _target_probe(task):
  return transfer.fit_logistic_probes(task[1], task[2], TRAINING)


def test_binary_probe_matches_numpy_irls_with_the_penalty_chosen_on_validation_rows(task, target_probe):
  _, target, labels, _ = task
  split = target_probe.split
  for layer in range(2):
    x = _standardized(target[layer], split.train)
    fits = [_np_softmax_probe(x[split.train], labels[split.train], 2, p, True) for p in PENALTIES]
    val_losses = [_np_loss(x[split.val], labels[split.val], w, b, True) for w, b in fits]
    best = int(np.argmin(val_losses))
    assert target_probe.penalty[layer] == pytest.approx(PENALTIES[best])
    np.testing.assert_allclose(target_probe.weights[layer], fits[best][0], atol=1e-4)
    np.testing.assert_allclose(target_probe.bias[layer], fits[best][1], atol=1e-4)
    expected_hits = ((x[split.test] @ fits[best][0] + fits[best][1])[:, 0] > 0) == labels[split.test]
    assert np.mean(target_probe.test_hits[1][layer] == expected_hits) > 0.99  # rows on the boundary may flip
  assert target_probe.accuracy()[1] > 0.85 and target_probe.accuracy()[0] < 0.7  # layer 1 carries the label


def test_token_probe_matches_numpy_newton_softmax_regression():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(1, 900, 5)).astype(np.float32)
  token_ids = 100 + rng.choice(8, size=900, p=[0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.04])
  token_ids[features[0, :, 0] > 1.0] = 103  # a learnable signal
  probe = transfer.fit_token_probes(features, token_ids, transfer.ProbeTraining((1e-2,)), num_classes=6)
  split = transfer.make_split(900)
  ids, counts = np.unique(token_ids[split.train], return_counts=True)
  classes = np.sort(ids[np.argsort(-counts, kind="stable")[:6]])
  np.testing.assert_array_equal(probe.classes, classes)
  keep = np.isin(token_ids, classes)
  np.testing.assert_array_equal(probe.split.test, split.test[keep[split.test]])

  labels = np.searchsorted(classes, token_ids)
  x = _standardized(features[0], probe.split.train)
  weights, bias = _np_softmax_probe(x[probe.split.train], labels[probe.split.train], 6, 1e-2, False)
  np.testing.assert_allclose(probe.weights[0], weights, atol=1e-4)
  centered = lambda b: b - b.mean()  # softmax biases are defined up to a common constant
  np.testing.assert_allclose(centered(probe.bias[0]), centered(bias), atol=1e-4)
  order = np.argsort(-(x[probe.split.test] @ weights + bias), axis=1)
  for k in (1, 5):
    expected = (order[:, :k] == labels[probe.split.test][:, None]).any(axis=1)
    assert np.mean(probe.test_hits[k][0] == expected) > 0.99
  assert probe.accuracy(5)[0] > probe.accuracy(1)[0] > 0.3


def test_probe_transfer_table_scores_frozen_maps(task, target_probe):
  source, target, labels, rotation = task
  source_probe = transfer.fit_logistic_probes(source, labels, TRAINING)
  rng = np.random.default_rng(2)  # the maps are fit on other, generic rows of the same two models
  generic_target = rng.normal(size=(2, 2000, 6))
  generic_source = generic_target @ rotation + 0.05 * rng.normal(size=generic_target.shape)
  maps = transfer.fit_linear_maps(generic_source.astype(np.float32), generic_target.astype(np.float32),
                                  transfer.Ridge())
  subsets = resampling.subsets(jax.random.PRNGKey(0), 300, len(target_probe.split.test))
  table = transfer.probe_transfer(maps, target_probe, source_probe, source, labels, subsets=subsets)

  test = target_probe.split.test
  for i in range(2):
    for j in range(2):
      mapped = np.asarray(maps.predict(i, j, source[i][test]), np.float64)
      logits = ((mapped - target_probe.mean[j]) / target_probe.std[j]) @ target_probe.weights[j]
      expected = np.mean((logits[:, 0] + target_probe.bias[j, 0] > 0) == labels[test])
      assert table.mapped[i, j] == pytest.approx(expected, abs=2 / len(test))
  np.testing.assert_allclose(table.mapped[1, 1], table.target[1], atol=0.03)  # a near-perfect map: the ceiling
  np.testing.assert_allclose(table.target, target_probe.accuracy(), rtol=1e-6)
  np.testing.assert_allclose(table.source, source_probe.accuracy(), rtol=1e-6)
  majority_class = np.bincount(labels[target_probe.split.train]).argmax()
  assert table.majority == pytest.approx(np.mean(labels[test] == majority_class))
  assert table.chance == 0.5
  assert np.all(table.mapped_ci[..., 0] <= table.mapped) and np.all(table.mapped <= table.mapped_ci[..., 1])
  assert np.all(table.mapped_ci >= 0) and np.all(table.mapped_ci <= 1)  # accuracies' intervals stay in [0, 1]
  np.testing.assert_array_equal(table.target_ci, resampling.mean_interval(target_probe.test_hits[1], subsets,
                                                                          bounds=(0.0, 1.0)))
  assert np.isnan(transfer.probe_transfer(maps, target_probe, source_probe, source, labels).mapped_ci).all()

  other_rows = transfer.fit_logistic_probes(source, labels, TRAINING, seed=3)
  with pytest.raises(ValueError, match="same rows, split and classes"):
    transfer.probe_transfer(maps, target_probe, other_rows, source, labels)
  with pytest.raises(ValueError, match="k=5 is not scored"):
    transfer.probe_transfer(maps, target_probe, source_probe, source, labels, k=5)


def test_token_probe_transfer_scores_top_k_against_the_k_most_frequent_tokens():
  rng = np.random.default_rng(4)
  frequencies = np.r_[np.full(3, 0.2), np.full(8, 0.4 / 8)]  # three frequent tokens, eight rare ones
  token_ids = 100 + rng.choice(11, size=900, p=frequencies)
  centres = rng.normal(size=(11, 5))
  target = (centres[token_ids - 100] + 0.8 * rng.normal(size=(900, 5)))[None].astype(np.float32)
  source = target[..., ::-1].copy()  # a permutation of the target's dimensions
  maps = transfer.fit_linear_maps(source, target, transfer.Ridge())
  fit_probes = lambda x: transfer.fit_token_probes(x, token_ids, transfer.ProbeTraining((1e-2,)), num_classes=8)
  target_probe, source_probe = fit_probes(target), fit_probes(source)
  test_labels = token_ids[target_probe.split.test]
  counts = {t: np.sum(token_ids[target_probe.split.train] == t) for t in target_probe.classes}
  for k in (1, 5):
    table = transfer.probe_transfer(maps, target_probe, source_probe, source, token_ids, k=k)
    frequent = sorted(counts, key=lambda t: (-counts[t], t))[:k]
    assert table.majority == pytest.approx(np.mean(np.isin(test_labels, frequent)))
    assert table.chance == k / 8
    assert table.mapped[0, 0] == pytest.approx(table.target[0], abs=0.02)  # an exact map reaches the ceiling
    assert table.target[0] > table.majority + 0.1
  assert transfer.probe_transfer(maps, target_probe, source_probe, source, token_ids, k=5).majority > 0.6


def test_probe_inputs_are_checked():
  features = np.zeros((1, 40, 3), np.float32)
  with pytest.raises(ValueError, match="0/1 values"):
    transfer.fit_logistic_probes(features, np.arange(40) % 3)
  with pytest.raises(ValueError, match="fewer than num_classes=500"):
    transfer.fit_token_probes(features, np.arange(40) % 7)
  with pytest.raises(ValueError, match="single class"):
    transfer.fit_logistic_probes(features, np.zeros(40, int))


@pytest.fixture(scope="module", name="mesh")
def _mesh():
  return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))  # every mesh axis splits the work


def test_probes_sharded_over_eight_devices_equal_one_device(task, target_probe, mesh):
  sharded = transfer.fit_logistic_probes(task[1], task[2], TRAINING, mesh=mesh)  # 2 layers padded to 8
  np.testing.assert_allclose(sharded.weights, target_probe.weights, atol=1e-6)
  np.testing.assert_allclose(sharded.bias, target_probe.bias, atol=1e-6)
  np.testing.assert_array_equal(sharded.penalty, target_probe.penalty)
  np.testing.assert_array_equal(sharded.test_hits[1], target_probe.test_hits[1])


def test_probe_transfer_sharded_over_eight_devices_equals_one_device(task, target_probe, mesh):
  source, _, labels, rotation = task
  source_probe = transfer.fit_logistic_probes(source, labels, TRAINING)
  rng = np.random.default_rng(5)
  generic_target = rng.normal(size=(2, 1000, 6))
  generic_source = generic_target @ rotation + 0.05 * rng.normal(size=generic_target.shape)
  maps = transfer.fit_linear_maps(generic_source.astype(np.float32), generic_target.astype(np.float32),
                                  transfer.Ridge(), pairs=[(0, 0), (0, 1), (1, 1)])  # 2 and 1 pairs per source
  subsets = resampling.subsets(jax.random.PRNGKey(0), 100, len(target_probe.split.test))
  one = transfer.probe_transfer(maps, target_probe, source_probe, source, labels, subsets=subsets)
  eight = transfer.probe_transfer(maps, target_probe, source_probe, source, labels, subsets=subsets, mesh=mesh)
  np.testing.assert_array_equal(eight.mapped, one.mapped)  # NaN where no map was fit: (1, 0)
  np.testing.assert_array_equal(eight.mapped_ci, one.mapped_ci)
  assert np.isnan(one.mapped[1, 0]) and np.isfinite(one.mapped[0, 1])
