"""Row splits and training-row standardization statistics."""
import numpy as np
import pytest

from xsim.transfer import splits


def test_split_partitions_rows_deterministically():
  split = splits.make_split(101, val_fraction=0.2, test_fraction=0.3, seed=5)
  parts = np.concatenate([split.train, split.val, split.test])
  np.testing.assert_array_equal(np.sort(parts), np.arange(101))
  assert (len(split.train), len(split.val), len(split.test)) == (51, 20, 30)
  assert all(np.all(np.diff(part) > 0) for part in (split.train, split.val, split.test))
  assert split == splits.make_split(101, val_fraction=0.2, test_fraction=0.3, seed=5)
  assert split != splits.make_split(101, val_fraction=0.2, test_fraction=0.3, seed=6)
  kept = split.keep(np.arange(101) % 2 == 0)
  np.testing.assert_array_equal(kept.test, split.test[split.test % 2 == 0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=100, val_fraction=0.0), "val_fraction"),
    (dict(n=100, val_fraction=0.5, test_fraction=0.5), "leaves no training rows"),
    (dict(n=4), "need at least"),
])
def test_split_rejects_bad_fractions(kwargs, message):
  with pytest.raises(ValueError, match=message):
    splits.make_split(**kwargs)


def test_layer_moments_use_training_rows_and_leave_constant_dims_unscaled():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 30, 4)).astype(np.float32) * 3 + 1
  x[1, :, 2] = 7.0
  rows = np.arange(0, 30, 3)
  mean, std = splits.layer_moments(x, rows, "x")
  np.testing.assert_allclose(mean, x[:, rows].astype(np.float64).mean(axis=1), rtol=1e-6)
  expected_std = x[:, rows].astype(np.float64).std(axis=1)
  expected_std[1, 2] = 1.0
  np.testing.assert_allclose(std, expected_std, rtol=1e-6)
  z = np.asarray(splits.standardize(x[:, rows], mean, std))
  np.testing.assert_allclose(z[1, :, 2], 0.0, atol=1e-6)
  np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-5)
  only_1 = splits.layer_moments(x, rows, "x", layers=[1])
  assert np.all(np.isnan(only_1[0][0])) and np.array_equal(only_1[1][1], std[1])
  x[0, rows[0], 1] = np.nan
  with pytest.raises(ValueError, match=r"x\[0\] holds NaN"):
    splits.layer_moments(x, rows, "x")


def test_centered_rows_keep_the_centred_gram_matrix_and_drop_the_centring_direction():
  rng = np.random.default_rng(1)
  scales = np.array([1e3, 1.0, 1e-2, 30.0, 0.1, 5.0])  # raw, graded columns with large means
  x = (rng.normal(size=(2, 5, 6)) + 4.0) * scales
  centred = x - x.mean(axis=1, keepdims=True)
  rows = np.asarray(splits.centered_rows(x.astype(np.float32)), np.float64)
  assert rows.shape == (2, 4, 6)
  gram = np.einsum("tna,tnb->tab", centred, centred)
  # Each entry errs by float32 rounding of its own two columns (the reflection acts column by column).
  tolerance = 1e-5 * np.sqrt(np.einsum("taa,tbb->tab", gram, gram))
  assert np.all(np.abs(np.einsum("tna,tnb->tab", rows, rows) - gram) <= tolerance)
  # n = 5 rows in 6 dimensions: the centred rows have rank 4, and the 4 rows keep all of it (no tiny spurious
  # singular value from rows centred in float32).
  for t in range(2):
    np.testing.assert_allclose(np.linalg.svd(rows[t], compute_uv=False),
                               np.linalg.svd(centred[t], compute_uv=False)[:4], rtol=1e-4)
