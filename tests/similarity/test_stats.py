"""Permutation nulls, p-values, bootstrap intervals and matrix summaries."""
import jax
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
  null = np.asarray(sim.cka_matrix_null(xs, ys, key=jax.random.PRNGKey(8), num_permutations=perms))
  adjusted = np.asarray(sim.max_adjusted_p_values(observed, null))
  assert adjusted[0, -1] == pytest.approx(1 / (perms + 1))
  assert adjusted.max() > 0.05  # the unplanted pairs stay unremarkable against the max null


def test_p_value_formula():
  null = np.array([[0.1, 0.5], [0.3, 0.2], [0.3, 0.9]])
  np.testing.assert_allclose(np.asarray(sim.p_value(np.array([0.3, 0.95]), null)), [3 / 4, 1 / 4])
  observed = np.array([[0.25, 0.1], [0.8, 0.0]])
  null3 = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.5), np.full((2, 2), 0.1)])
  np.testing.assert_allclose(np.asarray(sim.max_adjusted_p_values(observed, null3)), [[2 / 4, 4 / 4], [1 / 4, 4 / 4]])
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


def test_summarize():
  m = np.arange(12.0).reshape(3, 4)
  m[1, 0] = 50.0
  s = sim.summarize(m, num_depths=3)
  assert float(s.max) == 50.0 and tuple(int(i) for i in s.argmax) == (1, 0)
  assert float(s.mean) == pytest.approx(m.mean())
  np.testing.assert_allclose(np.asarray(s.depths), [0.0, 0.5, 1.0])
  np.testing.assert_allclose(np.asarray(s.diagonal), [m[0, 0], m[1, 2], m[2, 3]])  # round(0.5 * 3) = 2
  np.testing.assert_array_equal(np.asarray(s.best_y), m.argmax(1))
  np.testing.assert_array_equal(np.asarray(s.best_x), m.argmax(0))
  np.testing.assert_allclose(np.asarray(s.best_x_value), m.max(0))
  with pytest.raises(ValueError, match="La, Lb"):
    sim.summarize(np.zeros(3))
