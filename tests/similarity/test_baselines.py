"""Procrustes, SVCCA and RSA against NumPy/SciPy references and their invariances."""
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim


def _pair(seed, n=60, d1=8, d2=8, shared=True):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d1)) * np.geomspace(3.0, 0.1, d1) + 2.0
  y = rng.standard_normal((n, d2))
  if shared:
    y += x @ rng.standard_normal((d1, d2))
  return x.astype(np.float32), y.astype(np.float32)


def _orthogonal(d, seed):
  return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0].astype(np.float32)


@pytest.mark.parametrize("shared", [False, True])
def test_procrustes_matches_scipy(shared):
  x, y = _pair(0, shared=shared)
  np.testing.assert_allclose(float(sim.procrustes(x, y)), ref.procrustes(x, y), rtol=1e-5, atol=1e-6)


def test_procrustes_unequal_widths_and_properties():
  x, y = _pair(1, d2=8)
  y_wide = np.concatenate([y, np.zeros((60, 4), np.float32)], 1)  # zero padding: the partial-isometry case
  base = float(sim.procrustes(x, y))
  np.testing.assert_allclose(float(sim.procrustes(x, y_wide)), base, rtol=1e-5)
  np.testing.assert_allclose(float(sim.procrustes(x, x)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(sim.procrustes(y, x)), base, rtol=1e-5)
  np.testing.assert_allclose(float(sim.procrustes(5 * x @ _orthogonal(8, 2) - 1, y)), base, rtol=1e-4)
  assert abs(float(sim.procrustes(x @ np.diag(np.geomspace(0.1, 10, 8)).astype(np.float32), y)) - base) > 0.02


@pytest.mark.parametrize("keep, dims", [(0.99, None), (0.9, None), (0.99, 4)])
@pytest.mark.parametrize("shared", [False, True])
def test_svcca_matches_numpy(keep, dims, shared):
  x, y = _pair(3, d2=10, shared=shared)
  np.testing.assert_allclose(float(sim.svcca(x, y, keep=keep, dims=dims)), ref.svcca(x, y, keep, dims),
                             rtol=1e-4, atol=1e-5)


def test_svcca_properties():
  x, y = _pair(4)
  base = float(sim.svcca(x, y))
  np.testing.assert_allclose(float(sim.svcca(x, x)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(sim.svcca(y, x)), base, rtol=1e-4)
  np.testing.assert_allclose(float(sim.svcca(3 * x @ _orthogonal(8, 5) + 7, y)), base, rtol=1e-4)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean"])
@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_matches_scipy(rdm, compare):
  x, y = _pair(6, d2=11)
  np.testing.assert_allclose(float(sim.rsa(x, y, rdm=rdm, compare=compare)), ref.rsa(x, y, rdm, compare),
                             rtol=1e-4, atol=1e-5)


def test_rsa_properties():
  x, y = _pair(7)
  f = lambda a, b: float(sim.rsa(a, b, rdm="euclidean"))
  np.testing.assert_allclose(f(x, x), 1.0, rtol=1e-6)
  np.testing.assert_allclose(f(y, x), f(x, y), rtol=1e-6)
  np.testing.assert_allclose(f(4 * x @ _orthogonal(8, 8) + 1, y), f(x, y), rtol=1e-3)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: sim.svcca(x, y, keep=0.0), "keep"),
    (lambda x, y: sim.svcca(x, y, dims=9), "dims"),
    (lambda x, y: sim.rsa(x, y, rdm="cosine"), "rdm"),
    (lambda x, y: sim.procrustes(x, y[:5]), "same samples"),
])
def test_bad_input_raises(call, match):
  x, y = _pair(9)
  with pytest.raises(ValueError, match=match):
    call(x, y)
