"""Closed-form maps: the ridge path against direct NumPy float64 solves, Procrustes against its definition."""
import numpy as np

from xsim.transfer import procrustes, ridge

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
  weight, chosen = ridge.fit_ridge(*(a.astype(np.float32) for a in (x_train, y_train, x_val, y_val)), penalties)
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
