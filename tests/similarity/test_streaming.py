"""Exact streaming linear CKA equals the full-data value for any batch size."""
import jax
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim


def _stacks(seed, la=2, lb=3, n=45, da=6, db=8, offset=0.0):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((la, n, da)) + offset
  ys = rng.standard_normal((lb, n, db)) * 3.0 - offset
  ys[0, :, :da] += xs[1]
  return xs.astype(np.float32), ys.astype(np.float32)


def _batches(xs, ys, size):
  return [(xs[:, i:i + size], ys[:, i:i + size]) for i in range(0, xs.shape[1], size)]


def test_equals_full_data_numpy_for_every_batch_size():
  xs, ys = _stacks(0, offset=20.0)  # far from the origin: the first-batch shift keeps float32 sums exact
  for size in (1, 16):  # 16 leaves a ragged last batch of 13
    state = sim.stream_init(xs[:, :size], ys[:, :size])
    for bx, by in _batches(xs, ys, size):
      state = sim.stream_update(state, bx, by)
    for debiased in (False, True):
      want = np.array([[ref.linear_cka(x, y, debiased) for y in ys] for x in xs])
      np.testing.assert_allclose(np.asarray(sim.stream_cka(state, debiased=debiased)), want, rtol=1e-5,
                                 atol=5e-6, err_msg=f"batch size {size}, debiased={debiased}")


def test_hsic_matches_the_full_data_hsic():
  xs, ys = _stacks(1, offset=3.0)
  state = sim.stream_init(xs[:, :10], ys[:, :10])
  for bx, by in _batches(xs, ys, 10):
    state = sim.stream_update(state, bx, by)
  for debiased in (False, True):
    full = jax.jit(sim.linear_hsic, static_argnums=(2, 3, 4))(xs, ys, debiased, "gram", 512)
    for name, got, want in zip(full._fields, sim.stream_hsic(state, debiased=debiased), full):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6, err_msg=name)


def test_row_wise_preprocessing_streams():
  xs, ys = _stacks(2)
  want = np.array([[ref.linear_cka(ref.preprocess(x, "l2"), ref.preprocess(y, "l2"), True) for y in ys]
                   for x in xs])
  got = sim.streaming_cka_matrix(_batches(xs, ys, 15), debiased=True, preprocess="l2")
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=5e-6)


def test_errors():
  xs, ys = _stacks(3)
  with pytest.raises(ValueError, match="first pass"):
    sim.stream_init(xs, ys, preprocess="standardize")
  with pytest.raises(ValueError, match="no batches"):
    sim.streaming_cka_matrix([])
  state = sim.stream_init(xs, ys)
  with pytest.raises(ValueError, match="stream expects"):
    sim.stream_update(state, xs[:, :, :-1], ys)
  with pytest.raises(ValueError, match="at least 4"):
    sim.stream_cka(sim.stream_update(state, xs[:, :3], ys[:, :3]), debiased=True)
