"""xsim.resampling: subsets drawn without replacement and the bootstrap interval of a mean (permutations,
p-values and the subsampling interval are tested through xsim.similarity in tests/similarity/test_stats.py)."""
import jax
import numpy as np
import pytest

from xsim import resampling


def test_subsets_are_the_first_rows_of_permutations():
  key, n = jax.random.PRNGKey(5), 31
  rows = np.asarray(resampling.subsets(key, 20, n))
  assert rows.shape == (20, n // 2)  # default size n // 2
  np.testing.assert_array_equal(rows, np.asarray(resampling.permutations(key, 20, n))[:, :n // 2])
  assert all(len(set(r)) == n // 2 for r in rows.tolist())  # drawn without replacement
  assert np.asarray(resampling.subsets(key, 20, n, size=7)).shape == (20, 7)
  with pytest.raises(ValueError, match="size=31"):
    resampling.subsets(key, 20, n, size=n)


def test_bootstrap_mean_ci_matches_the_normal_approximation():
  rng = np.random.default_rng(3)
  hits = (rng.random((2, 4000)) < np.array([[0.7], [0.2]])).astype(np.float32)
  ci = np.asarray(resampling.bootstrap_mean_ci(hits, num_resamples=2000, seed=1))
  mean = hits.mean(axis=1)
  half = 1.96 * np.sqrt(mean * (1 - mean) / hits.shape[1])
  np.testing.assert_allclose(ci[:, 0], mean - half, atol=0.15 * half.max())
  np.testing.assert_allclose(ci[:, 1], mean + half, atol=0.15 * half.max())
  # Rows are drawn once for all entries (paired): identical entries get identical intervals.
  paired = np.asarray(resampling.bootstrap_mean_ci(np.stack([hits[0], hits[0]]), num_resamples=200, seed=4))
  np.testing.assert_array_equal(paired[0], paired[1])
  np.testing.assert_allclose(resampling.bootstrap_mean_ci(np.full((5,), 0.25), num_resamples=50), [0.25, 0.25],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="level"):
    resampling.bootstrap_mean_ci(hits, level=1.5)
