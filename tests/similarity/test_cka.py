"""CKA (linear, RBF, minibatch) and the all-pairs cka_matrix against NumPy float64 and known properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import np_similarity_reference as ref
from xsim import similarity as sim
from xsim.similarity.cka import choose_method

# float32 against float64: relative 1e-5, with an absolute floor for values near 0.
F32 = dict(rtol=1e-5, atol=2e-6)


def _pair(seed, n=48, d1=10, d2=14, shared=True, offset=0.0):
  """Random features; with `shared`, y holds a noisy linear image of x (CKA well above 0)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d1)) + offset
  y = rng.standard_normal((n, d2))
  if shared:
    y += 2.0 * x @ rng.standard_normal((d1, d2)) / np.sqrt(d1)
  return x.astype(np.float32), y.astype(np.float32)


def _stacks(seed, la=3, lb=4, n=40, da=9, db=13):
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((la, n, da))
  ys = rng.standard_normal((lb, n, db))
  ys[1, :, :da] += 1.5 * xs[2]  # one strongly shared pair among unrelated ones
  ys[-1, :, :da] += 0.3 * xs[0]
  return xs.astype(np.float32), ys.astype(np.float32)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_matches_numpy(debiased, shared):
  x, y = _pair(0, shared=shared, offset=3.0)
  np.testing.assert_allclose(float(sim.cka(x, y, debiased=debiased)), ref.linear_cka(x, y, debiased), **F32)


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_matches_numpy(debiased):
  x, y = _pair(1)
  for bandwidth in (0.5, 1.0):
    np.testing.assert_allclose(float(sim.cka(x, y, kernel="rbf", debiased=debiased, bandwidth=bandwidth)),
                               ref.rbf_cka(x, y, bandwidth, debiased), **F32)


def test_float64_matches_numpy_tightly():
  x, y = _pair(2, offset=5.0)
  with jax.enable_x64(True):
    got = sim.cka(x, y, debiased=True, dtype=jnp.float64)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), ref.linear_cka(x, y, True), rtol=1e-10)


@pytest.mark.parametrize("kernel, debiased", [
    ("linear", False), ("linear", True), ("rbf", False), pytest.param("rbf", True, marks=pytest.mark.slow)])
def test_identity_symmetry_and_invariances(kernel, debiased):
  x, y = _pair(3)
  f = lambda a, b: float(sim.cka(a, b, kernel=kernel, debiased=debiased))
  np.testing.assert_allclose(f(x, x), 1.0, rtol=1e-5)
  base = f(x, y)
  np.testing.assert_allclose(f(y, x), base, rtol=1e-5)
  q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((x.shape[1], x.shape[1])))
  np.testing.assert_allclose(f((x @ q).astype(np.float32), y), base, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(f(7.5 * x, y), base, rtol=1e-4, atol=1e-6)  # RBF: the median bandwidth scales too
  np.testing.assert_allclose(f(x + 4.0, y), base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_not_invariant_to_general_invertible_maps(debiased):
  x, y = _pair(5)
  a = np.diag(np.geomspace(0.05, 20.0, x.shape[1])) @ np.random.default_rng(6).standard_normal((x.shape[1],) * 2)
  assert abs(np.linalg.det(a)) > 1e-6
  assert abs(float(sim.cka(x @ a.astype(np.float32), y, debiased=debiased)) - float(sim.cka(x, y, debiased=debiased))) > 0.05


def test_debiased_near_zero_when_d_much_larger_than_n():
  """Murphy et al. 2024: biased CKA of independent data is large when d >> n; the debiased one is not."""
  x, y = _pair(7, n=32, d1=2000, d2=1500, shared=False)
  biased, debiased = float(sim.cka(x, y)), float(sim.cka(x, y, debiased=True))
  assert biased > 0.8
  assert abs(debiased) < 0.05


def test_not_clamped_debiased_goes_negative():
  values = np.asarray(sim.cka_matrix(*_stacks(8, la=6, lb=6), debiased=True))
  assert values.min() < 0.0


@pytest.mark.parametrize("method, chunk_size, debiased", [
    ("gram", 7, False), ("gram", 7, True), ("gram", 512, True), ("features", 512, False), ("features", 7, True)])
def test_matrix_equals_per_pair(method, chunk_size, debiased):
  xs, ys = _stacks(9)
  got = np.asarray(sim.cka_matrix(xs, ys, debiased=debiased, method=method, chunk_size=chunk_size))
  want = np.array([[ref.linear_cka(x, y, debiased) for y in ys] for x in xs])
  np.testing.assert_allclose(got, want, **F32)
  assert got[2, 1] > 0.5  # the planted pair
  per_pair = np.array([[float(sim.cka(x, y, debiased=debiased)) for y in ys] for x in xs])
  np.testing.assert_allclose(got, per_pair, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, axis_type", [
    ("gram", AxisType.Explicit), ("features", AxisType.Explicit),
    pytest.param("gram", AxisType.Auto, marks=pytest.mark.slow),
    pytest.param("features", AxisType.Auto, marks=pytest.mark.slow)])
def test_matrix_sharded_on_8_devices(method, axis_type):
  devices = jax.devices()[:8]
  assert len(devices) == 8, "tests/conftest.py forces 8 CPU devices"
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(axis_type,) * 2, devices=devices)
  xs, ys = _stacks(10, la=5, lb=3, n=37)  # 5 layers and 37 rows do not split evenly over 8 devices
  got = sim.cka_matrix(xs, ys, debiased=True, method=method, chunk_size=8, mesh=mesh)
  want = np.array([[ref.linear_cka(x, y, True) for y in ys] for x in xs])
  np.testing.assert_allclose(np.asarray(got), want, **F32)


