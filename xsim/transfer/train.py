"""Affine maps trained with optax for a chunk of layer pairs that share one source layer.

Every (target layer, penalty) model of a chunk takes the same minibatches, so one vmapped step trains them all.
The training rows are cut once (seeded) into E equal minibatches, visited in a fresh random order each epoch.
A map is y = x W' + bias with W: [db, da] (PyTorch's Linear layout). Because the minibatches are fixed, the
MSE gradient of batch b needs only its statistics
  S_b = X_b'X_b, s_b = X_b'1 (shared by every model of the chunk), C_b = Y_b'X_b, t_b = Y_b'1 (per target):
  dL/dW = 2 / (B db) (W S_b + bias s_b' - C_b),  dL/dbias = 2 / (B db) (W s_b + B bias - t_b),
one [db, da] x [da, da] matmul per model and step instead of two [B, da] x [da, db] ones; with W in this layout
the models of a chunk stack into a single [T * G * db, da] x [da, da] matmul with no transposes. The statistics
are computed once per chunk and take (da / B) times the chunk's target memory, so they are used when 2 B >= da
(where they are also the cheaper path); smaller batches use the rows directly.

The whole run (steps, periodic validation, early stopping that keeps the best parameters, per-model stopping by
masking the update) is one `lax.while_loop` inside one jit.

Objective of one model: mean squared error over rows and target dims, plus penalty * sum(W^2) / db for "adam"
(the minimizer of ridge with lambda = penalty * n_train, as in ridge.py; low-rank maps penalize up and down),
or decoupled weight decay with rate `penalty` for "adamw". Parameters live in standardized coordinates.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.lax import Precision


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Static settings of the optax trainer (hashable, so it can be a static jit argument).

  optimizer: "adam" (L2 penalty in the loss) or "adamw" (decoupled weight decay).
  learning_rate: peak rate of a cosine decay to 0 over `steps`.
  steps: maximum number of optimizer steps.
  batch_size: requested rows per minibatch; the training rows are cut into E = n_train // batch_size equal
    minibatches of n_train // E rows (the fewer than E rows left over are not trained on).
  eval_every: steps between validation evaluations.
  patience: a model stops (its parameter updates are masked) after this many evaluations without a new best.
  rank: None for a full weight, else W = up @ down with up [db, rank], down [rank, da].
  seed: seeds the minibatches, their order and the low-rank initialization (shared by all models and chunks).
  batch_statistics: gradients from per-batch statistics (True) or from the rows (False); None picks the
    statistics when 2 * batch rows >= da. Both give the same minibatch gradients up to rounding.
  """
  optimizer: str = "adam"
  learning_rate: float = 1e-2
  steps: int = 1000
  batch_size: int = 1024
  eval_every: int = 25
  patience: int = 8
  rank: Optional[int] = None
  seed: int = 0
  batch_statistics: Optional[bool] = None


class BatchStatistics(NamedTuple):
  """Sufficient statistics of one minibatch for the MSE gradient of an affine map."""
  xx: jnp.ndarray  # [da, da] X'X
  x_sum: jnp.ndarray  # [da] X'1
  yx: jnp.ndarray  # [db, da] Y'X
  y_sum: jnp.ndarray  # [db] Y'1
  count: jnp.ndarray  # [] rows


