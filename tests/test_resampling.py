"""xsim.resampling: subsets drawn without replacement and the subsampling interval of a mean (permutations,
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


def test_mean_interval_is_the_subsampling_interval_of_the_mean():
  rng = np.random.default_rng(3)
  hits = (rng.random((2, 4000)) < np.array([[0.7], [0.2]])).astype(np.float32)
  subsets = resampling.subsets(jax.random.PRNGKey(1), 400, hits.shape[1])
  ci = np.asarray(resampling.mean_interval(hits, subsets))
  # The same interval from a float64 NumPy recomputation: estimate - sqrt(s / (n - s)) * quantiles of deviations.
  rows = np.asarray(subsets)
  estimate, means = hits.astype(np.float64).mean(1), hits.astype(np.float64)[:, rows].mean(-1)  # [2], [2, R]
  scale = np.sqrt(rows.shape[1] / (hits.shape[1] - rows.shape[1]))
  deviations = means - estimate[:, None]
  expected = np.stack([estimate - scale * np.quantile(deviations, 0.975, axis=1),
                       estimate - scale * np.quantile(deviations, 0.025, axis=1)], -1)
  np.testing.assert_allclose(ci, expected, atol=1e-5)
  # ... which covers the mean about as the normal approximation does.
  half = 1.96 * np.sqrt(estimate * (1 - estimate) / hits.shape[1])
  np.testing.assert_allclose(ci[:, 0], estimate - half, atol=0.2 * half.max())
  np.testing.assert_allclose(ci[:, 1], estimate + half, atol=0.2 * half.max())
  # The rows are the same for every entry (paired): identical entries get identical intervals.
  paired = np.asarray(resampling.mean_interval(np.stack([hits[0], hits[0]]), subsets))
  np.testing.assert_array_equal(paired[0], paired[1])
  # Bounds clip the interval to the scores' range: all hits but one of 41 leave a basic interval above 1.
  nearly = np.ones(41, np.float32)
  nearly[0] = 0.0
  few = resampling.subsets(jax.random.PRNGKey(2), 50, 41)
  assert float(resampling.mean_interval(nearly, few)[1]) > 1.0
  assert float(resampling.mean_interval(nearly, few, bounds=(0.0, 1.0))[1]) == 1.0
  with pytest.raises(ValueError, match="level"):
    resampling.mean_interval(hits, subsets, level=1.5)
  with pytest.raises(ValueError, match="subsets"):
    resampling.mean_interval(hits[:, :100], subsets)
