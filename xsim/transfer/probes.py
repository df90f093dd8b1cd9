"""Linear probes on every layer at once, and the probe-transfer table that scores maps on a task.

Binary probes are logistic regressions; token probes are the published protocol's softmax regression over the
K most frequent next-token ids, scored top-1 and top-5. Each (layer, penalty) probe minimizes
  mean cross-entropy + penalty / 2 * |W|_F^2   (bias unpenalized)
with optax's L-BFGS, vmapped over penalties and layers, in the span of the training rows (exact: see _row_space);
the penalty is chosen per layer by validation log-loss. Features are standardized with training-row statistics,
so the rows are split as for the maps.
With a mesh, probe training splits the layers over all its devices and the probe-transfer table the layer pairs
(padding repeats real work and is cut off); XLA partitions the vmapped solvers along them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.lax import Precision
from jax.sharding import Mesh, PartitionSpec

from xsim import linalg, resampling, sharding
from xsim.transfer import maps, metrics, splits, train

DEFAULT_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class ProbeTraining:
  """How every probe is trained: the L2 penalty grid (see module docstring), chosen per layer on the validation
  rows; L-BFGS's iteration cap max_iters, and its stop once the gradient norm falls below tolerance."""
  penalties: tuple[float, ...] = DEFAULT_PENALTIES
  max_iters: int = 500
  tolerance: float = 1e-5

  def __post_init__(self):
    penalties = tuple(float(p) for p in self.penalties)
    if not penalties or min(penalties) < 0:
      raise ValueError(f"penalties={penalties} must be a non-empty sequence of non-negative values.")
    object.__setattr__(self, "penalties", penalties)


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeFit:
  """Probes of every layer of one model, in standardized coordinates, and their per-row test hits."""
  classes: np.ndarray  # [K] label value of each class: [0, 1] for binary probes, token ids for token probes
  weights: np.ndarray  # [L, d, c]; c = 1 (the logit of class 1) for binary probes, K otherwise
  bias: np.ndarray  # [L, c]
  mean: np.ndarray  # [L, d] training-row feature statistics
  std: np.ndarray  # [L, d]
  penalty: np.ndarray  # [L] chosen on the validation rows
  split: splits.Split  # rows used (token probes: only rows whose label is one of the classes)
  test_hits: dict  # k -> [L, m] 1.0 where the label is in the top k on test row r (k = 1; also 5 for tokens)

  def accuracy(self, k: int = 1) -> np.ndarray:
    """[L] test accuracy (top-k)."""
    return self.test_hits[k].mean(axis=-1)

  def class_index(self, labels) -> np.ndarray:
    """Label values [m] -> class indices [m]; raises ValueError for a label that is not a class."""
    labels = np.asarray(labels)
    index = np.clip(np.searchsorted(self.classes, labels), 0, len(self.classes) - 1)
    if not np.array_equal(self.classes[index], labels):
      raise ValueError(f"labels {np.setdiff1d(labels, self.classes)[:5]} are not classes of this probe; keep "
                       "only rows whose label is in `classes`.")
    return index

  def logits(self, layer: int, x):
    """Raw layer activations x: [m, d] -> [m, c] logits."""
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, self.mean.shape[1])
    return _outputs(self.weights[layer], self.bias[layer], splits.standardize(x, self.mean[layer], self.std[layer]))

  def hits(self, layer: int, x, labels, k: int = 1):
    """[m] 1.0 where the probe of `layer` ranks the label of row r of x: [m, d] in its top k."""
    return _hits(self.logits(layer, x), jnp.asarray(self.class_index(labels)), k)