def minibatches(settings: TrainSettings, n_train: int) -> tuple[np.ndarray, np.ndarray]:
  """The fixed minibatches and the order they are visited in (static, from the seed).

  Returns:
    rows [E, B] training-row positions of each minibatch; schedule [steps] the minibatch of each step (every
    epoch a fresh permutation of 0..E-1).
  """
  num_batches = max(n_train // settings.batch_size, 1)
  rng = np.random.default_rng([settings.seed, 2])
  size = n_train // num_batches
  rows = np.sort(rng.permutation(n_train)[:num_batches * size].reshape(num_batches, size), axis=1)
  epochs = -(-settings.steps // num_batches)
  schedule = np.concatenate([rng.permutation(num_batches) for _ in range(epochs)])[:settings.steps]
  return rows, schedule


def uses_statistics(settings: TrainSettings, n_train: int, da: int) -> bool:
  """Whether fit_sgd computes gradients from batch statistics (see the module docstring)."""
  if settings.batch_statistics is not None:
    return settings.batch_statistics
  return 2 * minibatches(settings, n_train)[0].shape[1] >= da


def chunk_statistics(x_train, y_train, rows) -> BatchStatistics:
  """Statistics of every minibatch of a chunk.

  Args:
    x_train: [n, da]; y_train: [T, n, db]; rows: [E, B] the minibatches (from `minibatches`).

  Returns:
    BatchStatistics with xx [E, da, da], x_sum [E, da] (shared by the targets), yx [E, T, db, da],
    y_sum [E, T, db] and count [] = B.
  """
  x_batches, y_batches = x_train[rows], y_train[:, rows]
  return BatchStatistics(
      xx=jnp.einsum("eba,ebc->eac", x_batches, x_batches, precision=Precision.HIGHEST),
      x_sum=jnp.sum(x_batches, axis=1),
      yx=jnp.einsum("tebc,eba->etca", y_batches, x_batches, precision=Precision.HIGHEST),
      y_sum=jnp.moveaxis(jnp.sum(y_batches, axis=2), 0, 1), count=jnp.float32(rows.shape[1]))


def select_batch(stats: BatchStatistics, batch) -> BatchStatistics:
  """The statistics of minibatch `batch` from chunk_statistics: yx [T, db, da] and y_sum [T, db] per target."""
  return stats._replace(xx=stats.xx[batch], x_sum=stats.x_sum[batch], yx=stats.yx[batch], y_sum=stats.y_sum[batch])


def init_params(settings: TrainSettings, da: int, db: int) -> dict:
  """One model's initial parameters: zero weight (the convex case), or for low rank a random `down` and a zero
  `up`, so the initial map is 0 and `up` gets a gradient at once."""
  bias = jnp.zeros((db,), jnp.float32)
  if settings.rank is None:
    return {"weight": jnp.zeros((db, da), jnp.float32), "bias": bias}
  init_key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 1)
  down = jax.random.normal(init_key, (settings.rank, da), jnp.float32) / jnp.sqrt(da)
  return {"up": jnp.zeros((db, settings.rank), jnp.float32), "down": down, "bias": bias}


def apply_map(params: dict, x):
  """x: [m, da] -> [m, db] for one model's parameters (full or low-rank weight)."""
  if "weight" in params:
    hidden = jnp.einsum("ma,ba->mb", x, params["weight"], precision=Precision.HIGHEST)
  else:
    low = jnp.einsum("ma,ra->mr", x, params["down"], precision=Precision.HIGHEST)
    hidden = jnp.einsum("mr,br->mb", low, params["up"], precision=Precision.HIGHEST)
  return hidden + params["bias"]


def mse(params: dict, x, y):
  """Mean squared error over rows and dims; x: [m, da], y: [m, db] -> scalar."""
  return jnp.mean((apply_map(params, x) - y) ** 2)


def _affine(params: dict):
  """The (weight [db, da], bias [db]) a model's parameters stand for."""
  if "weight" in params:
    return params["weight"], params["bias"]
  return jnp.einsum("br,ra->ba", params["up"], params["down"], precision=Precision.HIGHEST), params["bias"]


def _statistics_grads(params: dict, stats: BatchStatistics) -> dict:
  """MSE gradient from batch statistics, pulled back from (weight, bias) to the parameters."""
  (weight, bias), pullback = jax.vjp(_affine, params)
  scale = 2.0 / (stats.count * weight.shape[0])
  grad_weight = scale * (jnp.einsum("bc,ca->ba", weight, stats.xx, precision=Precision.HIGHEST)
                         + jnp.outer(bias, stats.x_sum) - stats.yx)
  grad_bias = scale * (jnp.einsum("ba,a->b", weight, stats.x_sum, precision=Precision.HIGHEST)
                       + stats.count * bias - stats.y_sum)
  return pullback((grad_weight, grad_bias))[0]


def make_optimizer(settings: TrainSettings, penalty) -> optax.GradientTransformation:
  """The optimizer of one model; `penalty` may be traced (it is only the weight-decay rate for "adamw")."""
  schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.steps)
  if settings.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=penalty, mask=lambda p: {k: k != "bias" for k in p})
  return optax.adam(schedule)


