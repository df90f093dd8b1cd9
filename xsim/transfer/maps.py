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

from xsim.transfer import checkpoint, metrics, procrustes, ridge, splits, train

METHODS = ("adam", "adamw", "ridge", "procrustes")

# Per-row penalties (ridge lambda = penalty * n_train; see ridge.fit_ridge). Ridge's path is nearly free, so it
# scans finely; each optax penalty trains another copy of every model, so that grid is short.
DEFAULT_PENALTIES = {
    "ridge": tuple(float(p) for p in np.logspace(-5, 3, 17)),
    "adam": (1e-4, 1e-2, 1.0),
    "adamw": (1e-4, 1e-2, 1.0),
    "procrustes": (),
}


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
  params: Optional[dict]  # "weight" [P, db, da] or factored W = up down ("up" [P, db, r], "down" [P, r, da]: optax
  #                         maps of a given rank, ridge maps from fewer training rows than dims) and "bias" [P, db],
  #                         in the order of `pairs`, y = x W' + bias; None when keep_maps=False
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
    params = None if self.params is None else jax.tree_util.tree_map(lambda leaf: leaf[rows], self.params)
    return dataclasses.replace(
        self, r2=self.r2[grid], penalty=self.penalty[grid], best_step=self.best_step[grid], pairs=pairs[order],
        source_mean=self.source_mean[source_layers], source_std=self.source_std[source_layers],
        target_mean=self.target_mean[target_layers], target_std=self.target_std[target_layers], params=params)

  def predict(self, i: int, j: int, x):
    """Maps raw source-layer-i activations x: [m, da] to raw target-layer-j activations [m, db]."""
    if self.params is None:
      raise ValueError("this fit was made with keep_maps=False; rerun fit_linear_maps with keep_maps=True (with "
                       "the same checkpoint_dir it reads the maps back instead of refitting).")
    row = self.pair_index(i, j)
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, self.source_mean.shape[1])
    params = jax.tree_util.tree_map(lambda leaf: leaf[row], self.params)
    mapped = train.apply_map(params, splits.standardize(x, self.source_mean[i], self.source_std[i]))
    return mapped * self.target_std[j] + self.target_mean[j]