def fit_logistic_probes(features, labels, training: ProbeTraining = ProbeTraining(), *,
                        val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                        mesh: Optional[Mesh] = None) -> ProbeFit:
  """Binary logistic-regression probes for every layer.

  Args:
    features: [L, n, d] activations.
    labels: [n] 0/1 (or bool) labels.
    training: the penalty grid and L-BFGS's stopping rule.
    val_fraction, test_fraction, seed: the row split (splits.make_split).
    mesh: split the layers over all devices of this mesh (same probes as on one device).

  Returns:
    ProbeFit with classes [0, 1] and test hits for k = 1.
  """
  splits.check_layers(features, "features")
  labels = np.asarray(labels)
  if labels.shape != (features.shape[1],) or not np.all((labels == 0) | (labels == 1)):
    raise ValueError(f"labels must be a [n={features.shape[1]}] array of 0/1 values, got shape {labels.shape} "
                     f"with values {np.unique(labels)[:5]}.")
  split = splits.make_split(features.shape[1], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  return _fit(features, labels.astype(np.int64), np.array([0, 1]), 1, split, training, (1,), mesh)


def fit_token_probes(features, token_ids, training: ProbeTraining = ProbeTraining(), *, num_classes: int = 500,
                     val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                     mesh: Optional[Mesh] = None) -> ProbeFit:
  """The published protocol's token probe: softmax regression over the `num_classes` most frequent token ids.

  The classes are the most frequent ids among the training rows (ties to the smaller id); rows whose token is
  not a class are dropped from all three parts, so accuracy is over rows with a frequent next token.

  Args:
    features: [L, n, d] activations.
    token_ids: [n] the token each row predicts (the next token after the sample position).
    num_classes: K.
    other arguments: as for fit_logistic_probes.

  Returns:
    ProbeFit with classes = the K token ids and test hits for k = 1 and 5.
  """
  splits.check_layers(features, "features")
  token_ids = np.asarray(token_ids)
  if token_ids.shape != (features.shape[1],) or not np.issubdtype(token_ids.dtype, np.integer):
    raise ValueError(f"token_ids must be an integer [n={features.shape[1]}] array, got {token_ids.dtype} "
                     f"{token_ids.shape}.")
  split = splits.make_split(features.shape[1], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  ids, counts = np.unique(token_ids[split.train], return_counts=True)
  if len(ids) < num_classes:
    raise ValueError(f"the training rows hold {len(ids)} distinct tokens, fewer than num_classes={num_classes}; "
                     "lower num_classes or use more rows.")
  classes = np.sort(ids[np.lexsort((ids, -counts))[:num_classes]])
  split = split.keep(np.isin(token_ids, classes))
  return _fit(features, np.searchsorted(classes, token_ids), classes, num_classes, split, training, (1, 5), mesh)


@dataclasses.dataclass(frozen=True)
class ProbeTransfer:
  """Accuracy (top-k) of probes on the probe's test rows, each with a paired subsampling CI [..., 2] (NaN without
  subsets)."""
  mapped: np.ndarray  # [La, Lb] target probe j on source layer i mapped to target layer j (NaN: no map)
  mapped_ci: np.ndarray
  mapped_hits: np.ndarray  # [La, Lb, T] top-k hit (1.0 / 0.0) of each test row behind `mapped` (NaN: no map)
  target: np.ndarray  # [Lb] target probe on the target's own activations: the ceiling
  target_ci: np.ndarray
  source: np.ndarray  # [La] a probe trained on the source's own activations
  source_ci: np.ndarray
  majority: float  # always predicting the training rows' k most frequent classes
  majority_ci: np.ndarray
  chance: float  # k / K, uniform guessing
  k: int


def probe_transfer(map_fit: maps.LinearMapFit, target_probe: ProbeFit, source_probe: ProbeFit, source_features,
                   labels, *, k: int = 1, subsets=None, level: float = 0.95,
                   mesh: Optional[Mesh] = None) -> ProbeTransfer:
  """Scores frozen maps on a task: the target's probe applied to mapped source activations, per layer pair.

  The maps are fit on other (generic) rows and kept frozen; fitting them on the task rows leaks the labels
  (STUDY.md). Both probes must come from the same task rows and split, so all scores share the test rows.

  Args:
    map_fit: maps from the source model to the target model.
    target_probe: probes trained on the target model's task activations.
    source_probe: probes trained on the source model's task activations.
    source_features: [La, n, da] the source model's task activations (the rows the probes were fit on).
    labels: [n] task labels (0/1, or token ids for token probes).
    k: top-k accuracy (1 for binary probes).
    subsets: [R, s] subsets of the probes' test rows (resampling.subsets) behind every CI
      (resampling.mean_interval, clipped to [0, 1]); None: no CIs (NaN).
    level: the CIs' coverage.
    mesh: split the layer pairs of each source layer over all devices of this mesh.

  Returns:
    ProbeTransfer.
  """
  splits.check_layers(source_features, "source_features")
  if target_probe.split != source_probe.split or not np.array_equal(target_probe.classes, source_probe.classes):
    raise ValueError("target_probe and source_probe must be fit on the same rows, split and classes; fit both "
                     "with the same labels, fractions and seed.")
  if k not in target_probe.test_hits:
    raise ValueError(f"k={k} is not scored by these probes; use one of {sorted(target_probe.test_hits)}.")
  if source_features.shape[2] != map_fit.source_mean.shape[1] or (
      target_probe.mean.shape[1] != map_fit.target_mean.shape[1]):
    raise ValueError("map_fit's dimensions do not match source_features / target_probe; pass the maps from this "
                     "source model to this target model.")
  test = target_probe.split.test
  num_source, num_target = map_fit.r2.shape
  test_labels = np.asarray(labels)[test]
  mapped = np.full((num_source, num_target, len(test)), np.nan, np.float32)
  mapped[map_fit.pairs[:, 0], map_fit.pairs[:, 1]] = _mapped_hits(
      map_fit, target_probe, source_features, test, target_probe.class_index(test_labels), k, mesh)
  train_labels = target_probe.class_index(np.asarray(labels)[target_probe.split.train])
  # Top-k of a constant predictor: the k most frequent training classes (ties to the smaller class).
  counts = np.bincount(train_labels, minlength=len(target_probe.classes))
  frequent = np.argsort(-counts, kind="stable")[:k]
  majority = np.isin(target_probe.class_index(test_labels), frequent).astype(np.float32)

  def scored(hits):
    if subsets is None:
      return hits.mean(axis=-1), np.full(hits.shape[:-1] + (2,), np.nan, np.float32)
    return hits.mean(axis=-1), np.asarray(resampling.mean_interval(hits, subsets, level=level, bounds=(0.0, 1.0)))

  mapped_acc, mapped_ci = scored(mapped)
  target_acc, target_ci = scored(target_probe.test_hits[k])
  source_acc, source_ci = scored(source_probe.test_hits[k])
  majority_acc, majority_ci = scored(majority)
  return ProbeTransfer(mapped=mapped_acc, mapped_ci=mapped_ci, mapped_hits=mapped, target=target_acc,
                       target_ci=target_ci, source=source_acc, source_ci=source_ci, majority=float(majority_acc),
                       majority_ci=majority_ci, chance=k / len(target_probe.classes), k=k)


def _mapped_hits(map_fit: maps.LinearMapFit, probe: ProbeFit, source_features, rows, test_classes, k: int,
                 mesh: Optional[Mesh]) -> np.ndarray:
  """[P, m] top-k hits of target probe j on source layer i's rows mapped to target layer j, for every fit pair
  (i, j) in the order of map_fit.pairs. One call per source layer, its pairs padded to the widest source layer's
  count (by repeating its own pairs) so one compiled function serves every source layer."""
  pairs = map_fit.pairs
  width = np.bincount(pairs[:, 0]).max()
  leaves, treedef = jax.tree_util.tree_flatten(map_fit.params)
  hits = np.empty((len(pairs), len(rows)), np.float32)
  for i in np.unique(pairs[:, 0]):
    real = np.flatnonzero(pairs[:, 0] == i)
    padded = np.resize(real, width)
    targets = pairs[padded, 1]
    per_pair = [leaf[padded] for leaf in leaves] + [
        a[targets] for a in (map_fit.target_mean, map_fit.target_std, probe.weights, probe.bias, probe.mean,
                             probe.std)]
    shared = (np.asarray(source_features[i])[rows], map_fit.source_mean[i], map_fit.source_std[i],
              test_classes)
    hits[real] = np.asarray(_pair_hits(per_pair, shared, treedef, k, mesh))[:len(real)]
  return hits


@functools.partial(jax.jit, static_argnames=("treedef", "k", "mesh"))
def _pair_hits(per_pair, shared, treedef, k, mesh):
  """Hits of a batch of pairs that share one source layer.

  per_pair: the map's parameter leaves [G, ...], then target_mean, target_std [G, db], probe weights [G, db, c],
  bias [G, c], probe mean, std [G, db]; shared: source rows [m, da], their mean and std [da], classes [m].
  -> [G, m].
  """
  x, x_mean, x_std, classes = shared
  z = splits.standardize(x, x_mean, x_std)

  def one(*pair):
    params = jax.tree_util.tree_unflatten(treedef, pair[:treedef.num_leaves])
    y_mean, y_std, weights, bias, probe_mean, probe_std = pair[treedef.num_leaves:]
    mapped = train.apply_map(params, z) * y_std + y_mean
    return _hits(_outputs(weights, bias, splits.standardize(mapped, probe_mean, probe_std)), classes, k)

  if mesh is not None:
    per_pair = _split(mesh, *per_pair)
  return jax.vmap(one)(*per_pair)


def _split(mesh: Mesh, *arrays):
  """Lays each array out over all devices of the mesh along its leading axis, padded to a multiple of the
  device count by repeating its last entry (real work, cut off by the caller)."""
  spec = PartitionSpec(sharding.axes(mesh))
  return [sharding.place(sharding.pad_rows(a, mesh.size), mesh, spec) for a in arrays]


def _row_space(x):
  """[m, d] training rows -> [d, min(m, d)] orthonormal basis of their span.

  The penalized loss depends on W through x W and |W|^2, so its minimizer (and every L-BFGS iterate from W = 0,
  whose gradients lie in the span) is W = basis B with B fit on the coordinates x basis [m, min(m, d)]: the same
  probe from a problem as wide as the training rows, not the model (77 training rows of a 1,536-wide Qwen: 20x
  narrower, 35x faster).
  """
  return linalg.svd(x)[2].T


def _outputs(weights, bias, x):
  """x: [m, d] standardized -> [m, c] logits."""
  return jnp.einsum("md,dc->mc", x, weights, precision=Precision.HIGHEST) + bias


def _hits(logits, labels, k: int):
  """logits [..., m, c], class indices [m] -> [..., m] top-k hits; a binary probe (c = 1) predicts class 1 where
  its logit is positive."""
  if logits.shape[-1] == 1:
    if k != 1:
      raise ValueError(f"binary probes score top-1 only, got k={k}.")
    return ((logits[..., 0] > 0) == (labels == 1)).astype(jnp.float32)
  return metrics.topk_accuracy(logits, labels, k)


def _loss(params, x, labels):
  """Mean cross-entropy of one probe; x: [m, d], labels: [m] class indices."""
  logits = _outputs(params["weights"], params["bias"], x)
  if logits.shape[-1] == 1:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32)))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _lbfgs(x, labels, penalty, num_outputs: int, max_iters: int, tolerance: float):
  """One probe trained by L-BFGS to gradient norm `tolerance` (or max_iters); x: [m, d] -> params."""

  def objective(params):
    return _loss(params, x, labels) + 0.5 * penalty * jnp.sum(params["weights"] ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)
  params = {"weights": jnp.zeros((x.shape[1], num_outputs), jnp.float32),
            "bias": jnp.zeros((num_outputs,), jnp.float32)}

  def body(carry):
    params, state, iteration, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(params, updates), state, iteration + 1, optax.tree_utils.tree_norm(grad)

  def cond(carry):
    _, _, iteration, grad_norm = carry
    return (iteration < max_iters) & (grad_norm > tolerance)

  init = (params, solver.init(params), jnp.int32(0), jnp.float32(jnp.inf))
  return jax.lax.while_loop(cond, body, init)[0]


