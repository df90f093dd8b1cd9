"""Steering-vector transfer: vectors, mapped directions and their shuffled-map null against NumPy float64 formulas,
and the efficacy interval against its stated rule."""
import dataclasses

import jax
import numpy as np
import pytest

from xsim import resampling, transfer

Z_95 = 1.959963984540054  # standard normal quantile of 0.975
Z_90 = 1.6448536269514722


def test_mean_difference_matches_float64_means():
  rng = np.random.default_rng(0)
  positive = (1e4 + rng.normal(size=(3, 50, 6))).astype(np.float32)  # large offset: float32 sums would lose digits
  negative = (1e4 + rng.normal(size=(3, 70, 6)) + 0.5).astype(np.float32)
  got = transfer.mean_difference(positive, negative)
  assert got.dtype == np.float32 and got.shape == (3, 6)
  expected = positive.astype(np.float64).mean(axis=1) - negative.astype(np.float64).mean(axis=1)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(transfer.mean_difference(positive, positive), 0.0)
  np.testing.assert_allclose(transfer.mean_difference(jax.numpy.asarray(positive), negative), got)
  with pytest.raises(ValueError, match="same layers and width"):
    transfer.mean_difference(positive, negative[:, :, :5])


def test_probe_direction_is_the_gradient_of_the_logit():
  rng = np.random.default_rng(1)
  scales, offsets = np.array([0.1, 1.0, 10.0, 3.0, 0.5]), np.array([5.0, -2.0, 0.0, 1.0, 30.0])
  features = (rng.normal(size=(2, 120, 5)) * scales + offsets).astype(np.float32)
  labels = (features[0, :, 0] / 0.1 + features[0, :, 2] / 10.0 > offsets[0] / 0.1).astype(np.int64)
  probe = transfer.fit_logistic_probes(features, labels, transfer.ProbeTraining((0.1,)))
  direction = transfer.probe_direction(probe)
  assert direction.shape == (2, 5)
  x = features[0, :3]
  for layer in range(2):
    steps = np.eye(5, dtype=np.float32) * scales  # the logit is affine: a step of one feature sd is exact
    numerical = [(np.asarray(probe.logits(layer, x + step)) - np.asarray(probe.logits(layer, x - step)))[:, 0]
                 / (2 * h) for step, h in zip(steps, scales)]
    numerical = np.stack(numerical, axis=1)  # [3, 5]: the same gradient at every x
    for row in numerical:
      np.testing.assert_allclose(row, direction[layer], rtol=1e-3, atol=1e-4 * np.abs(direction[layer]).max())
  token_like = dataclasses.replace(probe, weights=np.zeros((2, 5, 3), np.float32))
  with pytest.raises(ValueError, match="binary probe"):
    transfer.probe_direction(token_like)


def _hand_built_map(factored: bool, da=7, db=4, rank=3, seed=2):
  """A one-pair LinearMapFit with random statistics and parameters, a non-zero bias, in either parameter form."""
  rng = np.random.default_rng(seed)
  if factored:
    params = {"up": rng.normal(size=(1, db, rank)), "down": rng.normal(size=(1, rank, da))}
  else:
    params = {"weight": rng.normal(size=(1, db, da))}
  params = {k: v.astype(np.float32) for k, v in dict(params, bias=rng.normal(size=(1, db))).items()}
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return transfer.LinearMapFit(
      method="adam", r2=np.zeros((1, 1), np.float32), penalty=np.zeros((1, 1), np.float32),
      best_step=np.zeros((1, 1), np.int32), pairs=np.array([[0, 0]]), split=transfer.make_split(20),
      source_mean=3 * f32(1, da), source_std=np.exp(f32(1, da)), target_mean=3 * f32(1, db),
      target_std=np.exp(f32(1, db)), params=params, restored_chunks=())


@pytest.mark.parametrize("factored", [False, True], ids=["dense", "factored"])
def test_map_direction_is_the_linear_part_of_predict(factored):
  fit = _hand_built_map(factored)
  rng = np.random.default_rng(3)
  x, v = rng.normal(size=(2, 6, 7)).astype(np.float32)
  got = np.asarray(fit.map_direction(0, 0, v))
  assert got.shape == (6, 4)
  expected = np.asarray(fit.predict(0, 0, x + v)) - np.asarray(fit.predict(0, 0, x))
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
  np.testing.assert_array_equal(fit.map_direction(0, 0, np.zeros((2, 7), np.float32)), 0.0)
  # Linear: directions add.
  np.testing.assert_allclose(fit.map_direction(0, 0, v[:1] + v[1:2]), got[:1] + got[1:2], rtol=1e-5, atol=1e-5)