def model_step(settings: TrainSettings, params: dict, opt_state, batch, penalty):
  """One optimizer step of one model; returns (params, opt_state).

  Args:
    settings: TrainSettings.
    params, opt_state: the model's parameters and optimizer state.
    batch: BatchStatistics, or (x [B, da], y [B, db]) rows.
    penalty: the L2 penalty ("adam") or weight-decay rate ("adamw").
  """
  if isinstance(batch, BatchStatistics):
    grads = _statistics_grads(params, batch)
  else:
    grads = jax.grad(mse)(params, *batch)
  if settings.optimizer == "adam":  # d/dW of penalty * sum(W^2) / db
    db = params["bias"].shape[0]
    grads = {k: g if k == "bias" else g + 2.0 * penalty / db * params[k] for k, g in grads.items()}
  updates, opt_state = make_optimizer(settings, penalty).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def masked(keep_old, old, new):
  """Per-model select over pytrees whose leaves lead with the model axes of keep_old (e.g. [T, G] or [T])."""

  def pick(o, n):
    return jnp.where(keep_old.reshape(keep_old.shape + (1,) * (n.ndim - keep_old.ndim)), o, n)

  return jax.tree_util.tree_map(pick, old, new)


def fit_sgd(settings: TrainSettings, x_train, y_train, x_val, y_val, penalties):
  """Trains T target layers x G penalties models and keeps, per target, the penalty with the best validation MSE.

  Args:
    settings: TrainSettings.
    x_train: [n, da] standardized source rows (shared by all models).
    y_train: [T, n, db] standardized target rows.
    x_val: [m, da], y_val: [T, m, db] validation rows.
    penalties: [G] penalty grid.

  Returns:
    (params with leaves [T, ...] at each model's best validation step, penalty [T], best_step [T]).
  """
  n_train, da = x_train.shape
  num_targets, _, db = y_train.shape
  penalties = jnp.asarray(penalties, jnp.float32)
  models = (num_targets, penalties.shape[0])
  params = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, models + p.shape), init_params(settings, da, db))
  opt_state = jax.vmap(jax.vmap(make_optimizer(settings, 0.0).init))(params)

  rows, schedule = minibatches(settings, n_train)
  if uses_statistics(settings, n_train, da):
    stats = chunk_statistics(x_train, y_train, rows)
    batch_of = functools.partial(select_batch, stats)
    batch_axes = BatchStatistics(xx=None, x_sum=None, yx=0, y_sum=0, count=None)
  else:
    rows = jnp.asarray(rows)
    batch_of = lambda b: (x_train[rows[b]], y_train[:, rows[b]])
    batch_axes = (None, 0)

  # Inner vmap: penalties (same data); outer: target layers (same source rows and penalties).
  step_one = functools.partial(model_step, settings)
  step_all = jax.vmap(jax.vmap(step_one, (0, 0, None, 0)), (0, 0, batch_axes, None))
  val_all = jax.vmap(jax.vmap(mse, (0, None, None)), (0, None, 0))
  schedule = jnp.asarray(schedule, jnp.int32)

  def evaluate(state):
    val = val_all(state["params"], x_val, y_val)
    better = val < state["best_val"]
    bad = jnp.where(better, 0, state["bad"] + 1)
    return dict(state, best_params=masked(~better, state["best_params"], state["params"]),
                best_val=jnp.where(better, val, state["best_val"]),
                best_step=jnp.where(better, state["step"], state["best_step"]), bad=bad,
                done=state["done"] | (bad >= settings.patience))

  def body(state):
    new_params, new_opt = step_all(state["params"], state["opt_state"], batch_of(schedule[state["step"]]),
                                   penalties)
    # A stopped model keeps its parameters; its optimizer state is never read again, so it is not masked.
    state = dict(state, step=state["step"] + 1, params=masked(state["done"], state["params"], new_params),
                 opt_state=new_opt)
    due = (state["step"] % settings.eval_every == 0) | (state["step"] == settings.steps)
    return jax.lax.cond(due, evaluate, lambda s: s, state)

  def cond(state):
    return (state["step"] < settings.steps) & ~jnp.all(state["done"])

  state = evaluate(dict(step=jnp.int32(0), params=params, opt_state=opt_state, best_params=params,
                        best_val=jnp.full(models, jnp.inf), best_step=jnp.zeros(models, jnp.int32),
                        bad=jnp.zeros(models, jnp.int32), done=jnp.zeros(models, bool)))
  state = jax.lax.while_loop(cond, body, state)

  chosen = jnp.argmin(state["best_val"], axis=1)  # [T]

  def take(leaf):
    return jnp.take_along_axis(leaf, chosen.reshape((num_targets, 1) + (1,) * (leaf.ndim - 2)), axis=1)[:, 0]

  return (jax.tree_util.tree_map(take, state["best_params"]), penalties[chosen], take(state["best_step"]))
