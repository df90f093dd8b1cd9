"""Linear-map sweeps on planted data: optax vs closed-form ridge vs theory, floors, batching and sharding."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from xsim import transfer
from xsim.transfer import train

SIGMA = 0.6
OPTAX = dict(steps=600, batch_size=256, learning_rate=1e-2, eval_every=20, patience=10)


def _planted(seed=0, layers=(2, 3), n=3000, da=12, db=6, rank=None):
  """Source layer 0 drives every target layer (y = x W_j + noise); source layer 1 is unrelated noise.

  Returns source, target and the theoretical R^2 [Lb] of layer 0: mean over dims of |W_k|^2 / (|W_k|^2 + s^2).
  """
  rng = np.random.default_rng(seed)
  source = rng.normal(size=(layers[0], n, da))
  weights = rng.normal(size=(layers[1], da, db)) / np.sqrt(da)
  if rank is not None:
    weights = np.einsum("ar,trb->tab", rng.normal(size=(da, rank)), rng.normal(size=(layers[1], rank, db)))
    weights /= np.sqrt(da * rank)
  target = np.einsum("na,tab->tnb", source[0], weights) + SIGMA * rng.normal(size=(layers[1], n, db))
  signal = (weights**2).sum(axis=1)
  return source.astype(np.float32), target.astype(np.float32), (signal / (signal + SIGMA**2)).mean(axis=1)


@pytest.fixture(scope="module", name="planted")
def _planted_fixture():
  return _planted()


@pytest.fixture(scope="module", name="adam_fit")
def _adam_fit(planted):
  source, target, _ = planted
  return transfer.fit_linear_maps(source, target, transfer.Adam(**OPTAX))


def test_optax_maps_reach_ridge_and_theory(planted, adam_fit):
  source, target, theory = planted
  ridge_fit = transfer.fit_linear_maps(source, target, transfer.Ridge())
  adamw_fit = transfer.fit_linear_maps(source, target, transfer.AdamW(**OPTAX))
  np.testing.assert_allclose(adam_fit.r2[0], ridge_fit.r2[0], atol=1e-3)
  np.testing.assert_allclose(adamw_fit.r2[0], ridge_fit.r2[0], atol=1e-3)
  # Finite n costs about (1 - R^2) * da / n_train of held-out R^2, and the 600 test rows add sampling noise.
  np.testing.assert_allclose(ridge_fit.r2[0], theory, atol=0.02)
  # The unrelated source layer explains nothing: both fall back to (about) the mean predictor.
  assert np.all(np.abs(adam_fit.r2[1]) < 0.01) and np.all(np.abs(ridge_fit.r2[1]) < 0.01)


def _np_reduced_rank_r2(source, target, split, rank):
  """Held-out R^2 of reduced-rank regression (NumPy float64): OLS, then projection of the fitted values onto
  their top `rank` right singular vectors (Izenman 1975), on training-standardized data."""
  def standardized(a):
    a = a.astype(np.float64)
    return (a - a[split.train].mean(axis=0)) / a[split.train].std(axis=0)
  x, y = standardized(source), standardized(target)
  ols = np.linalg.lstsq(x[split.train], y[split.train], rcond=None)[0]
  top = np.linalg.svd(x[split.train] @ ols, full_matrices=False)[2][:rank]
  residual = y[split.test] - x[split.test] @ ols @ top.T @ top
  sst = ((y[split.test] - y[split.test].mean(axis=0)) ** 2).sum(axis=0)
  return np.mean(1 - (residual**2).sum(axis=0) / sst)


@pytest.mark.slow
def test_low_rank_maps_match_reduced_rank_regression():
  source, target, theory = _planted(seed=3, layers=(1, 2), rank=2)
  for rank in (1, 2):
    fit = transfer.fit_linear_maps(source, target, transfer.Adam(rank=rank, **OPTAX))
    expected = [_np_reduced_rank_r2(source[0], target[j], fit.split, rank) for j in range(2)]
    np.testing.assert_allclose(fit.r2[0], expected, atol=3e-3, err_msg=f"rank={rank}")
  np.testing.assert_allclose(fit.r2[0], theory, atol=0.02)  # rank 2 carries the whole planted relation


def test_procrustes_maps_recover_a_planted_rotation():
  rng = np.random.default_rng(4)
  source = rng.normal(size=(1, 2000, 5)).astype(np.float32)
  rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0][:5]
  target = (source[0] @ rotation + 0.1 * rng.normal(size=(2000, 8)))[None].astype(np.float32)
  fit = transfer.fit_linear_maps(source, target, transfer.Procrustes())
  signal = (rotation**2).sum(axis=0)
  np.testing.assert_allclose(fit.r2[0, 0], np.mean(signal / (signal + 0.01)), atol=0.02)
  assert np.isnan(fit.penalty[0, 0]) and fit.best_step[0, 0] == -1


def test_shuffled_pairs_and_mean_predictor_are_floors(planted, adam_fit):
  source, target, _ = planted
  for method, options in (("ridge", {}), ("adam", OPTAX)):
    shuffled = transfer.fit_shuffled_maps(source, target, transfer.solver(method, **options))
    assert np.all(shuffled.r2 <= 0.005), (method, shuffled.r2)
  floor = transfer.mean_predictor_r2(target)
  test = target[:, adam_fit.split.test].astype(np.float64)
  train_mean = target[:, adam_fit.split.train].astype(np.float64).mean(axis=1, keepdims=True)
  sst = ((test - test.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
  np.testing.assert_allclose(floor, (1 - ((test - train_mean) ** 2).sum(axis=1) / sst).mean(axis=1), rtol=1e-4)
  assert np.all(floor <= 0)


def test_predict_applies_the_map_in_raw_coordinates(planted, adam_fit):
  source, target, _ = planted
  x = source[0, :7].astype(np.float64)
  row = adam_fit.pair_index(0, 2)
  weight, bias = adam_fit.params["weight"][row], adam_fit.params["bias"][row]
  standardized = (x - adam_fit.source_mean[0]) / adam_fit.source_std[0]
  expected = (standardized @ weight.T + bias) * adam_fit.target_std[2] + adam_fit.target_mean[2]
  np.testing.assert_allclose(adam_fit.predict(0, 2, x), expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r"pair \(0, 5\) was not fit"):
    adam_fit.predict(0, 5, x)


def test_select_keeps_the_chosen_layers_maps_renumbered(planted, adam_fit):
  source, _, _ = planted
  source_layers, target_layers = [1, 0], [2, 0]
  sub = adam_fit.select(source_layers, target_layers)
  np.testing.assert_array_equal(sub.r2, adam_fit.r2[np.ix_(source_layers, target_layers)])
  assert sub.pairs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
  x = source[1, :5]
  for i, old_i in enumerate(source_layers):
    for j, old_j in enumerate(target_layers):
      np.testing.assert_array_equal(sub.predict(i, j, source[old_i, :5]), adam_fit.predict(old_i, old_j,
                                                                                            source[old_i, :5]))
  with pytest.raises(ValueError, match="must not repeat"):
    adam_fit.select([0, 0], [1])
  assert adam_fit.select([1], [2]).predict(0, 0, x).shape == (5, adam_fit.target_mean.shape[1])


def test_vmapped_sweep_equals_fitting_each_pair_alone(planted, adam_fit):
  source, target, _ = planted
  for i, j in [(0, 0), (0, 2), (1, 1)]:
    alone = transfer.fit_linear_maps(source, target, transfer.Adam(**OPTAX), pairs=[(i, j)])
    row = adam_fit.pair_index(i, j)
    np.testing.assert_allclose(alone.params["weight"][0], adam_fit.params["weight"][row], atol=1e-6)
    np.testing.assert_allclose(alone.r2[i, j], adam_fit.r2[i, j], atol=1e-6)
    assert alone.best_step[i, j] == adam_fit.best_step[i, j] and alone.penalty[i, j] == adam_fit.penalty[i, j]
    assert np.isnan(alone.r2).sum() == alone.r2.size - 1


def test_sweep_sharded_over_eight_devices_equals_one_device(planted, adam_fit):
  source, target, _ = planted
  mesh = Mesh(np.array(jax.devices()[:8]), ("pairs",))
  sharded = transfer.fit_linear_maps(source, target, transfer.Adam(**OPTAX), mesh=mesh)  # 3 targets padded to 8
  np.testing.assert_allclose(sharded.r2, adam_fit.r2, atol=1e-6)
  np.testing.assert_allclose(sharded.params["weight"], adam_fit.params["weight"], atol=1e-6)
  np.testing.assert_array_equal(sharded.best_step, adam_fit.best_step)
  ridge_single = transfer.fit_linear_maps(source, target, transfer.Ridge(chunk_size=2))
  ridge_sharded = transfer.fit_linear_maps(source, target, transfer.Ridge(), mesh=mesh)
  np.testing.assert_allclose(ridge_sharded.r2, ridge_single.r2, atol=1e-5)


def test_uneven_sweeps_and_shuffled_maps_sharded_over_eight_devices_equal_one_device():
  source, target, _ = _planted(seed=10, layers=(3, 5), n=400)
  mesh = Mesh(np.array(jax.devices()[:8]), ("pairs",))
  # 5, 2 and 1 target layers per source layer (8 of 15 pairs): every chunk is padded to 8 targets.
  pairs = [(0, j) for j in range(5)] + [(1, 1), (1, 3), (2, 4)]
  solver = transfer.Adam(steps=60, batch_size=128, eval_every=20)
  single = transfer.fit_linear_maps(source, target, solver, pairs=pairs)
  sharded = transfer.fit_linear_maps(source, target, solver, pairs=pairs, mesh=mesh)
  np.testing.assert_allclose(sharded.params["weight"], single.params["weight"], atol=1e-6)
  # NaN (pairs not fit) in the same places; R^2 reduces the test rows in another order on 8 devices.
  np.testing.assert_allclose(sharded.r2, single.r2, atol=2e-5)
  shuffled = transfer.fit_shuffled_maps(source, target, solver, pairs=pairs)  # compiled above: same shapes, settings
  shuffled_sharded = transfer.fit_shuffled_maps(source, target, solver, pairs=pairs, mesh=mesh)
  np.testing.assert_allclose(shuffled_sharded.params["weight"], shuffled.params["weight"], atol=1e-6)
  np.testing.assert_array_equal(shuffled_sharded.best_step, shuffled.best_step)
  # The targets are centred, so a bias's gradient is rounding noise, which Adam scales up to steps of the learning
  # rate: biases (and R^2 through them) differ at the 1e-3 level between layouts.
  np.testing.assert_allclose(shuffled_sharded.r2, shuffled.r2, atol=2e-4)


def test_optax_trainer_converges_to_the_ridge_solution_of_its_penalty():
  rng = np.random.default_rng(6)
  x, x_val = rng.normal(size=(300, 8)), rng.normal(size=(60, 8))
  x -= x.mean(axis=0)
  weights = rng.normal(size=(8, 5))
  y = x @ weights + rng.normal(size=(300, 5))
  y -= y.mean(axis=0)
  y_val = x_val @ weights + rng.normal(size=(60, 5))
  settings = train.TrainSettings(learning_rate=0.05, steps=1500, batch_size=300, eval_every=1500, patience=1)
  f32 = lambda a: np.asarray(a, np.float32)
  params, penalty, _ = jax.jit(train.fit_sgd, static_argnums=0)(settings, f32(x), f32(y[None]), f32(x_val),
                                                                 f32(y_val[None]), (0.2,))
  # penalty * |W|^2 / db next to the MSE is ridge with lambda = penalty * n_train.
  expected = np.linalg.solve(x.T @ x + 0.2 * 300 * np.eye(8), x.T @ y)
  np.testing.assert_allclose(params["weight"][0].T, expected, atol=1e-5)
  np.testing.assert_allclose(params["bias"][0], 0.0, atol=1e-5)
  assert float(penalty[0]) == pytest.approx(0.2)


@pytest.mark.parametrize("rank", [None, pytest.param(3, marks=pytest.mark.slow)])
def test_batch_statistics_and_row_gradients_train_identically(rank):
  rng = np.random.default_rng(9)
  x, x_val = rng.normal(size=(250, 10)).astype(np.float32), rng.normal(size=(50, 10)).astype(np.float32)
  y = rng.normal(size=(2, 250, 4)).astype(np.float32) + x[:, :4]
  y_val = rng.normal(size=(2, 50, 4)).astype(np.float32) + x_val[:, :4]
  fits = []
  for statistics in (True, False):
    settings = train.TrainSettings(steps=120, batch_size=60, eval_every=10, rank=rank, batch_statistics=statistics)
    fits.append(jax.jit(train.fit_sgd, static_argnums=0)(settings, x, y, x_val, y_val, (1e-3, 1e-1)))
  for name in fits[0][0]:
    np.testing.assert_allclose(fits[0][0][name], fits[1][0][name], atol=2e-5, err_msg=name)
  np.testing.assert_array_equal(fits[0][2], fits[1][2])


def test_minibatches_tile_the_training_rows():
  rows, schedule = train.minibatches(train.TrainSettings(steps=10, batch_size=30), 100)
  assert rows.shape == (3, 33) and len(np.unique(rows)) == 99 and rows.max() < 100
  np.testing.assert_array_equal(np.sort(schedule[:3]), [0, 1, 2])  # each epoch visits every batch once
  np.testing.assert_array_equal(np.sort(schedule[3:6]), [0, 1, 2])


def test_early_stopping_keeps_the_best_parameters():
  # More dims than training rows and no penalty: training to the end interpolates noise.
  source, target, _ = _planted(seed=7, layers=(1, 1), n=400, da=150, db=4)
  options = dict(penalties=(0.0,), steps=800, batch_size=64, learning_rate=1e-2)
  stopped = transfer.fit_linear_maps(source, target, transfer.Adam(eval_every=10, patience=3, **options))
  last = transfer.fit_linear_maps(source, target, transfer.Adam(eval_every=800, patience=1, **options))  # step 800's
  assert last.best_step[0, 0] == 800
  assert 0 < stopped.best_step[0, 0] < 400
  assert stopped.r2[0, 0] > last.r2[0, 0] + 0.03


@pytest.mark.parametrize("method, options, pairs, message", [
    ("lasso", {}, "all", "method='lasso'"),
    ("adam", {}, [(0, 3)], r"pair \(0, 3\) is out of range"),
    ("adam", {}, [(0, 1), (0, 1)], "more than once"),
    ("adam", {}, "diagonal", "pairs='diagonal'"),
    ("ridge", dict(rank=2), "all", "Ridge .*takes no option 'rank'"),
    ("ridge", dict(penalties=(0.0, 1.0)), "all", "positive for ridge"),
    ("adam", dict(rank=7), "all", r"rank=7 must lie in \[1, min\(da, db\)\]"),
    ("adam", dict(steps=0), "all", "steps=0"),
    ("adam", dict(chunk_size=0), "all", "chunk_size=0"),
])
def test_bad_options_raise_clear_errors(method, options, pairs, message):
  source, target, _ = _planted(seed=8, layers=(1, 3), n=50)
  with pytest.raises(ValueError, match=message):
    transfer.fit_linear_maps(source, target, transfer.solver(method, **options), pairs=pairs)


def test_solver_builds_the_record_of_a_method_and_refuses_options_of_other_solvers():
  assert transfer.solver("ridge", penalties=[0.1, 1]) == transfer.Ridge(penalties=(0.1, 1.0))
  assert transfer.solver("procrustes", standardize=False) == transfer.Procrustes(standardize=False)
  adamw = transfer.solver("adamw", steps=50, rank=2, chunk_size=4)
  assert type(adamw) is transfer.AdamW and (adamw.method, adamw.steps, adamw.rank, adamw.chunk_size) == (
      "adamw", 50, 2, 4)
  assert transfer.solver("adam") == transfer.Adam() != transfer.AdamW()
  # The record names its method and every option, so content keys built from it tell all settings apart.
  assert dataclasses.asdict(transfer.Adam())["method"] == "adam"
  assert dataclasses.asdict(transfer.Ridge())["penalties"] == transfer.solvers.RIDGE_PENALTIES
  with pytest.raises(ValueError, match=r"Procrustes \(method='procrustes'\) takes no option 'penalties'; its "
                     "options are standardize, chunk_size."):
    transfer.solver("procrustes", penalties=[1.0])
  with pytest.raises(ValueError, match=r"Ridge \(method='ridge'\) takes no option 'learning_rate'; its options "
                     "are standardize, chunk_size, penalties."):
    transfer.solver("ridge", learning_rate=0.1, penalties=[1.0])
  with pytest.raises(ValueError, match=r"Adam \(method='adam'\) takes no option 'method'"):
    transfer.solver("adam", method="adamw")
  with pytest.raises(TypeError, match="Ridge.*'rank'"):
    transfer.Ridge(rank=2)
  source, target, _ = _planted(seed=8, layers=(1, 3), n=50)
  with pytest.raises(ValueError, match="solver='ridge' is not a record"):
    transfer.fit_linear_maps(source, target, "ridge")


def test_bad_inputs_raise_clear_errors():
  source, target, _ = _planted(seed=8, layers=(1, 3), n=50)
  with pytest.raises(ValueError, match="same rows"):
    transfer.fit_linear_maps(source, target[:, :40], transfer.Adam())
  with pytest.raises(ValueError, match=r"shape \[layers, n, d\]"):
    transfer.fit_linear_maps(source[0], target, transfer.Adam())
  with pytest.raises(ValueError, match="procrustes needs da <= db"):
    transfer.fit_linear_maps(source, target, transfer.Procrustes())
  mesh = Mesh(np.array(jax.devices()[:8]), ("pairs",))
  with pytest.raises(ValueError, match="multiple of the mesh size 8"):
    transfer.fit_linear_maps(source, target, transfer.Ridge(chunk_size=4), mesh=mesh)


def test_unstandardized_ridge_is_least_squares_on_raw_features():
  """standardize=False with a vanishing penalty: ordinary least squares with an intercept (NumPy, float64)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 400, 6)) * np.array([1.0, 10.0, 0.1, 5.0, 1.0, 100.0])
  y = x[0] @ rng.normal(size=(6, 4)) + 3.0 + 0.1 * rng.normal(size=(400, 4))
  fit = transfer.fit_linear_maps(x.astype(np.float32), y[None].astype(np.float32),
                                 transfer.Ridge([1e-10], standardize=False))
  train = fit.split.train
  design = np.concatenate([x[0][train], np.ones((len(train), 1))], axis=1)
  coef = np.linalg.lstsq(design, y[train], rcond=None)[0]
  expected = np.concatenate([x[0], np.ones((400, 1))], axis=1) @ coef
  np.testing.assert_allclose(np.asarray(fit.predict(0, 0, x[0].astype(np.float32))), expected, rtol=1e-3, atol=2e-3)
  np.testing.assert_array_equal(fit.source_std, 1.0)


