"""Closed-form maps: the ridge path against direct NumPy float64 solves, Procrustes against its definition."""
import numpy as np
import pytest

from xsim import transfer
from xsim.transfer import procrustes, ridge, splits

LAMBDAS = np.array([1e-2, 1.0, 30.0, 1e3])


def _data(seed=0, n=120, m=50, da=10, db=6, targets=3):
  rng = np.random.default_rng(seed)
  x_train, x_val = rng.normal(size=(n, da)), rng.normal(size=(m, da))
  w = rng.normal(size=(targets, da, db))
  y_train = np.einsum("na,tab->tnb", x_train, w) + 2.0 * rng.normal(size=(targets, n, db))
  y_val = np.einsum("na,tab->tnb", x_val, w) + 2.0 * rng.normal(size=(targets, m, db))
  return x_train, y_train, x_val, y_val


def _np_ridge(x, y, lam):
  return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def test_ridge_path_equals_direct_solve_for_every_lambda():
  x_train, y_train, x_val, y_val = _data()
  f32 = lambda a: a.astype(np.float32)
  path = ridge.ridge_path(f32(x_train), f32(y_train), f32(x_val), f32(y_val), LAMBDAS)
  for k, lam in enumerate(LAMBDAS):
    weights = np.asarray(ridge.ridge_weights(path, np.full(3, lam)))  # [T, db, da]: y = x W'
    for t in range(3):
      expected = _np_ridge(x_train, y_train[t], lam)
      np.testing.assert_allclose(weights[t].T, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
      sse = ((y_val[t] - x_val @ expected) ** 2).sum()
      np.testing.assert_allclose(path.val_sse[t, k], sse, rtol=2e-4)


def test_fit_ridge_picks_the_lambda_with_least_validation_error():
  x_train, y_train, x_val, y_val = _data(seed=1, n=40)  # few rows: the best lambda is well inside the grid
  penalties = LAMBDAS / 40
  weight, chosen, _ = ridge.fit_ridge(*(a.astype(np.float32) for a in (x_train, y_train, x_val, y_val)), penalties)
  for t in range(3):
    errors = [((y_val[t] - x_val @ _np_ridge(x_train, y_train[t], lam)) ** 2).sum() for lam in LAMBDAS]
    best = int(np.argmin(errors))
    np.testing.assert_allclose(chosen[t], penalties[best], rtol=1e-6)
    np.testing.assert_allclose(weight[t].T, _np_ridge(x_train, y_train[t], LAMBDAS[best]), rtol=1e-3, atol=1e-4)


def test_procrustes_matches_svd_solution_and_recovers_a_planted_rotation():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(200, 4))
  rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0][:4]  # [4, 6], orthonormal rows
  y = np.stack([2.5 * x @ rotation + 0.01 * rng.normal(size=(200, 6)), rng.normal(size=(200, 6))])
  kernel = np.swapaxes(procrustes.fit_procrustes(x.astype(np.float32), y.astype(np.float32)), 1, 2)  # y = x K
  np.testing.assert_allclose(kernel[0], 2.5 * rotation, atol=2e-3)
  for t in range(2):
    u, s, vt = np.linalg.svd(x.T @ y[t], full_matrices=False)
    scale = s.sum() / (x**2).sum()
    np.testing.assert_allclose(kernel[t], scale * u @ vt, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kernel[t] @ kernel[t].T, scale**2 * np.eye(4), atol=1e-5)
    # No other scaled orthogonal map fits better.
    residual = ((x @ kernel[t] - y[t]) ** 2).sum()
    for _ in range(20):
      other = np.linalg.qr(rng.normal(size=(6, 6)))[0][:4]
      best_scale = np.trace(other @ (x.T @ y[t]).T) / (x**2).sum()
      assert residual <= ((best_scale * x @ other - y[t]) ** 2).sum()