def _np_shuffled_direction(x, y, vector, penalty, permutation, standardize):
  """NumPy float64 primal ridge on training-standardized rows, target rows reordered, applied to a direction."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  x_std, y_std = (x.std(axis=0), y.std(axis=0)) if standardize else (1.0, 1.0)
  xs, ys = (x - x.mean(axis=0)) / x_std, ((y - y.mean(axis=0)) / y_std)[permutation]
  weight = np.linalg.solve(xs.T @ xs + penalty * len(x) * np.eye(x.shape[1]), xs.T @ ys)  # y = x weight
  return (vector / x_std) @ weight * y_std


@pytest.mark.parametrize("n, da, db, standardize", [(60, 8, 5, True), (60, 8, 5, False), (30, 40, 40, True)],
                         ids=["dense", "centred-only", "factored"])
def test_shuffled_ridge_directions_match_xsim_ridge_and_numpy(n, da, db, standardize):
  rng = np.random.default_rng(4)
  source = (rng.normal(size=(1, n, da)) + 2.0) * np.logspace(-1, 1, da)
  target = source @ rng.normal(size=(da, db)) + rng.normal(size=(1, n, db)) + 5.0
  source, target = source.astype(np.float32), target.astype(np.float32)
  penalty = 0.05
  fit = transfer.fit_linear_maps(source, target, transfer.Ridge(penalties=(penalty,), standardize=standardize))
  assert ("up" in fit.params) == (n < da)  # both parameter forms of ridge maps are covered
  train = fit.split.train
  x, y, vector = source[0, train], target[0, train], rng.normal(size=da).astype(np.float32)

  # Row 0 is the identity: the real map, fit on exactly its training rows.
  permutations = np.stack([np.arange(len(train))] + [rng.permutation(len(train)) for _ in range(5)])
  got = np.asarray(transfer.shuffled_ridge_directions(x, y, vector, penalty, permutations, standardize=standardize))
  assert got.shape == (6, db)
  expected = np.asarray(fit.map_direction(0, 0, vector[None]))[0]
  np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  for k, permutation in enumerate(permutations):
    reference = _np_shuffled_direction(x, y, vector, penalty, permutation, standardize)
    np.testing.assert_allclose(got[k], reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
  zero = transfer.shuffled_ridge_directions(x, y, np.zeros(da), penalty, permutations, standardize=standardize)
  np.testing.assert_array_equal(zero, 0.0)


def test_shuffled_ridge_directions_check_their_inputs():
  x, y = np.ones((10, 3)), np.ones((10, 2))
  with pytest.raises(ValueError, match="permutation of range"):
    transfer.shuffled_ridge_directions(x, y, np.ones(3), 0.1, np.zeros((2, 10), int))
  with pytest.raises(ValueError, match="same n"):
    transfer.shuffled_ridge_directions(x, y[:9], np.ones(3), 0.1, np.arange(10)[None])
  with pytest.raises(ValueError, match="vector"):
    transfer.shuffled_ridge_directions(x, y, np.ones(2), 0.1, np.arange(10)[None])
  with pytest.raises(ValueError, match="penalty"):
    transfer.shuffled_ridge_directions(x, y, np.ones(3), 0.0, np.arange(10)[None])


def test_random_directions_and_with_norm():
  directions = np.asarray(transfer.random_directions(jax.random.PRNGKey(1), 500, 3))
  assert directions.shape == (500, 3)
  np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-6)
  assert np.abs(directions.mean(axis=0)).max() < 0.1  # no preferred direction
  vectors = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 1.0]], np.float32)
  np.testing.assert_allclose(transfer.with_norm(vectors, 10.0), [[6.0, 8.0], [0.0, 0.0], [-10 / 2**0.5, 10 / 2**0.5]],
                             rtol=1e-6)
  np.testing.assert_allclose(transfer.with_norm(vectors, np.array([1.0, 5.0, 2**0.5])),
                             [[0.6, 0.8], [0.0, 0.0], [-1.0, 1.0]], rtol=1e-6)


def test_activation_directions_follow_the_activations_covariance():
  rng = np.random.default_rng(7)
  scales = np.array([10.0, 1.0, 0.1, 0.0])  # the last dimension never varies
  activations = (rng.normal(size=(300, 4)) * scales + 5.0).astype(np.float32)
  directions = np.asarray(transfer.activation_directions(jax.random.PRNGKey(3), 2000, activations))
  np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(directions[:, 3], 0.0, atol=1e-6)  # in the span of the centred rows
  # The same draws in NumPy float64: Gaussian weights of the centred rows, normalized.
  weights = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2000, 300), np.float32), np.float64)
  expected = weights @ (activations - activations.mean(0))
  np.testing.assert_allclose(directions, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
  spread = np.sqrt((directions ** 2).mean(0))
  assert spread[0] > 0.9 > 0.4 > spread[1] > 5 * spread[2]  # along the activations' large directions


def _np_efficacy(mapped, own, null, rows, z, level):
  """The efficacy, its interval by the documented rule and the null's statistics, in NumPy float64."""
  n, size = len(mapped), rows.shape[1]
  estimate = mapped.mean() / own.mean()
  deviations = mapped[rows].mean(axis=1) / own[rows].mean(axis=1) - estimate
  scale, alpha = np.sqrt(size / (n - size)), (1 - level) / 2
  low, high = estimate - scale * np.quantile(deviations, 1 - alpha), estimate - scale * np.quantile(deviations, alpha)
  nulls = null.mean(axis=1) / own.mean()
  h_dir = z * nulls.std(ddof=1)
  return dict(efficacy=estimate, ci_low=estimate - np.hypot(max(estimate - low, 0), h_dir),
              ci_high=estimate + np.hypot(max(high - estimate, 0), h_dir), null_mean=nulls.mean(),
              null_sd=nulls.std(ddof=1), null_q95=np.quantile(nulls, 0.95),
              p_value=(1 + np.sum(nulls >= estimate)) / (len(nulls) + 1), null_efficacies=nulls,
              mapped_effect=mapped.mean(),
              own_effect=own.mean(), n=n)


