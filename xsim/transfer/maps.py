"""Linear maps from every source layer to every target layer: the sweep driver and its result.

The La x Lb sweep is cut into chunks of pairs that share one source layer (at most `chunk_size` target layers
each, padded to that size so one compiled function serves every chunk). A chunk moves one source layer and its
target layers to the device(s), standardizes them with training-row statistics, fits every pair at once (the
optax trainer, closed-form ridge or Procrustes) and scores the held-out rows. With a mesh, a chunk's target
axis is sharded over all its devices. Memory per chunk: chunk_size * n * db floats of targets (the optax
trainer's batch statistics add at most twice that, see train.py; ridge's refinement of ill-conditioned rows adds
one residual that size), plus for the optax methods 4 * chunk_size * len(penalties) copies of the parameters
(params, two Adam moments, best).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xsim.transfer import checkpoint, metrics, procrustes, ridge, solvers, splits, train


@dataclasses.dataclass(frozen=True, eq=False)
class LinearMapFit:
  """Fitted maps of a sweep and their held-out scores.

  Maps act in standardized coordinates (training-row mean and std of each layer); `predict` takes and returns
  raw activations. Entries of pairs that were not fit are NaN (r2, penalty) or -1 (best_step).
  """
  method: str
  r2: np.ndarray  # [La, Lb] test-row R^2, averaged over target dims
  penalty: np.ndarray  # [La, Lb] penalty chosen on the validation rows (NaN for procrustes)
  best_step: np.ndarray  # [La, Lb] optimizer step of the kept parameters (-1 for closed forms)
  pairs: np.ndarray  # [P, 2] (source layer, target layer), sorted
  split: splits.Split
  source_mean: np.ndarray  # [La, da] training-row statistics (NaN for layers in no pair)
  source_std: np.ndarray  # [La, da]
  target_mean: np.ndarray  # [Lb, db]
  target_std: np.ndarray  # [Lb, db]
  params: dict  # "weight" [P, db, da] or factored W = up down ("up" [P, db, r], "down" [P, r, da]: optax maps of a
  #               given rank, ridge maps from fewer training rows than dims) and "bias" [P, db], in the order of
  #               `pairs`, y = x W' + bias
  restored_chunks: tuple  # chunk indices read back from checkpoint_dir instead of fit

  def pair_index(self, i: int, j: int) -> int:
    """Row of pair (i, j) in `pairs` and `params`."""
    hits = np.flatnonzero((self.pairs[:, 0] == i) & (self.pairs[:, 1] == j))
    if hits.size == 0:
      raise ValueError(f"pair ({i}, {j}) was not fit; fit it by including it in `pairs`.")
    return int(hits[0])

  def select(self, source_layers, target_layers) -> "LinearMapFit":
    """The maps between the given source and target layer positions only, renumbered 0.. in the given order
    (pairs between them that were not fit stay unfit), e.g. to fit probes on a few layers of each model."""
    source_layers, target_layers = np.asarray(source_layers, np.int64), np.asarray(target_layers, np.int64)
    new_i = {int(i): k for k, i in enumerate(source_layers)}
    new_j = {int(j): k for k, j in enumerate(target_layers)}
    if len(new_i) != len(source_layers) or len(new_j) != len(target_layers):
      raise ValueError("source_layers and target_layers must not repeat a layer.")
    kept = [r for r, (i, j) in enumerate(self.pairs) if int(i) in new_i and int(j) in new_j]
    pairs = np.array([(new_i[int(self.pairs[r, 0])], new_j[int(self.pairs[r, 1])]) for r in kept],
                     np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    rows = np.asarray(kept, np.int64)[order]
    grid = np.ix_(source_layers, target_layers)
    params = jax.tree_util.tree_map(lambda leaf: leaf[rows], self.params)
    return dataclasses.replace(
        self, r2=self.r2[grid], penalty=self.penalty[grid], best_step=self.best_step[grid], pairs=pairs[order],
        source_mean=self.source_mean[source_layers], source_std=self.source_std[source_layers],
        target_mean=self.target_mean[target_layers], target_std=self.target_std[target_layers], params=params)

  def predict(self, i: int, j: int, x):
    """Maps raw source-layer-i activations x: [m, da] to raw target-layer-j activations [m, db]."""
    params = self._pair_params(i, j, x)
    mapped = train.apply_map(params, splits.standardize(x, self.source_mean[i], self.source_std[i]))
    return mapped * self.target_std[j] + self.target_mean[j]

  def map_direction(self, i: int, j: int, vectors):
    """Maps raw source-layer-i directions vectors: [m, da] (e.g. steering vectors) to the raw target-layer-j
    directions they move a prediction by, [m, db]: the linear part of the affine map, predict(x + v) - predict(x)
    for any x, exact for full and factored weights."""
    params = self._pair_params(i, j, vectors)
    linear = dict(params, bias=jnp.zeros_like(params["bias"]))
    return train.apply_map(linear, jnp.asarray(vectors, jnp.float32) / self.source_std[i]) * self.target_std[j]

  def _pair_params(self, i: int, j: int, x) -> dict:
    """The parameters of pair (i, j) (leaves without the pair axis), after checking x: [m, da]."""
    row = self.pair_index(i, j)
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, self.source_mean.shape[1])
    return jax.tree_util.tree_map(lambda leaf: leaf[row], self.params)


def fit_linear_maps(source, target, solver: solvers.Solver, *, pairs: Union[str, Sequence] = "all",
                    val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                    mesh: Optional[Mesh] = None, checkpoint_dir: Optional[str] = None) -> LinearMapFit:
  """Fits an affine map from each source layer to each target layer and scores it on held-out rows.

  Args:
    source: [La, n, da] activations of the source model (NumPy or JAX).
    target: [Lb, n, db] activations of the target model; row r of both describes the same input.
    solver: a record of solvers.py: Adam / AdamW (optax, minibatches, early stopping; see train.py), Ridge
      (closed form, whole penalty path) or Procrustes (scaled orthogonal, needs da <= db); solvers.solver builds
      one from a method name. Penalties are searched on the validation rows, per-row units (see ridge.fit_ridge).
    pairs: "all" or a sequence of (source layer, target layer).
    val_fraction, test_fraction, seed: the row split (splits.make_split); the penalty and early stopping use
      the validation rows, `r2` the test rows. The seed also seeds the optax trainer.
    mesh: shard each chunk's target axis over all devices of this mesh.
    checkpoint_dir: save each finished chunk here and, on a rerun, read finished chunks back (checked against
      their SHA-256; a damaged chunk is logged and fit again).

  Returns:
    LinearMapFit.
  """
  splits.check_layers(source, "source")
  splits.check_layers(target, "target")
  (num_source, n, da), (num_target, n_target, db) = source.shape, target.shape
  if n != n_target:
    raise ValueError(f"source and target must hold the same rows: source has n={n}, target n={n_target}.")
  settings = _method_settings(solver, da, db, seed)
  penalties = getattr(solver, "penalties", ())  # Procrustes takes none
  pairs = _parse_pairs(pairs, num_source, num_target)
  devices = 1 if mesh is None else mesh.size
  chunk_size = solver.chunk_size
  if chunk_size is None:
    widest = np.bincount(pairs[:, 0]).max()
    chunk_size = -(-widest // devices) * devices
  if chunk_size < 1 or chunk_size % devices:
    raise ValueError(f"chunk_size={chunk_size} must be a positive multiple of the mesh size {devices}.")

  split = splits.make_split(n, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  # Only layers that appear in `pairs` are read; the others keep NaN statistics.
  source_mean, source_std = splits.layer_moments(source, split.train, "source", np.unique(pairs[:, 0]))
  target_mean, target_std = splits.layer_moments(target, split.train, "target", np.unique(pairs[:, 1]))
  if not solver.standardize:  # the published protocol: centred (ridge's intercept) but unscaled features
    source_std, target_std = np.ones_like(source_std), np.ones_like(target_std)
  store = None
  if checkpoint_dir is not None:
    store = checkpoint.ChunkStore(checkpoint_dir, {
        "layout": "y = x weight' + bias, weight [db, da] or up [db, r] @ down [r, da]", "method": solver.method,
        "penalties": list(penalties),
        "train": None if settings is None else dataclasses.asdict(settings), "pairs": pairs.tolist(),
        "chunk_size": int(chunk_size), "split": [val_fraction, test_fraction, seed],
        "shapes": [num_source, num_target, n, da, db],
        "data": checkpoint.fingerprint(source_mean, source_std, target_mean, target_std)})

  fit_chunk = _chunk_function(solver.method, settings, penalties, mesh)
  results, restored = [], []
  for index, (layer, rows) in enumerate(_plan_chunks(pairs, chunk_size)):
    result = None if store is None else store.load(index, pairs[rows])
    if result is not None:
      results.append(result)
      restored.append(index)
      continue
    targets = np.resize(pairs[rows, 1], chunk_size)  # padding repeats real targets; dropped below
    out = fit_chunk(source[layer], _put(target[targets], mesh), (source_mean[layer], source_std[layer]),
                    (_put(target_mean[targets], mesh), _put(target_std[targets], mesh)),
                    (split.train, split.val, split.test))
    result = jax.tree_util.tree_map(lambda a: np.asarray(a)[:len(rows)], out)
    if store is not None:
      store.save(index, pairs[rows], result)
    results.append(result)

  merged = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *results)
  table = {name: np.full((num_source, num_target), fill, dtype)
           for name, fill, dtype in (("r2", np.nan, np.float32), ("penalty", np.nan, np.float32),
                                     ("best_step", -1, np.int32))}
  for name, values in table.items():
    values[pairs[:, 0], pairs[:, 1]] = merged[name]
  return LinearMapFit(method=solver.method, **table, pairs=pairs, split=split, source_mean=source_mean,
                      source_std=source_std, target_mean=target_mean, target_std=target_std,
                      params=merged["params"], restored_chunks=tuple(restored))


def _method_settings(solver: solvers.Solver, da: int, db: int, seed: int) -> Optional[train.TrainSettings]:
  """Checks the solver against the layers' widths; returns the optax trainer's settings (None for closed forms)."""
  if not isinstance(solver, tuple(solvers.SOLVERS.values())):
    raise ValueError(f"solver={solver!r} is not a record of {solvers.METHODS}; build one with "
                     "transfer.solver(method, **options) or e.g. transfer.Ridge().")
  if isinstance(solver, solvers.Procrustes) and da > db:
    raise ValueError(f"procrustes needs da <= db for an orthogonal map, got da={da}, db={db}; use "
                     "Ridge or a low-rank optax map, or swap source and target.")
  if not isinstance(solver, solvers.Optax):
    return None
  if solver.rank is not None and not 1 <= solver.rank <= min(da, db):
    raise ValueError(f"rank={solver.rank} must lie in [1, min(da, db)] = [1, {min(da, db)}].")
  return train.TrainSettings(optimizer=solver.method, learning_rate=solver.learning_rate, steps=solver.steps,
                             batch_size=solver.batch_size, eval_every=solver.eval_every, patience=solver.patience,
                             rank=solver.rank, seed=seed)


def _parse_pairs(pairs, num_source: int, num_target: int) -> np.ndarray:
  """"all" or a sequence of (i, j) -> int array [P, 2], unique and sorted by (source, target)."""
  if isinstance(pairs, str):
    if pairs != "all":
      raise ValueError(f"pairs={pairs!r}: pass 'all' or a sequence of (source layer, target layer).")
    return np.stack(np.meshgrid(np.arange(num_source), np.arange(num_target), indexing="ij"), -1).reshape(-1, 2)
  array = np.asarray(pairs)
  if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"pairs must be 'all' or a non-empty sequence of integer (i, j), got shape {array.shape}.")
  bad = (array[:, 0] < 0) | (array[:, 0] >= num_source) | (array[:, 1] < 0) | (array[:, 1] >= num_target)
  if bad.any():
    raise ValueError(f"pair {tuple(int(v) for v in array[bad][0])} is out of range: source layers "
                     f"0..{num_source - 1}, target layers 0..{num_target - 1}.")
  unique = np.unique(array, axis=0)  # sorted lexicographically
  if len(unique) != len(array):
    raise ValueError("pairs lists a pair more than once; list each (i, j) once.")
  return unique


def _plan_chunks(pairs: np.ndarray, chunk_size: int):
  """Yields (source layer, rows of `pairs`): consecutive runs of one source layer, at most chunk_size long."""
  for layer in np.unique(pairs[:, 0]):
    rows = np.flatnonzero(pairs[:, 0] == layer)
    for start in range(0, len(rows), chunk_size):
      yield int(layer), rows[start:start + chunk_size]


def _put(x, mesh: Optional[Mesh]):
  """Places an array whose leading axis is the chunk's target axis: sharded over the mesh, or on the default
  device."""
  if mesh is None:
    return jnp.asarray(x)
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec(mesh.axis_names)))


@functools.lru_cache(maxsize=None)
def _chunk_function(method: str, settings: Optional[train.TrainSettings], penalties: tuple,
                    mesh: Optional[Mesh]):
  """The jitted fit of one chunk, compiled once per (method, settings, penalties, mesh) and chunk shape."""
  fit = functools.partial(_fit_chunk, method, settings, penalties, mesh)
  if mesh is None:
    return jax.jit(fit)
  replicated = NamedSharding(mesh, PartitionSpec())
  per_target = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
  return jax.jit(fit, in_shardings=(replicated, per_target, replicated, per_target, replicated),
                 out_shardings=per_target)


def _ridge_params(weight, basis, bias) -> dict:
  """Ridge maps as stored: weight [T, db, da], or factored where that is smaller.

  Ridge weights lie in the span of the training rows (basis [r, da], r <= min(n_train, da), see ridge.fit_ridge),
  so W = up down with up = W basis' [T, db, r] and down = basis: where r (da + db) < da db (fewer training rows
  than dimensions) the same maps take fewer floats, e.g. 7x fewer for 77 rows from a 1,536- to an 896-wide model.
  """
  num_targets, db, da = weight.shape
  rank = basis.shape[0]
  if rank * (da + db) >= da * db:
    return {"weight": weight, "bias": bias}
  up = jnp.einsum("tba,ra->tbr", weight, basis, precision=jax.lax.Precision.HIGHEST)
  return {"up": up, "down": jnp.broadcast_to(basis, (num_targets, rank, da)), "bias": bias}


def _fit_chunk(method, settings, penalties, mesh, x, y, x_moments, y_moments, rows):
  """Fits one source layer to T target layers and scores the test rows.

  Args:
    mesh: None, or the mesh y's target axis is laid out over.
    x: [n, da] raw source layer; y: [T, n, db] raw target layers.
    x_moments: (mean, std) [da]; y_moments: (mean, std) [T, db] training-row statistics.
    rows: (train, val, test) row indices of the split.

  Returns:
    dict of params (leaves [T, ...]), r2 [T], penalty [T], best_step [T].
  """
  num_targets = y.shape[0]
  xs = [splits.standardize(x[part], *x_moments) for part in rows]
  ys = [splits.standardize(y[:, part], *y_moments) for part in rows]
  no_step = jnp.full((num_targets,), -1, jnp.int32)
  zero_bias = jnp.zeros((num_targets, y.shape[2]), jnp.float32)
  if method in ("ridge", "procrustes"):  # closed forms without intercept: centre the training rows exactly
    x_train, y_train = splits.centered_rows(xs[0]), splits.centered_rows(ys[0])
  if method == "ridge":
    weight, penalty, basis = ridge.fit_ridge(x_train, y_train, xs[1], ys[1], penalties, num_rows=len(rows[0]))
    params, best_step = _ridge_params(weight, basis, zero_bias), no_step
  elif method == "procrustes":
    params, best_step = {"weight": procrustes.fit_procrustes(x_train, y_train, mesh), "bias": zero_bias}, no_step
    penalty = jnp.full((num_targets,), jnp.nan, jnp.float32)
  else:
    params, penalty, best_step = train.fit_sgd(settings, xs[0], ys[0], xs[1], ys[1], penalties)
  predicted = jax.vmap(train.apply_map, (0, None))(params, xs[2])
  return {"params": params, "r2": metrics.r2_score(ys[2], predicted), "penalty": penalty, "best_step": best_step}
