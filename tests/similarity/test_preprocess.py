"""xsim.similarity.preprocess against NumPy, and the same option reaching every measure."""
import numpy as np
import pytest

import np_similarity_reference as ref
from xsim import similarity as sim
from xsim.similarity.preprocess import Preprocess, preprocess


def _data(seed=0, n=40, d=12):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
  x[:, 3] *= 50.0  # a massive-activation dimension
  x[5, 7] = 400.0
  return x.astype(np.float32)


@pytest.mark.parametrize("spec", [Preprocess("none"), Preprocess("center"), Preprocess("standardize"),
                                  Preprocess("clip", quantile=0.9), Preprocess("l2")])
def test_matches_numpy(spec):
  x = _data()
  want = ref.preprocess(x, spec.method, quantile=spec.quantile)
  np.testing.assert_allclose(np.asarray(preprocess(x, spec)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("outlier_by", ["max_abs", "variance"])
def test_drop_outliers_zeroes_the_dims_numpy_removes(outlier_by):
  x = _data()
  got = np.asarray(preprocess(x, Preprocess("drop_outliers", k=2, outlier_by=outlier_by)))
  dropped = np.flatnonzero(np.all(got == 0, axis=0))
  assert len(dropped) == 2
  assert 3 in dropped and (outlier_by == "variance" or 7 in dropped)
  np.testing.assert_allclose(np.delete(got, dropped, 1), ref.preprocess(x, "drop_outliers", k=2,
                                                                         outlier_by=outlier_by), rtol=1e-6)


def test_layers_are_treated_one_by_one():
  xs = np.stack([_data(0), 10 * _data(1)])
  got = np.asarray(preprocess(xs, "standardize"))
  for layer, g in zip(xs, got):
    np.testing.assert_allclose(g, ref.preprocess(layer, "standardize"), rtol=1e-5, atol=1e-5)


def test_constant_dims_and_zero_rows_stay_finite():
  x, y = _data(), _data()
  x[:, 0] = 2.0
  y[4] = 0.0
  assert np.all(np.asarray(preprocess(x, "standardize"))[:, 0] == 0.0)
  assert np.all(np.asarray(preprocess(y, "l2"))[4] == 0.0)


_MEASURES = [  # (xsim measure with a preprocess argument, NumPy reference on preprocessed data)
    (lambda x, y, p: sim.cka(x, y, debiased=True, preprocess=p), lambda x, y: ref.linear_cka(x, y, True)),
    (lambda x, y, p: sim.cka(x, y, kernel="rbf", preprocess=p), ref.rbf_cka),
    (lambda x, y, p: sim.mutual_knn(x, y, k=5, preprocess=p), lambda x, y: ref.mutual_knn(x, y, 5)),
    (lambda x, y, p: sim.rsa(x, y, rdm="euclidean", preprocess=p), lambda x, y: ref.rsa(x, y, "euclidean")),
    (lambda x, y, p: sim.cka_matrix(x[None], y[None], preprocess=p)[0, 0], ref.linear_cka),
    (lambda x, y, p: sim.procrustes(x, y, preprocess=p), ref.procrustes),
]
_SPECS = [Preprocess("standardize"), Preprocess("clip", quantile=0.95), Preprocess("drop_outliers", k=2)]


# Each measure with one option (cycling through them) keeps compilations few; the options are tested above.
@pytest.mark.parametrize("measure, reference, spec",
                         [(m, r, _SPECS[i % len(_SPECS)]) for i, (m, r) in enumerate(_MEASURES)])
def test_every_measure_applies_the_option(measure, reference, spec):
  x, y = _data(2), _data(3)
  want = reference(ref.preprocess(x, spec.method, quantile=spec.quantile, k=spec.k),
                   ref.preprocess(y, spec.method, quantile=spec.quantile, k=spec.k))
  np.testing.assert_allclose(float(measure(x, y, spec)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="zscore"), "unknown"), (dict(method="clip", quantile=1.5), "quantile"),
    (dict(method="drop_outliers", k=0), "k >= 1"), (dict(method="drop_outliers", k=1, outlier_by="l1"), "outlier_by")])
def test_bad_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Preprocess(**kwargs)


def test_dropping_every_dim_raises():
  with pytest.raises(ValueError, match="every one"):
    preprocess(_data()[:, :3], Preprocess("drop_outliers", k=3))