@functools.partial(jax.jit, static_argnames=("num_outputs", "max_iters", "tolerance", "mesh"))
def _train(features, moments, labels, rows, penalties, num_outputs, max_iters, tolerance, mesh):
  """Probes for every layer and penalty; keeps per layer the penalty with the lowest validation loss.

  Args:
    features: [L, n, d]; moments: (mean, std) [L, d] training-row statistics; labels: [n] class indices.
    rows: (train, val, test) row indices of the split; penalties: [P].

  Returns:
    (params with leaves [L, ...], penalty [L], test logits [L, m_test, c]).
  """
  num_layers = features.shape[0]
  mean, std = moments
  if mesh is not None:
    features, mean, std = _split(mesh, features, mean, std)
  train_rows, val_rows, _ = rows
  x_train, x_val, x_test = (splits.standardize(features[:, part], mean, std) for part in rows)
  fit = functools.partial(_lbfgs, num_outputs=num_outputs, max_iters=max_iters, tolerance=tolerance)
  basis = jax.vmap(_row_space)(x_train) if mesh is None else sharding.blockwise(jax.vmap(_row_space), mesh, x_train)
  coordinates = jnp.einsum("lmd,ldr->lmr", x_train, basis, precision=Precision.HIGHEST)
  reduced = jax.vmap(jax.vmap(fit, (None, None, 0)), (0, None, None))(coordinates, labels[train_rows], penalties)
  params = {"weights": jnp.einsum("ldr,lprc->lpdc", basis, reduced["weights"], precision=Precision.HIGHEST),
            "bias": reduced["bias"]}
  val_loss = jax.vmap(jax.vmap(_loss, (0, None, None)), (0, 0, None))(params, x_val, labels[val_rows])
  chosen = jnp.argmin(val_loss, axis=1)
  params = jax.tree_util.tree_map(lambda leaf: leaf[jnp.arange(leaf.shape[0]), chosen], params)
  test_logits = jax.vmap(_outputs)(params["weights"], params["bias"], x_test)
  return jax.tree_util.tree_map(lambda a: a[:num_layers], (params, penalties[chosen], test_logits))


def _fit(features, class_index, classes, num_outputs, split, training, ks, mesh) -> ProbeFit:
  """Shared body of the binary (num_outputs = 1) and token probes; class_index: [n] class of each row (rows
  outside `split` are never read); ks: the top-k hits to record."""
  if len(np.unique(class_index[split.train])) < 2:
    raise ValueError("the training rows hold a single class; a probe needs at least two.")
  mean, std = splits.layer_moments(features, split.train, "features")
  params, penalty, test_logits = _train(jnp.asarray(features), (mean, std), jnp.asarray(class_index),
                                        (split.train, split.val, split.test),
                                        jnp.asarray(training.penalties, jnp.float32), num_outputs,
                                        training.max_iters, training.tolerance, mesh)
  test_labels = jnp.asarray(class_index[split.test])
  return ProbeFit(classes=classes, weights=np.asarray(params["weights"]), bias=np.asarray(params["bias"]),
                  mean=mean, std=std, penalty=np.asarray(penalty), split=split,
                  test_hits={k: np.asarray(_hits(test_logits, test_labels, k)) for k in ks})
