"""Float32 linear CKA grids against float64 NumPy where float32 is hard: d >> n, tiny n, large offsets and
massive dimensions. Tolerance: 1e-5 absolute, for both paths unless stated.

The reference centers in float64 before its Grams: HSIC is shift invariant, and with an offset of 1e3 the
uncentered float64 Grams (entries ~1e8) would themselves cancel away the digits under test.
"""
import jax
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim

ATOL = 1e-5


def _want(xs, ys, debiased):
  c = lambda a: np.asarray(a, np.float64) - np.asarray(a, np.float64).mean(0)
  return np.array([[ref.linear_cka(c(x), c(y), debiased) for y in ys] for x in xs])


def _independent(seed, n, da, db, layers=2):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((layers, n, da)).astype(np.float32),
          rng.standard_normal((layers, n, db)).astype(np.float32))


def _offset(seed):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((2, 64, 100)) + 1000.0
  ys = rng.standard_normal((2, 64, 80)) - 500.0
  ys[0, :, :50] += xs[0, :, :50] - 1000.0  # one shared pair
  return xs.astype(np.float32), ys.astype(np.float32)


def _massive(seed):
  """A few dimensions ~1,000x the others (varying, and one on a large constant), as in LLM residual streams."""
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((2, 128, 256))
  ys = rng.standard_normal((2, 128, 300))
  xs[:, :, :2] *= 1000.0
  xs[:, :, 2] += 3000.0
  ys[:, :, 5] *= 2000.0
  ys[1] += 0.5 * np.concatenate([xs[1], xs[1, :, :44]], 1)
  return xs.astype(np.float32), ys.astype(np.float32)


CASES = {
    "d>>n": lambda seed: _independent(seed, 64, 2000, 1500),
    "offset": _offset,
    "massive": _massive,
}


@pytest.mark.parametrize("method, chunk_size", [("gram", 512), ("gram", 48), ("features", 512)])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_within_1e5_of_float64(case, debiased, method, chunk_size):
  xs, ys = CASES[case](0)
  got = np.asarray(sim.cka_matrix(xs, ys, debiased=debiased, method=method, chunk_size=chunk_size))
  np.testing.assert_allclose(got, _want(xs, ys, debiased), rtol=0, atol=ATOL)


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_n_gram_path(n, seed):
  """n = 4 or 8 rows of 2,000 dims: the debiased estimator's terms are ~d^2 and its value ~n d. Before the
  shifted zero-diagonal tiles the error was 1e-3 at n = 4; now it is below 3e-6 (the auto choice is gram)."""
  xs, ys = _independent(seed, n, 2000, 1000)
  for debiased in (False, True):
    got = np.asarray(sim.cka_matrix(xs, ys, debiased=debiased))
    np.testing.assert_allclose(got, _want(xs, ys, debiased), rtol=0, atol=ATOL)


def test_features_path_at_small_n_needs_d_near_n():
  """The features path sums |X'Y|_F^2, where the Gram diagonal cannot be taken out first: its error grows
  like rounding x d / n. It meets 1e-5 at n = 8 with d = 64 (below 1e-5 over seeds 0-5); at n = 8 with d =
  2,000 it misses by 10x, which is why choose_method takes it only for n > L d."""
  xs, ys = _independent(3, 8, 64, 67)
  got = np.asarray(sim.cka_matrix(xs, ys, debiased=True, method="features"))
  np.testing.assert_allclose(got, _want(xs, ys, True), rtol=0, atol=ATOL)
  assert sim.choose_method(1, 1, 8, 2000, 1000) == "gram"


@pytest.mark.parametrize("case", ["d>>n", "offset"])
def test_null_keeps_the_grid_numerics(case):
  """cka_matrix_null shares the gram path's statistics: each permuted grid is within 1e-5 of float64 too."""
  xs, ys = CASES[case](1)
  key = jax.random.PRNGKey(2)
  null = np.asarray(sim.cka_matrix_null(xs, ys, key=key, num_permutations=3, debiased=True, chunk_size=48))
  for grid, perm in zip(null, np.asarray(sim.permutations(key, 3, xs.shape[1]))):
    np.testing.assert_allclose(grid, _want(xs, ys[:, perm], True), rtol=0, atol=ATOL)