def fit_linear_maps(source, target, *, method: str = "adam", pairs: Union[str, Sequence] = "all",
                    val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                    penalties: Optional[Sequence[float]] = None, rank: Optional[int] = None, steps: int = 1000,
                    batch_size: int = 1024, learning_rate: float = 1e-2, eval_every: int = 25, patience: int = 8,
                    chunk_size: Optional[int] = None, mesh: Optional[Mesh] = None,
                    checkpoint_dir: Optional[str] = None, keep_maps: bool = True,
                    standardize: bool = True) -> LinearMapFit:
  """Fits an affine map from each source layer to each target layer and scores it on held-out rows.

  Args:
    source: [La, n, da] activations of the source model (NumPy or JAX).
    target: [Lb, n, db] activations of the target model; row r of both describes the same input.
    method: "adam" / "adamw" (optax, minibatches, early stopping; see train.py), "ridge" (closed form, whole
      penalty path) or "procrustes" (scaled orthogonal, needs da <= db).
    pairs: "all" or a sequence of (source layer, target layer).
    val_fraction, test_fraction, seed: the row split (splits.make_split); the penalty and early stopping use
      the validation rows, `r2` the test rows.
    penalties: grid searched on the validation rows, per-row units (see ridge.fit_ridge); None for
      DEFAULT_PENALTIES[method].
    rank: low-rank weight W = up @ down (optax methods only).
    steps, batch_size, learning_rate, eval_every, patience: optax settings (train.TrainSettings); the seed is
      `seed`.
    chunk_size: target layers fit together per chunk; None for all targets of a source layer. With a mesh it
      must be a multiple of the mesh size.
    mesh: shard each chunk's target axis over all devices of this mesh.
    checkpoint_dir: save each finished chunk here and, on a rerun, read finished chunks back (checked against
      their SHA-256; a damaged chunk is logged and fit again).
    keep_maps: keep the parameters in the result (needed by `predict`); False keeps only scores.
    standardize: scale inputs and targets to unit training-row std (default). False only centres them, which
      with a fixed tiny penalty reproduces the published study's untuned ridge on raw activations.

  Returns:
    LinearMapFit.
  """
  splits.check_layers(source, "source")
  splits.check_layers(target, "target")
  (num_source, n, da), (num_target, n_target, db) = source.shape, target.shape
  if n != n_target:
    raise ValueError(f"source and target must hold the same rows: source has n={n}, target n={n_target}.")
  settings, penalties = _method_settings(method, penalties, rank, da, db, steps, batch_size, learning_rate,
                                         eval_every, patience, seed)
  pairs = _parse_pairs(pairs, num_source, num_target)
  devices = 1 if mesh is None else mesh.size
  if chunk_size is None:
    widest = np.bincount(pairs[:, 0]).max()
    chunk_size = -(-widest // devices) * devices
  if chunk_size < 1 or chunk_size % devices:
    raise ValueError(f"chunk_size={chunk_size} must be a positive multiple of the mesh size {devices}.")

  split = splits.make_split(n, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  # Only layers that appear in `pairs` are read; the others keep NaN statistics.
  source_mean, source_std = splits.layer_moments(source, split.train, "source", np.unique(pairs[:, 0]))
  target_mean, target_std = splits.layer_moments(target, split.train, "target", np.unique(pairs[:, 1]))
  if not standardize:  # the published protocol: centred (ridge's intercept) but unscaled features
    source_std, target_std = np.ones_like(source_std), np.ones_like(target_std)
  store = None
  if checkpoint_dir is not None:
    store = checkpoint.ChunkStore(checkpoint_dir, {
        "layout": "y = x weight' + bias, weight [db, da] or up [db, r] @ down [r, da]", "method": method,
        "penalties": list(penalties),
        "train": None if settings is None else dataclasses.asdict(settings), "pairs": pairs.tolist(),
        "chunk_size": int(chunk_size), "split": [val_fraction, test_fraction, seed],
        "shapes": [num_source, num_target, n, da, db],
        "data": checkpoint.fingerprint(source_mean, source_std, target_mean, target_std)})

  fit_chunk = _chunk_function(method, settings, penalties, mesh)
  results, restored = [], []
  for index, (layer, rows) in enumerate(_plan_chunks(pairs, chunk_size)):
    result = None if store is None else store.load(index, pairs[rows])
    if result is not None:
      results.append(result)
      restored.append(index)
      continue
    targets = np.resize(pairs[rows, 1], chunk_size)  # padding repeats real targets; dropped below
    out = fit_chunk(source[layer], _put(target[targets], mesh), source_mean[layer], source_std[layer],
                    _put(target_mean[targets], mesh), _put(target_std[targets], mesh), split.train, split.val,
                    split.test)
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
  return LinearMapFit(method=method, **table, pairs=pairs, split=split, source_mean=source_mean,
                      source_std=source_std, target_mean=target_mean, target_std=target_std,
                      params=merged["params"] if keep_maps else None, restored_chunks=tuple(restored))


def _method_settings(method, penalties, rank, da, db, steps, batch_size, learning_rate, eval_every, patience,
                     seed):
  """Validates the method's options; returns (TrainSettings or None, penalties tuple)."""
  if method not in METHODS:
    raise ValueError(f"method={method!r} is not one of {METHODS}.")
  penalties = DEFAULT_PENALTIES[method] if penalties is None else tuple(float(p) for p in penalties)
  if method == "procrustes":
    if da > db:
      raise ValueError(f"procrustes needs da <= db for an orthogonal map, got da={da}, db={db}; use "
                       "method='ridge' or a low-rank optax map, or swap source and target.")
    if penalties or rank is not None:
      raise ValueError("procrustes takes no penalties and no rank; leave both unset.")
    return None, ()
  if not penalties or min(penalties) < 0 or (method == "ridge" and min(penalties) <= 0):
    raise ValueError(f"penalties={penalties} must be a non-empty sequence of non-negative values (positive for "
                     "ridge, whose path divides by e + lambda).")
  if method == "ridge":
    if rank is not None:
      raise ValueError("rank applies to the optax methods ('adam', 'adamw'); ridge maps are full rank.")
    return None, penalties
  if rank is not None and not 1 <= rank <= min(da, db):
    raise ValueError(f"rank={rank} must lie in [1, min(da, db)] = [1, {min(da, db)}].")
  for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                      ("patience", patience)):
    if value < 1:
      raise ValueError(f"{name}={value} must be at least 1.")
  return train.TrainSettings(optimizer=method, learning_rate=learning_rate, steps=steps, batch_size=batch_size,
                             eval_every=eval_every, patience=patience, rank=rank, seed=seed), penalties


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
  return jax.jit(fit, in_shardings=(replicated, per_target, replicated, replicated, per_target, per_target,
                                    replicated, replicated, replicated), out_shardings=per_target)


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


def _fit_chunk(method, settings, penalties, mesh, x, y, x_mean, x_std, y_mean, y_std, train_rows, val_rows,
               test_rows):
  """Fits one source layer to T target layers and scores the test rows.

  Args:
    mesh: None, or the mesh y's target axis is laid out over.
    x: [n, da] raw source layer; y: [T, n, db] raw target layers.
    x_mean, x_std: [da]; y_mean, y_std: [T, db] training-row statistics.
    train_rows, val_rows, test_rows: row indices of the split.

  Returns:
    dict of params (leaves [T, ...]), r2 [T], penalty [T], best_step [T].
  """
  num_targets = y.shape[0]
  xs = [splits.standardize(x[rows], x_mean, x_std) for rows in (train_rows, val_rows, test_rows)]
  ys = [splits.standardize(y[:, rows], y_mean, y_std) for rows in (train_rows, val_rows, test_rows)]
  no_step = jnp.full((num_targets,), -1, jnp.int32)
  zero_bias = jnp.zeros((num_targets, y.shape[2]), jnp.float32)
  if method in ("ridge", "procrustes"):  # closed forms without intercept: centre the training rows exactly
    x_train, y_train = splits.centered_rows(xs[0]), splits.centered_rows(ys[0])
  if method == "ridge":
    weight, penalty, basis = ridge.fit_ridge(x_train, y_train, xs[1], ys[1], penalties, num_rows=len(train_rows))
    params, best_step = _ridge_params(weight, basis, zero_bias), no_step
  elif method == "procrustes":
    params, best_step = {"weight": procrustes.fit_procrustes(x_train, y_train, mesh), "bias": zero_bias}, no_step
    penalty = jnp.full((num_targets,), jnp.nan, jnp.float32)
  else:
    params, penalty, best_step = train.fit_sgd(settings, xs[0], ys[0], xs[1], ys[1], penalties)
  predicted = jax.vmap(train.apply_map, (0, None))(params, xs[2])
  return {"params": params, "r2": metrics.r2_score(ys[2], predicted), "penalty": penalty, "best_step": best_step}