def _raw_features(rng, n, da, db=5):
  """Raw-activation-like rows: dimension scales log-spaced over 1e-2..1e2, three massive dimensions at 1e3, large
  means; every dimension carries the same share of the target, so the weights of the small ones matter."""
  scales = np.logspace(-2, 2, da)
  scales[[1, da // 2, da - 2]] = 1e3
  x = (rng.normal(size=(n, da)) + 3.0 * rng.normal(size=da)) * scales
  y = x @ (rng.normal(size=(da, db)) / scales[:, None]) + 0.3 * rng.normal(size=(n, db))
  return x.astype(np.float32), y.astype(np.float32)


def _float32_rows(x_train, y_train, x_val, y_val):
  """The rows ridge.py gets from maps.py: float32, centred with the (float64) training mean, training rows then
  centred exactly; one target layer."""
  x_mean, y_mean = x_train.astype(np.float64).mean(axis=0), y_train.astype(np.float64).mean(axis=0)
  centre = lambda a, mean: (a - mean.astype(np.float32)).astype(np.float32)
  return (splits.centered_rows(centre(x_train, x_mean)), splits.centered_rows(centre(y_train, y_mean))[None],
          centre(x_val, x_mean), centre(y_val, y_mean)[None])


def _float32_path(x_train, y_train, x_val, y_val, lambdas):
  return ridge.ridge_path(*_float32_rows(x_train, y_train, x_val, y_val), lambdas)


def _centred64(*arrays):
  """float64 copies of float32 rows, centred with the first array's training mean."""
  x_train, y_train, x_val, y_val = (a.astype(np.float64) for a in arrays)
  x_mean, y_mean = x_train.mean(axis=0), y_train.mean(axis=0)
  return x_train - x_mean, y_train - y_mean, x_val - x_mean, y_val - y_mean


# Tolerance: 1e-4 relative for these rows, whose condition number is ~1e5 (n > da; checked below). A float32 SVD
# alone errs by up to eps * kappa * (1 + kappa |R| / (s_1 |W|)) with eps = 1.2e-7 (ridge.py): ~1e-2 here, which is
# why ridge_weights refines. Refinement's floor is the float32 rounding of the residual X'(Y - XW), which errs in
# proportion to each column's own scale; that moves W by about eps times the condition number of the rows with
# columns scaled to unit norm (~10 here), ~1e-6. Targets the bound lets through unrefined are within ~1.5e-5.
@pytest.mark.parametrize("n, da", [(400, 40), (60, 120)])
@pytest.mark.parametrize("penalty", [1e-4 / 3000, 1e-2, 1.0])  # 1e-4 / 3000 per row: the published untuned ridge
def test_ridge_on_raw_features_matches_float64(n, da, penalty):
  rng = np.random.default_rng(int(da + 1e6 * penalty))
  x, y = _raw_features(rng, n + 200, da)
  parts = (x[:n], y[:n], x[n:], y[n:])
  x_train, y_train, x_val, y_val = _centred64(*parts)
  if n > da:
    assert np.linalg.cond(x_train) > 1e5
  lam = penalty * n
  path = _float32_path(*parts, [lam])
  weight = np.asarray(ridge.ridge_weights(path, [lam])[0], np.float64).T  # [da, db], y = x W
  expected = np.linalg.solve(x_train.T @ x_train + lam * np.eye(da), x_train.T @ y_train)
  relative = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
  assert relative(weight, expected) < 1e-4
  assert relative(x_val @ weight, x_val @ expected) < 1e-4


@pytest.mark.parametrize("n, da", [(400, 40), (60, 120)])
def test_ridge_with_a_vanishing_penalty_is_least_squares_on_raw_features(n, da):
  """n > da: ordinary least squares; n < da: the minimum-norm interpolant (np.linalg.lstsq's solution)."""
  x, y = _raw_features(np.random.default_rng(n), n + 50, da)
  parts = (x[:n], y[:n], x[n:], y[n:])
  x_train, y_train, _, _ = _centred64(*parts)
  lam = 1e-10 * n
  weight = np.asarray(ridge.ridge_weights(_float32_path(*parts, [lam]), [lam])[0], np.float64).T
  expected = np.linalg.lstsq(x_train, y_train, rcond=None)[0]
  assert np.linalg.norm(weight - expected) / np.linalg.norm(expected) < 1e-4  # argument above
  if n < da:
    np.testing.assert_allclose(x_train @ weight, y_train, atol=1e-4 * np.abs(y_train).max())  # interpolates


def test_fit_ridge_on_raw_features_picks_the_float64_penalty():
  rng = np.random.default_rng(7)
  penalties = np.array([1e-4 / 3000, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
  for n, da in [(300, 40), (60, 120)]:
    x, y = _raw_features(rng, n + 200, da)
    y += 3.0 * rng.normal(size=y.shape).astype(np.float32)  # best: the smallest penalty (n > da), the largest (n < da)
    parts = (x[:n], y[:n], x[n:], y[n:])
    x_train, y_train, x_val, y_val = _centred64(*parts)
    solve = lambda p: np.linalg.solve(x_train.T @ x_train + p * n * np.eye(da), x_train.T @ y_train)
    errors = np.array([((y_val - x_val @ solve(p)) ** 2).sum() for p in penalties])
    # The path's validation errors come from the SVD's weights (ridge.py). Their first-order error is
    # 2 eps kappa (m / n) |R| |R_val| / SSE relative, about 2e-2 at kappa ~ 1e5 with targets this noisy (measured:
    # 5e-5), so a best penalty that beats the runner-up by 5% is found by float32 and float64 alike.
    assert np.sort(errors)[1] > 1.05 * errors.min()
    best = int(np.argmin(errors))
    weight, chosen, _ = ridge.fit_ridge(*_float32_rows(*parts), penalties, num_rows=n)
    assert float(chosen[0]) == pytest.approx(penalties[best])
    expected = solve(penalties[best])
    assert np.linalg.norm(np.asarray(weight[0], np.float64).T - expected) / np.linalg.norm(expected) < 1e-4


@pytest.mark.parametrize("n, da", [(500, 40), (150, 120)])  # 300 and 90 training rows
def test_published_untuned_ridge_on_raw_activations_matches_float64(n, da):
  """Ridge(standardize=False) with the published penalty: ridge with an intercept on raw rows."""
  x, y = _raw_features(np.random.default_rng(da), n, da)
  penalty = 1e-4 / 3000
  fit = transfer.fit_linear_maps(x[None], y[None], transfer.Ridge([penalty], standardize=False))
  train = fit.split.train
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  x_mean, y_mean = x64[train].mean(axis=0), y64[train].mean(axis=0)
  xc, yc = x64[train] - x_mean, y64[train] - y_mean
  weight = np.linalg.solve(xc.T @ xc + penalty * len(train) * np.eye(da), xc.T @ yc)
  expected = (x64 - x_mean) @ weight  # predictions about the training mean of the target
  got = np.asarray(fit.predict(0, 0, x), np.float64) - y_mean
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4  # argued above test_ridge_on_raw_...
