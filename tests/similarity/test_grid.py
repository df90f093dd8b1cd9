"""similarity_grid and the statistics of the grid max against the per-pair measures and the generic resampling."""
import jax
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim

# Options small enough for n = 24 rows; the per-pair call each grid value must equal.
OPTIONS = {"mutual_knn": dict(k=4), "cknna": dict(k=4), "svcca": dict(keep=0.9), "rsa": dict(rdm="euclidean")}
PAIR = {
    "cka": lambda x, y, **o: sim.cka(x, y, **o),
    "cka_debiased": lambda x, y, **o: sim.cka(x, y, debiased=True, **o),
    "mutual_knn": sim.mutual_knn, "cknna": sim.cknna, "procrustes": sim.procrustes, "svcca": sim.svcca,
    "rsa": sim.rsa,
}


def _stacks(seed, la=3, lb=5, n=24, da=6, db=9):
  """ys[1] holds a noisy copy of xs[0] (a clearly similar pair among unrelated ones)."""
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((la, n, da)) * np.geomspace(3.0, 0.3, da) + 1.0
  ys = rng.standard_normal((lb, n, db))
  d = min(da, db)
  ys[1, :, :d] += 2.0 * xs[0, :, :d]
  return xs.astype(np.float32), ys.astype(np.float32)


def test_measures_listed():
  assert sim.GRID_MEASURES == ("cka", "cka_debiased", "mutual_knn", "cknna", "procrustes", "svcca", "rsa")


@pytest.mark.parametrize("measure", sim.GRID_MEASURES)
def test_grid_equals_per_pair(measure):
  xs, ys = _stacks(0)
  o = OPTIONS.get(measure, {})
  got = np.asarray(sim.similarity_grid(measure, xs, ys, preprocess="standardize", **o))
  want = np.array([[float(PAIR[measure](x, y, preprocess="standardize", **o)) for y in ys] for x in xs])
  if measure == "mutual_knn":
    np.testing.assert_array_equal(got, want)  # counts of shared neighbours: exact
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.unravel_index(got.argmax(), got.shape) == (0, 1)  # the planted pair


def test_grid_matches_numpy():
  xs, ys = _stacks(1)
  got = np.asarray(sim.similarity_grid("mutual_knn", xs, ys, k=5))
  np.testing.assert_allclose(got, [[ref.mutual_knn(x, y, 5) for y in ys] for x in xs], atol=1e-6)
  got = np.asarray(sim.similarity_grid("rsa", xs, ys, compare="pearson"))
  np.testing.assert_allclose(got, [[ref.rsa(x, y, "correlation", "pearson") for y in ys] for x in xs],
                             rtol=1e-4, atol=1e-5)


def test_procrustes_wide_layers():
  """d > n: each layer is reduced to U S (n x n) first; same values as the per-pair d1 x d2 product."""
  xs, ys = _stacks(2, n=12, da=30, db=17)
  got = np.asarray(sim.similarity_grid("procrustes", xs, ys))
  want = np.array([[float(sim.procrustes(x, y)) for y in ys] for x in xs])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("measure", ["cka_debiased", "mutual_knn", "cknna", "procrustes", "svcca", "rsa"])
def test_null_max_equals_generic_null(measure):
  """Summaries built once and permuted = every grid recomputed on permuted rows (the same permutations)."""
  xs, ys = _stacks(3)
  o, key = OPTIONS.get(measure, {}), jax.random.PRNGKey(4)
  fast = np.asarray(sim.grid_null_max(measure, xs, ys, key=key, num_permutations=6, **o))
  grid = sim.grid_measure(measure, **o)
  generic = np.asarray(sim.permutation_null(grid, xs, ys, key=key, num_permutations=6)).max((1, 2))
  np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-6)
  assert fast.shape == (6,)


def test_subsample_max_and_interval():
  """Subsamples of half the rows take half the neighbours (k = 4 of 24 rows -> 2 of 12: the same share), and the
  interval is the basic subsampling interval around the full-data max."""
  xs, ys = _stacks(5)
  key = jax.random.PRNGKey(6)
  grid_max = lambda k: lambda a, b: sim.similarity_grid("mutual_knn", a, b, k=k).max()
  got = np.asarray(sim.grid_subsample_max("mutual_knn", xs, ys, key=key, num_resamples=10, k=4))
  np.testing.assert_allclose(got, np.asarray(sim.subsample(grid_max(2), xs, ys, key=key, num_resamples=10)),
                             rtol=1e-5, atol=1e-6)
  index = np.asarray(sim.permutations(key, 10, 24))[:, :12]  # the documented rows: n // 2 of each permutation
  first = max(float(sim.mutual_knn(x[index[0]], y[index[0]], k=2)) for x in xs for y in ys)
  np.testing.assert_allclose(got[0], first, rtol=1e-5, atol=1e-6)
  low, high = sim.grid_max_ci("mutual_knn", xs, ys, key=key, num_resamples=10, k=4)
  want = sim.subsample_interval(grid_max(4)(xs, ys), got, 24)
  np.testing.assert_allclose([float(low), float(high)], [float(w) for w in want], rtol=1e-5, atol=1e-6)
  cka = sim.grid_subsample_max("cka", xs, ys, key=key, num_resamples=10)  # no k: rows only
  np.testing.assert_allclose(cka, sim.subsample(lambda a, b: sim.similarity_grid("cka", a, b).max(), xs, ys,
                                                key=key, num_resamples=10), rtol=1e-5, atol=1e-6)


