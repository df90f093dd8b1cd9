"""Grids, nulls and intervals split over 8 forced CPU devices (tests/conftest.py) equal the single-device ones.

Meshes 8 x 1 and 4 x 2 (xsim.sharding.make_mesh, auto axes) and one with explicit axes; 3 x
layers, 5 y layers and 10 resamples do not split evenly over 8 devices. Tolerance: float32 (rtol 1e-5).
"""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from xsim import similarity as sim
from xsim.sharding import make_mesh

F32 = dict(rtol=1e-5, atol=1e-6)
OPTIONS = {"mutual_knn": dict(k=4), "cknna": dict(k=4), "svcca": dict(dims=3)}


def _mesh(shape):
  assert len(jax.devices()) >= 8, "tests/conftest.py forces 8 CPU devices"
  if shape == "explicit":
    return jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Explicit,) * 2, devices=jax.devices()[:8])
  return make_mesh(*shape)


def _stacks(seed, la=3, lb=5, n=24, da=6, db=9):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((la, n, da))
  ys = rng.standard_normal((lb, n, db))
  ys[2, :, :da] += 1.5 * xs[1]
  return xs.astype(np.float32), ys.astype(np.float32)


@pytest.mark.parametrize("measure, shape", [(m, (4, 2)) for m in sim.GRID_MEASURES] + [
    ("mutual_knn", (8, 1)), ("cka_debiased", (8, 1)), ("rsa", "explicit"), ("cka", "explicit")])
def test_grid(measure, shape):
  xs, ys = _stacks(0)
  o = OPTIONS.get(measure, {})
  single = np.asarray(sim.similarity_grid(measure, xs, ys, **o))
  np.testing.assert_allclose(np.asarray(sim.similarity_grid(measure, xs, ys, mesh=_mesh(shape), **o)), single, **F32)


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), "explicit"])
def test_cka_null(shape):
  xs, ys = _stacks(1)
  kw = dict(key=jax.random.PRNGKey(2), num_permutations=10, chunk_size=7)  # 4 x 4 tiles, 10 on or above the diagonal
  single = np.asarray(sim.cka_matrix_null(xs, ys, **kw))
  np.testing.assert_allclose(np.asarray(sim.cka_matrix_null(xs, ys, mesh=_mesh(shape), **kw)), single, **F32)


@pytest.mark.parametrize("measure, shape", [("mutual_knn", (4, 2)), ("procrustes", (8, 1)), ("cka", (4, 2))])
def test_grid_null_max(measure, shape):
  xs, ys = _stacks(3)
  kw = dict(key=jax.random.PRNGKey(4), num_permutations=10, **OPTIONS.get(measure, {}))
  single = np.asarray(sim.grid_null_max(measure, xs, ys, **kw))
  np.testing.assert_allclose(np.asarray(sim.grid_null_max(measure, xs, ys, mesh=_mesh(shape), **kw)), single, **F32)


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_subsample_interval(shape):
  """The generic resampling splits its resamples over the devices: a Python measure, as the runner passes."""
  xs, ys = _stacks(5)
  key = jax.random.PRNGKey(6)
  grid_max = lambda a, b: sim.cka_matrix(a, b, debiased=True).max()
  single = sim.subsample_ci(grid_max, xs, ys, key=key, num_resamples=10)
  split = sim.subsample_ci(grid_max, xs, ys, key=key, num_resamples=10, mesh=_mesh(shape))
  np.testing.assert_allclose(np.asarray(split), np.asarray(single), **F32)


def test_permutation_null():
  xs, ys = _stacks(7)
  mesh, key, grid = _mesh((4, 2)), jax.random.PRNGKey(8), sim.grid_measure("rsa")
  single = sim.permutation_null(grid, xs, ys, key=key, num_permutations=10)
  np.testing.assert_allclose(np.asarray(sim.permutation_null(grid, xs, ys, key=key, num_permutations=10, mesh=mesh)),
                             np.asarray(single), **F32)


def test_grid_max_interval():
  xs, ys = _stacks(9)
  mesh, key = _mesh((4, 2)), jax.random.PRNGKey(10)
  single = sim.grid_max_ci("mutual_knn", xs, ys, key=key, num_resamples=10, k=3)
  split = sim.grid_max_ci("mutual_knn", xs, ys, key=key, num_resamples=10, k=3, mesh=mesh)
  np.testing.assert_allclose(np.asarray(split), np.asarray(single), **F32)