RESAMPLES = 400  # one subset shape (n = 41 prompts) for every call: each new shape compiles again


def _effects(seed=5, n=41, num_null=30):
  rng = np.random.default_rng(seed)
  own = 1.0 + 0.5 * rng.normal(size=n)
  mapped = 0.6 * own + 0.4 * rng.normal(size=n)
  null = 0.05 + 0.2 * rng.normal(size=(num_null, 1)) + 0.3 * rng.normal(size=(num_null, n))
  return mapped, own, null


@pytest.mark.parametrize("level, z", [(0.95, Z_95), (0.9, Z_90)])
def test_steering_efficacy_matches_numpy(level, z):
  mapped, own, null = _effects()
  key = jax.random.PRNGKey(7)
  result = transfer.steering_efficacy(mapped, own, null, key=key, num_resamples=RESAMPLES, level=level)
  rows = np.asarray(resampling.subsets(key, RESAMPLES, len(mapped)))
  expected = _np_efficacy(mapped, own, null, rows, z, level)
  for name, value in expected.items():
    np.testing.assert_allclose(getattr(result, name), value, rtol=1e-5, atol=1e-5, err_msg=name)
  assert result.ci_low < result.efficacy < result.ci_high
  # Direction noise widens the prompt-only interval.
  quiet = transfer.steering_efficacy(mapped, own, null * 0.0, key=key, num_resamples=RESAMPLES, level=level)
  assert quiet.ci_low > result.ci_low and quiet.ci_high < result.ci_high


def test_steering_efficacy_properties():
  mapped, own, null = _effects(seed=6)
  key = jax.random.PRNGKey(8)
  centred = null - null.mean()
  same = transfer.steering_efficacy(own, own, centred, key=key, num_resamples=RESAMPLES)
  assert same.efficacy == pytest.approx(1.0) and same.p_value == pytest.approx(1 / 31)
  assert same.ci_low < 1.0 < same.ci_high and abs(same.null_mean) < 1e-12
  base = transfer.steering_efficacy(mapped, own, null, key=key, num_resamples=RESAMPLES)
  for factor in (-3.0, 1e3):  # efficacy is a ratio: the score's units cancel
    scaled = transfer.steering_efficacy(factor * mapped, factor * own, factor * null, key=key,
                                        num_resamples=RESAMPLES)
    for name in ("efficacy", "ci_low", "ci_high", "null_mean", "null_sd", "null_q95", "p_value"):
      np.testing.assert_allclose(getattr(scaled, name), getattr(base, name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert scaled.own_effect == pytest.approx(factor * base.own_effect)
  # A subsample without the one prompt the own vector moves has no ratio: the interval is undefined.
  spike = np.zeros(41)
  spike[3] = 1.0
  undefined = transfer.steering_efficacy(spike, spike, null, key=key, num_resamples=RESAMPLES)
  assert undefined.efficacy == 1.0 and np.isnan(undefined.ci_low) and np.isnan(undefined.ci_high)


def test_steering_efficacy_checks_its_inputs():
  mapped, own, null = _effects(n=10, num_null=5)
  check = lambda *effects, **options: transfer.steering_efficacy(
      *effects, key=jax.random.PRNGKey(0), **dict(dict(num_resamples=20), **options))
  with pytest.raises(ValueError, match="same prompts"):
    check(mapped, own[:9], null)
  with pytest.raises(ValueError, match="same prompts"):
    check(mapped, own, null[:, :9])
  with pytest.raises(ValueError, match="n=3"):
    check(mapped[:3], own[:3], null[:, :3])
  with pytest.raises(ValueError, match="at least 2"):
    check(mapped, own, null[:1])
  with pytest.raises(ValueError, match="finite non-zero"):
    check(mapped, np.where(np.arange(10) % 2, 1.0, -1.0), null)
  for name, bad in (("effect_mapped", (np.where(np.arange(10) == 2, np.nan, mapped), own, null)),
                    ("effect_own", (mapped, np.where(np.arange(10) == 2, np.inf, own), null)),
                    ("effect_null", (mapped, own, np.where(np.arange(10) == 2, np.nan, null)))):
    with pytest.raises(ValueError, match=f"{name} holds NaN"):
      check(*bad)
  with pytest.raises(ValueError, match="level"):
    check(mapped, own, null, level=1.0)