def test_choose_method_by_flops():
  assert choose_method(24, 24, 4096, 1024, 2048) == "gram"
  assert choose_method(24, 24, 200_000, 64, 64) == "features"
  xs, ys = _stacks(11, n=400, da=3, db=4)  # n >> L d: the feature path
  np.testing.assert_allclose(np.asarray(sim.cka_matrix(xs, ys, method="auto")),
                             np.asarray(sim.cka_matrix(xs, ys, method="gram")), **F32)


@pytest.mark.parametrize("batch_size, debiased", [(8, True), (20, False)])
def test_minibatch_matches_reference_estimator(batch_size, debiased):
  xs, ys = _stacks(12)
  got = np.asarray(sim.minibatch_cka_matrix(xs, ys, batch_size=batch_size, debiased=debiased))
  want = np.array([[ref.minibatch_cka(x, y, batch_size, debiased) for y in ys] for x in xs])
  np.testing.assert_allclose(got, want, **F32)
  np.testing.assert_allclose(float(sim.minibatch_cka(xs[2], ys[1], batch_size=batch_size, debiased=debiased)),
                             want[2, 1], **F32)


def test_minibatch_differs_from_full_data_value():
  x, y = _pair(13, n=48)
  assert abs(float(sim.minibatch_cka(x, y, batch_size=8)) - float(sim.cka(x, y, debiased=True))) > 1e-3


@pytest.mark.parametrize("call, match", [
    (lambda x, y: sim.cka(x, y[:-1]), "same samples"),
    (lambda x, y: sim.cka(x[None], y), r"\[n, d\]"),
    (lambda x, y: sim.cka_matrix(x, y), r"\[layers, n, d\]"),
    (lambda x, y: sim.cka(x, y, kernel="poly"), "kernel"),
    (lambda x, y: sim.cka(x[:3], y[:3], debiased=True), "at least 4"),
    (lambda x, y: sim.cka(x, y, kernel="rbf", bandwidth=0.0), "bandwidth"),
    (lambda x, y: sim.cka_matrix(x[None], y[None], method="svd"), "method"),
    (lambda x, y: sim.cka_matrix(x[None], y[None], chunk_size=0), "chunk_size"),
    (lambda x, y: sim.cka(x, y, dtype=jnp.float16), "float32 or float64"),
    (lambda x, y: sim.minibatch_cka(x, y, batch_size=7), "divide"),
])
def test_bad_input_raises(call, match):
  x, y = _pair(14)
  with pytest.raises(ValueError, match=match):
    call(x, y)


def test_float64_without_x64_raises():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is on in this session")
  x, y = _pair(15)
  with pytest.raises(ValueError, match="enable_x64"):
    sim.cka(x, y, dtype=jnp.float64)
