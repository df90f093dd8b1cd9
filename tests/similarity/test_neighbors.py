"""Mutual k-NN alignment and CKNNA (Huh et al. 2024) against NumPy references."""
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim


def _pair(seed, n=40, d1=8, d2=12, shared=True):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d1))
  y = rng.standard_normal((n, d2))
  if shared:
    y += 2.0 * x @ rng.standard_normal((d1, d2)) / np.sqrt(d1)
  return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("k", [1, 5])
def test_mutual_knn_matches_numpy(shared, k):
  x, y = _pair(0, shared=shared)
  assert float(sim.mutual_knn(x, y, k=k)) == pytest.approx(ref.mutual_knn(x, y, k), abs=1e-6)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("debiased", [False, True])
def test_cknna_matches_numpy(shared, debiased):
  x, y = _pair(1, shared=shared)
  np.testing.assert_allclose(float(sim.cknna(x, y, k=6, debiased=debiased)), ref.cknna(x, y, 6, debiased),
                             rtol=1e-5, atol=2e-6)


def test_properties():
  x, y = _pair(2)
  q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((8, 8)))
  xq = (3.0 * x @ q).astype(np.float32)
  assert float(sim.mutual_knn(x, x, k=5)) == 1.0
  np.testing.assert_allclose(float(sim.cknna(x, x, k=5)), 1.0, rtol=1e-5)
  assert float(sim.mutual_knn(x, y, k=5)) == pytest.approx(float(sim.mutual_knn(y, x, k=5)))
  assert float(sim.mutual_knn(xq, y, k=5)) == pytest.approx(float(sim.mutual_knn(x, y, k=5)))
  np.testing.assert_allclose(float(sim.cknna(xq, y, k=5)), float(sim.cknna(x, y, k=5)), rtol=1e-4)
  # Shared structure aligns neighbourhoods far beyond chance (k / (n - 1)).
  assert float(sim.mutual_knn(x, y, k=5)) > 3 * 5 / 39


def test_bad_k_raises():
  x, y = _pair(4)
  with pytest.raises(ValueError, match="neighbours"):
    sim.mutual_knn(x, y, k=40)
  with pytest.raises(ValueError, match="neighbours"):
    sim.cknna(x, y, k=0)