def test_subsample_grids_are_the_grid_on_each_subsample():
  """grid_subsamples: the whole grid on the rows grid_subsample_max draws (its max is that max, bit for bit), each
  cell the float64 reference on those rows."""
  xs, ys = _stacks(5)
  key = jax.random.PRNGKey(6)
  grids = np.asarray(sim.grid_subsamples("cka_debiased", xs, ys, key=key, num_resamples=4))
  assert grids.shape == (4, len(xs), len(ys))
  np.testing.assert_array_equal(grids.max((1, 2)), sim.grid_subsample_max("cka_debiased", xs, ys, key=key,
                                                                          num_resamples=4))
  index = np.asarray(sim.permutations(key, 4, 24))[:, :12]
  for r in (0, 3):
    want = [[ref.linear_cka(np.float64(x[index[r]]), np.float64(y[index[r]]), debiased=True) for y in ys] for x in xs]
    np.testing.assert_allclose(grids[r], want, atol=1e-5)
  knn = np.asarray(sim.grid_subsamples("mutual_knn", xs, ys, key=key, num_resamples=4, k=4))
  np.testing.assert_allclose(knn[1, 2, 0], ref.mutual_knn(np.float64(xs[2][index[1]]), np.float64(ys[0][index[1]]), 2),
                             atol=1e-6)


@pytest.mark.slow
def test_neighbour_intervals_cover_the_mean_of_independent_draws():
  """With k scaled to the subsample, mutual k-NN's 95% interval covers the mean over independent datasets in most
  of 20 draws (18 of 20 measured); with a fixed k it covered 2."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(8, 64)), rng.normal(size=(8, 48))

  def draw():
    z = rng.normal(size=(384, 8))
    return ((z @ a + rng.normal(size=(384, 64))).astype(np.float32)[None],
            (z @ b + rng.normal(size=(384, 48))).astype(np.float32)[None])
  mean = np.mean([float(sim.similarity_grid("mutual_knn", *draw(), k=10).max()) for _ in range(40)])
  covered = 0
  for t in range(20):
    low, high = sim.grid_max_ci("mutual_knn", *draw(), key=jax.random.PRNGKey(t), num_resamples=100, k=10)
    covered += float(low) <= mean <= float(high)
  assert covered >= 16, covered


@pytest.mark.parametrize("call, match", [
    (lambda xs, ys: sim.similarity_grid("cosine", xs, ys), "unknown"),
    (lambda xs, ys: sim.similarity_grid("mutual_knn", xs, ys, keep=0.9), r"takes options \['k'\]"),
    (lambda xs, ys: sim.similarity_grid("mutual_knn", xs, ys, k=24), "neighbours"),
    (lambda xs, ys: sim.similarity_grid("svcca", xs, ys, keep=0.0), "keep"),
    (lambda xs, ys: sim.similarity_grid("svcca", xs, ys, dims=7), "dims"),
    (lambda xs, ys: sim.similarity_grid("rsa", xs, ys, rdm="cosine"), "rdm"),
    (lambda xs, ys: sim.similarity_grid("cka", xs, ys, chunk_size=0), "chunk_size"),
    (lambda xs, ys: sim.similarity_grid("cknna", xs[:, :3], ys[:, :3], k=1), "at least 4"),
    (lambda xs, ys: sim.similarity_grid("procrustes", xs[0], ys), r"\[layers, n, d\]"),
    (lambda xs, ys: sim.grid_max_ci("mutual_knn", xs, ys, key=jax.random.PRNGKey(0), k=24), "neighbours"),
    (lambda xs, ys: sim.grid_null_max("rsa", xs, ys, key=jax.random.PRNGKey(0), num_permutations=0), "positive"),
])
def test_bad_input_raises(call, match):
  xs, ys = _stacks(7)
  with pytest.raises(ValueError, match=match):
    call(xs, ys)