def test_unstandardized_ridge_penalizes_raw_weights():
  """With a real penalty, standardize=False is ridge on centred raw features: lambda = penalty x n_train."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(1, 300, 5)) * np.array([1.0, 20.0, 0.2, 3.0, 1.0])
  y = x[0] @ rng.normal(size=(5, 3)) + 0.5 * rng.normal(size=(300, 3))
  penalty = 0.5
  fit = transfer.fit_linear_maps(x.astype(np.float32), y[None].astype(np.float32),
                                 transfer.Ridge([penalty], standardize=False))
  train = fit.split.train
  xt, yt = x[0][train], y[train]
  xm, ym = xt.mean(0), yt.mean(0)
  w = np.linalg.solve((xt - xm).T @ (xt - xm) + penalty * len(train) * np.eye(5), (xt - xm).T @ (yt - ym))
  expected = (x[0] - xm) @ w + ym
  np.testing.assert_allclose(np.asarray(fit.predict(0, 0, x[0].astype(np.float32))), expected, rtol=1e-3, atol=2e-3)


def test_ridge_maps_from_fewer_rows_than_dims_are_stored_factored_and_equal_the_direct_solve():
  """41 training rows, 120 -> 100 dims: maps kept as up [db, r] @ down [r, da] with r = 40 (the rows centred exactly
  span 40 dims), predicting what the dense float64 ridge solution does (standardized, per-row penalty)."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 67, 120))
  y = np.einsum("lna,ab->lnb", x, rng.normal(size=(120, 100)) / 11) + 0.3 * rng.normal(size=(2, 67, 100))
  penalty = 0.05
  fit = transfer.fit_linear_maps(x.astype(np.float32), y.astype(np.float32), transfer.Ridge([penalty]))
  train = fit.split.train
  assert len(train) == 41 and "weight" not in fit.params
  assert fit.params["up"].shape == (4, 100, 40) and fit.params["down"].shape == (4, 40, 120)
  for i, j in ((0, 0), (1, 0), (1, 1)):
    xs, ys = x[i], y[j]
    xz = (xs - xs[train].mean(0)) / xs[train].std(0)
    yz = (ys - ys[train].mean(0)) / ys[train].std(0)
    xc, yc = xz[train] - xz[train].mean(0), yz[train] - yz[train].mean(0)
    w = np.linalg.solve(xc.T @ xc + penalty * len(train) * np.eye(120), xc.T @ yc)
    expected = (xz @ w) * ys[train].std(0) + ys[train].mean(0)
    np.testing.assert_allclose(np.asarray(fit.predict(i, j, x[i].astype(np.float32))), expected, atol=1e-4)
