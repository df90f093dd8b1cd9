"""Permutation nulls, p-values, bootstrap and subsampling intervals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim


def _stacks(seed, la=2, lb=3, n=30, d=5, planted=0.0):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((la, n, d))
  ys = rng.standard_normal((lb, n, d))
  ys[-1] += planted * xs[0]
  return xs.astype(np.float32), ys.astype(np.float32)


def test_permutation_null_is_the_measure_on_permuted_rows():
  xs, ys = _stacks(0)
  key = jax.random.PRNGKey(1)
  measure = lambda a, b: sim.cka(a[0], b[0], debiased=True)
  null = np.asarray(sim.permutation_null(measure, xs, ys, key=key, num_permutations=6, batch_size=4))
  perms = np.asarray(sim.permutations(key, 6, 30))
  assert all(sorted(p) == list(range(30)) for p in perms)
  want = [ref.linear_cka(xs[0], ys[0][p], True) for p in perms]
  np.testing.assert_allclose(null, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 512])
def test_fast_cka_null_equals_generic_null(debiased, chunk_size):
  xs, ys = _stacks(2, planted=1.0)
  key = jax.random.PRNGKey(3)
  # 49 permutations, as in the p-value tests, so the compiled null is shared.
  fast = sim.cka_matrix_null(xs, ys, key=key, num_permutations=49, debiased=debiased, chunk_size=chunk_size)
  perms = np.asarray(sim.permutations(key, 49, 30))
  want = [[[ref.linear_cka(x, y[p], debiased) for y in ys] for x in xs] for p in perms]
  np.testing.assert_allclose(np.asarray(fast), want, rtol=1e-5, atol=2e-6)


def test_p_values_tiny_under_planted_structure():
  perms = 49
  xs, ys = _stacks(7, planted=1.0)
  observed = np.asarray(sim.cka_matrix(xs, ys, debiased=True))
  null_max = np.asarray(sim.cka_matrix_null(xs, ys, key=jax.random.PRNGKey(8), num_permutations=perms)).max((1, 2))
  assert float(sim.p_value(observed[0, -1], null_max)) == pytest.approx(1 / (perms + 1))
  assert float(sim.p_value(observed[1, 0], null_max)) > 0.05  # an unplanted pair is unremarkable against the max


def test_p_value_formula():
  null = np.array([[0.1, 0.5], [0.3, 0.2], [0.3, 0.9]])
  np.testing.assert_allclose(np.asarray(sim.p_value(np.array([0.3, 0.95]), null)), [3 / 4, 1 / 4])
  with pytest.raises(ValueError, match="null must be"):
    sim.p_value(np.zeros(3), np.zeros((5, 2)))


@pytest.mark.slow
def test_p_values_uniform_under_null():
  perms, datasets = 49, 80
  grid_p, max_p = [], []
  for seed in range(datasets):
    xs, ys = _stacks(100 + seed)
    observed = np.asarray(sim.cka_matrix(xs, ys, debiased=True))
    null = np.asarray(sim.cka_matrix_null(xs, ys, key=jax.random.PRNGKey(seed), num_permutations=perms))
    grid_p.append(np.asarray(sim.p_value(observed, null))[0, 0])
    max_p.append(float(sim.p_value(observed.max(), null.max((1, 2)))))
  for p in (np.array(grid_p), np.array(max_p)):
    # Under the null p is uniform on {1/50, ..., 1}: P(p <= 0.2) = 0.2; 80 draws give sd 0.045.
    assert 0.06 < np.mean(p <= 0.2) < 0.34
    assert 0.35 < np.mean(p) < 0.65


def test_bootstrap_resamples_rows_jointly():
  xs, ys = _stacks(9, planted=1.0)
  key = jax.random.PRNGKey(10)
  measure = lambda a, b: sim.cka(a[0], b[-1])
  samples = np.asarray(sim.bootstrap(measure, xs, ys, key=key, num_resamples=200))
  index = np.asarray(jax.random.randint(key, (200, 30), 0, 30))
  np.testing.assert_allclose(samples[:5], [ref.linear_cka(xs[0][i], ys[-1][i]) for i in index[:5]], rtol=1e-5)
  low, high = sim.bootstrap_ci(measure, xs, ys, key=key, num_resamples=200)
  np.testing.assert_allclose([float(low), float(high)], np.quantile(samples, [0.025, 0.975]), rtol=1e-5)
  assert float(low) < ref.linear_cka(xs[0], ys[-1]) < float(high)
  with pytest.raises(ValueError, match="level"):
    sim.bootstrap_ci(measure, xs, ys, key=key, level=95)


def _debiased_cka(a, b):
  return sim.cka(a, b, debiased=True)


def _debiased_grid(a, b):
  return sim.cka_matrix(a, b, debiased=True)


def test_subsample_draws_distinct_rows_shared_by_x_y_and_layers():
  n, resamples = 31, 40
  rows = np.arange(n, dtype=np.float32)[:, None]
  xs, y = np.stack([rows, rows + 100]), rows + 1000  # [2, n, 1] and [n, 1]: each value names its row
  key = jax.random.PRNGKey(4)
  which = lambda a, b: jnp.stack([jnp.sort(a[0, :, 0]), jnp.sort(a[1, :, 0]) - 100, jnp.sort(b[:, 0]) - 1000])
  drawn = np.asarray(sim.subsample(which, xs, y, key=key, num_resamples=resamples))
  assert drawn.shape == (resamples, 3, n // 2)  # default size n // 2
  np.testing.assert_array_equal(drawn[:, 1], drawn[:, 0])  # every layer of x
  np.testing.assert_array_equal(drawn[:, 2], drawn[:, 0])  # and y get the same rows
  assert np.all(np.diff(drawn[:, 0], axis=-1) > 0)  # sorted rows strictly increase: none repeated
  assert len({tuple(r) for r in drawn[:, 0]}) == resamples  # independent draws
  index = np.sort(np.asarray(sim.permutations(key, resamples, n))[:, : n // 2], axis=-1)
  np.testing.assert_array_equal(drawn[:, 0], index)  # the documented rows


def test_subsample_values_and_interval_formula():
  xs, ys = _stacks(9, planted=1.0)
  key, size = jax.random.PRNGKey(11), 12
  measure = lambda a, b: sim.cka(a[0], b[-1], debiased=True)
  samples = np.asarray(sim.subsample(measure, xs, ys, key=key, num_resamples=50, size=size))
  index = np.asarray(sim.permutations(key, 50, 30))[:, :size]
  want = [ref.linear_cka(xs[0][i], ys[-1][i], True) for i in index[:5]]
  np.testing.assert_allclose(samples[:5], want, rtol=1e-5, atol=2e-6)
  # Basic subsampling interval, deviations scaled by sqrt(m / (n - m)) = sqrt(12 / 18).
  t = ref.linear_cka(xs[0], ys[-1], True)
  q_low, q_high = np.quantile(samples - t, [0.05, 0.95])
  low, high = sim.subsample_ci(measure, xs, ys, key=key, num_resamples=50, size=size, level=0.9)
  scale = np.sqrt(12 / 18)
  np.testing.assert_allclose([float(low), float(high)], [t - scale * q_high, t - scale * q_low], rtol=1e-5, atol=1e-6)
  assert float(low) < t < float(high)


def test_subsample_bad_options_raise():
  xs, ys = _stacks(0)  # n = 30
  for size in (30, 31, 1):
    with pytest.raises(ValueError, match="2 <= size < n=30"):
      sim.subsample(_debiased_grid, xs, ys, key=jax.random.PRNGKey(0), size=size)
    with pytest.raises(ValueError, match="2 <= size < n=30"):
      sim.subsample_ci(_debiased_grid, xs, ys, key=jax.random.PRNGKey(0), size=size)
  with pytest.raises(ValueError, match="level"):
    sim.subsample_ci(_debiased_grid, xs, ys, key=jax.random.PRNGKey(0), level=95)


def test_subsample_ci_covers_population_cka():
  # x ~ N(0, I_d), y = x + e with e ~ N(0, I_d): population linear CKA is d / (d (1 + 1)) = 0.5 exactly.
  datasets, n, d = 60, 200, 4
  rng = np.random.default_rng(12)
  x = rng.standard_normal((datasets, n, d)).astype(np.float32)
  y = (x + rng.standard_normal((datasets, n, d))).astype(np.float32)
  keys = jax.random.split(jax.random.PRNGKey(13), datasets)
  ci = jax.jit(jax.vmap(lambda a, b, k: sim.subsample_ci(_debiased_cka, a, b, key=k, num_resamples=200)))
  low, high = map(np.asarray, ci(x, y, keys))
  # Measured over 1000 datasets: coverage 0.94, mean width 0.103, against 2 x 1.96 x sd(estimate) = 0.100.
  # 60 datasets at 0.94: at least 51 cover with probability > 0.99; the width bounds reject a missing or
  # wrong finite-population scale.
  assert np.mean((low <= 0.5) & (0.5 <= high)) >= 0.85
  assert 0.08 < np.mean(high - low) < 0.13


def test_subsample_ci_unbiased_where_bootstrap_is_not():
  # d >> n, x and y independent: every layer pair's population CKA is 0. A duplicated row adds about d to
  # an off-diagonal Gram entry of both sides, so bootstrapped debiased CKA lands near 0.8.
  rng = np.random.default_rng(14)
  xs, ys = (rng.standard_normal((2, 64, 256)).astype(np.float32) for _ in range(2))
  key = jax.random.PRNGKey(15)
  observed = np.asarray(_debiased_grid(xs, ys))
  assert np.all(np.abs(observed) < 0.1)
  boot_low, _ = sim.bootstrap_ci(_debiased_grid, xs, ys, key=key, num_resamples=200)
  assert np.all(np.asarray(boot_low) > 0.5)  # the percentile interval sits far above the estimate and truth
  low, high = map(np.asarray, sim.subsample_ci(_debiased_grid, xs, ys, key=key, num_resamples=200))
  assert np.all((low <= observed) & (observed <= high))
  assert np.all((low <= 0.0) & (0.0 <= high))
  assert np.all(high - low < 0.3)
  # The same for the max over the layer grid.
  grid_max = lambda a, b: _debiased_grid(a, b).max()
  assert float(sim.bootstrap_ci(grid_max, xs, ys, key=key, num_resamples=200)[0]) > 0.5
  low, high = sim.subsample_ci(grid_max, xs, ys, key=key, num_resamples=200)
  assert float(low) <= 0.0 <= float(high)
