"""Centered kernel alignment (Kornblith et al. 2019): one pair, every layer pair at once, and minibatch CKA.

Linear CKA of every layer pair reduces to a few statistics of the column-centered features (`LinearTerms`).
They come from one of two exact paths, whichever needs fewer FLOPs:
  gram:     each layer's Gram K_a = X_a X_a' is built once, tile by tile (only tiles on or above the
            diagonal, as Grams are symmetric), and every pair's share of tr(K_a L_b) is one matmul of the
            flattened tiles (memory beyond the centered inputs: (La + Lb) * chunk_size^2 floats);
  features: tr(K_a L_b) = |X_a' Y_b|_F^2, one x layer against all y layers at a time (memory: Lb * da * db).
Nothing is clamped to [0, 1]: debiased CKA of independent data is slightly negative half the time, and the
null distributions in stats.py need that sign.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from xsim.similarity import checks, kernels
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess

METHODS = ("auto", "gram", "features")
KERNELS = ("linear", "rbf")


class LinearTerms(NamedTuple):
  """Statistics of column-centered features from which linear HSIC (biased or debiased) follows exactly.

  With K_a = X_a X_a' and L_b = Y_b Y_b' the centered Grams and d_a = diag(K_a):
  cross [La, Lb] = tr(K_a L_b);  cross_diag [La, Lb] = d_a . d_b;
  self_x [La] = tr(K_a K_a);  self_x_diag [La] = d_a . d_a;  trace_x [La] = tr(K_a);  likewise for y;
  n [] = number of samples.
  """
  cross: jnp.ndarray
  cross_diag: jnp.ndarray
  self_x: jnp.ndarray
  self_x_diag: jnp.ndarray
  trace_x: jnp.ndarray
  self_y: jnp.ndarray
  self_y_diag: jnp.ndarray
  trace_y: jnp.ndarray
  n: jnp.ndarray


def _hsic(tr_kl, dd, t_k, t_l, n, debiased):
  """Biased tr(KL)/(n-1)^2, or Song et al.'s estimator after centering, where K~1 = -d and 1'K~1 = -tr K:
  [tr(KL) - n/(n-2) d_K.d_L + tr K tr L / ((n-1)(n-2))] / (n(n-3))."""
  if not debiased:
    return tr_kl / (n - 1) ** 2
  return (tr_kl - n / (n - 2) * dd + t_k * t_l / ((n - 1) * (n - 2))) / (n * (n - 3))


def hsic_from_terms(t: LinearTerms, debiased: bool):
  """-> (hsic_xy [La, Lb], hsic_xx [La], hsic_yy [Lb])."""
  xy = _hsic(t.cross, t.cross_diag, t.trace_x[:, None], t.trace_y[None, :], t.n, debiased)
  xx = _hsic(t.self_x, t.self_x_diag, t.trace_x, t.trace_x, t.n, debiased)
  yy = _hsic(t.self_y, t.self_y_diag, t.trace_y, t.trace_y, t.n, debiased)
  return xy, xx, yy


def cka_from_terms(t: LinearTerms, debiased: bool) -> jnp.ndarray:
  """-> [La, Lb] CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), unclamped."""
  xy, xx, yy = hsic_from_terms(t, debiased)
  return xy / jnp.sqrt(xx[:, None] * yy[None, :])


def _flops(method: str, la: int, lb: int, n: int, da: int, db: int) -> int:
  if method == "gram":  # half of every Gram and of every pair product, by symmetry
    return n * n * (la * da + lb * db + la * lb)
  return 2 * n * (la * lb * da * db + la * da * da + lb * db * db)


def choose_method(la: int, lb: int, n: int, da: int, db: int) -> str:
  """The exact path with fewer FLOPs: "gram" when n is small against layers x width, else "features"."""
  return min(("gram", "features"), key=lambda m: _flops(m, la, lb, n, da, db))


def gram_tiles(n: int, tile: int, devices: int = 1):
  """-> (tiles [T, 3] int32 rows (row block, column block, weight), padded n, tile side).

  Grams are symmetric, so only tiles on or above the diagonal are built; an off-diagonal tile stands for its
  mirror too (weight 2). Weight-0 tiles pad T to a multiple of `devices`.
  """
  blocks = -(-n // min(tile, n))
  side = -(-n // blocks)
  pairs = [(i, j, 1 if i == j else 2) for i in range(blocks) for j in range(i, blocks)]
  pairs += [(0, 0, 0)] * (-len(pairs) % devices)
  return jnp.asarray(pairs, jnp.int32), side * blocks, side


def _gram_tile_terms(tiles, xs, ys, side: int, axes):
  """tiles: [T, 3] (see gram_tiles), xs: [La, n, da], ys: [Lb, n, db] centered -> LinearTerms (n unset).

  Each step builds the tile K_a[I, J] of every x layer and L_b[I, J] of every y layer once; every pair's
  share of tr(K_a L_b) is then one matmul of the flattened tiles, and diagonal tiles (I = J) also give
  the Gram diagonals. With `axes`, partial sums are added across the devices that split the tiles.
  """
  def step(_, tile):
    rows = lambda a, b: jax.lax.dynamic_slice_in_dim(a, tile[b] * side, side, axis=1)
    k = jnp.einsum("aid,ajd->aij", rows(xs, 0), rows(xs, 1), precision=HIGHEST)
    l = jnp.einsum("bid,bjd->bij", rows(ys, 0), rows(ys, 1), precision=HIGHEST)
    w = tile[2].astype(xs.dtype)
    on_diag = (tile[0] == tile[1]).astype(xs.dtype) * (w > 0)
    dk, dl = jnp.diagonal(k, axis1=1, axis2=2) * on_diag, jnp.diagonal(l, axis1=1, axis2=2) * on_diag
    return None, LinearTerms(
        cross=w * jnp.einsum("aij,bij->ab", k, l, precision=HIGHEST),
        cross_diag=jnp.einsum("ai,bi->ab", dk, dl, precision=HIGHEST),
        self_x=w * jnp.sum(k * k, (1, 2)), self_x_diag=jnp.sum(dk * dk, 1), trace_x=jnp.sum(dk, 1),
        self_y=w * jnp.sum(l * l, (1, 2)), self_y_diag=jnp.sum(dl * dl, 1), trace_y=jnp.sum(dl, 1),
        n=jnp.zeros((), xs.dtype))

  out = jax.tree.map(lambda parts: parts.sum(0), jax.lax.scan(step, None, tiles)[1])
  return jax.lax.psum(out, axes) if axes else out


def _feature_cross(x_layers, y_all):
  """x_layers: [m, n, da], y_all: [Lb, n, db] -> [m, Lb] of |X_a' Y_b|_F^2, one x layer per step."""
  def step(_, x):
    c = jnp.einsum("nd,bne->bde", x, y_all, precision=HIGHEST)
    return None, jnp.sum(c * c, (1, 2))
  return jax.lax.scan(step, None, x_layers)[1]


def _feature_self(xs):
  """xs: [L, n, d] -> [L] of |X' X|_F^2, one layer at a time."""
  def one(x):
    c = jnp.einsum("nd,ne->de", x, x, precision=HIGHEST)
    return jnp.sum(c * c)
  return jax.lax.map(one, xs)


def pad_axis(x, axis: int, size: int):
  """Zero-pads `axis` to `size`: zero rows add nothing to any Gram sum, zero layers are sliced off later."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _place(x, mesh: Mesh, spec: P):
  """Lays x out as `spec` on the mesh: explicit-axis meshes need jax.reshard, auto ones a constraint."""
  if all(t == AxisType.Explicit for t in mesh.axis_types):
    return jax.reshard(x, NamedSharding(mesh, spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def linear_terms(xs, ys, method: str, chunk_size: int, mesh: Optional[Mesh] = None) -> LinearTerms:
  """xs: [La, n, da], ys: [Lb, n, db] (preprocessed, not necessarily centered) -> LinearTerms.

  method is "gram" or "features" (see the module docstring). With a mesh, the gram path splits the tiles
  across all its devices and the feature path the x layers (inputs replicated); same numbers as without.
  """
  la, n, _ = xs.shape
  axes = tuple(mesh.axis_names) if mesh is not None else ()
  devices = mesh.size if mesh is not None else 1
  tiles, size, side = gram_tiles(n, chunk_size, devices)
  # Every linear HSIC here is shift invariant; centering avoids float32 cancellation. The zero rows padding
  # n to whole tiles add nothing to any sum.
  xs = pad_axis(xs - xs.mean(1, keepdims=True), 1, size if method == "gram" else n)
  ys = pad_axis(ys - ys.mean(1, keepdims=True), 1, size if method == "gram" else n)
  if method == "gram":
    fn = functools.partial(_gram_tile_terms, side=side, axes=axes)
    if mesh is not None:
      fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(axes), P(), P()), out_specs=P())
      tiles = _place(tiles, mesh, P(axes))
    return fn(tiles, xs, ys)._replace(n=jnp.asarray(n, xs.dtype))
  if mesh is None:
    cross = _feature_cross(xs, ys)
  else:
    xp = pad_axis(xs, 0, -(-la // devices) * devices)
    fn = jax.shard_map(_feature_cross, mesh=mesh, in_specs=(P(axes), P()), out_specs=P(axes))
    cross = _place(fn(_place(xp, mesh, P(axes)), ys), mesh, P())[:la]
  dx, dy = jnp.sum(xs * xs, -1), jnp.sum(ys * ys, -1)  # [L, n] Gram diagonals
  return LinearTerms(
      cross=cross, cross_diag=jnp.einsum("an,bn->ab", dx, dy, precision=HIGHEST),
      self_x=_feature_self(xs), self_x_diag=jnp.sum(dx * dx, -1), trace_x=jnp.sum(dx, -1),
      self_y=_feature_self(ys), self_y_diag=jnp.sum(dy * dy, -1), trace_y=jnp.sum(dy, -1),
      n=jnp.asarray(n, xs.dtype))


@functools.partial(jax.jit, static_argnames=("prep", "method", "chunk_size", "mesh"))
def _terms(xs, ys, prep, method, chunk_size, mesh):
  return linear_terms(apply_preprocess(xs, prep), apply_preprocess(ys, prep), method, chunk_size, mesh)


# Separate from _terms so biased and debiased CKA of the same data share one compiled statistics pass.
_cka_from_terms = jax.jit(cka_from_terms, static_argnames=("debiased",))


def _resolve_method(method: str, la: int, lb: int, n: int, da: int, db: int) -> str:
  if method not in METHODS:
    raise ValueError(f"method={method!r} is unknown; use one of {METHODS}.")
  return choose_method(la, lb, n, da, db) if method == "auto" else method


def cka_matrix(xs, ys, *, debiased: bool = False, preprocess: str | Preprocess = "none", method: str = "auto",
               chunk_size: int = 512, mesh: Optional[Mesh] = None, dtype=None) -> jnp.ndarray:
  """Linear CKA of every layer pair: xs: [La, n, da], ys: [Lb, n, db] -> [La, Lb], in one compiled call.

  Each layer's Gram (or feature statistics, whichever is cheaper for n, L and d; `method` forces one) is
  computed once. chunk_size is the Gram tile side, bounding the gram path's memory; `mesh` shards the work
  over all its devices. dtype float32 (default; matmuls at HIGHEST precision) or float64 (needs x64 mode,
  see checks.compute_dtype).
  """
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  n = checks.same_samples(xs, ys, min_n=4 if debiased else 2)
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be a positive Gram tile side, e.g. 512.")
  (la, _, da), (lb, _, db) = xs.shape, ys.shape
  method = _resolve_method(method, la, lb, n, da, db)
  if mesh is not None:
    replicated = NamedSharding(mesh, P())
    xs, ys = jax.device_put(xs, replicated), jax.device_put(ys, replicated)
  terms = _terms(xs, ys, as_preprocess(preprocess), method, int(chunk_size), mesh)
  out = _cka_from_terms(terms, debiased=bool(debiased))
  chex.assert_shape(out, (la, lb))
  return out


@functools.partial(jax.jit, static_argnames=("debiased", "prep"))
def _cka_rbf(x, y, debiased, prep, bandwidth):
  k = kernels.gram_rbf(apply_preprocess(x, prep), bandwidth)
  l = kernels.gram_rbf(apply_preprocess(y, prep), bandwidth)
  return kernels.cka_from_grams(k, l, debiased)


def cka(x, y, *, kernel: str = "linear", debiased: bool = False, bandwidth: float = 1.0,
        preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for linear or RBF Grams.

  Linear CKA is invariant to orthogonal maps, isotropic scaling and translation of either side, not to
  general invertible maps. RBF bandwidth = `bandwidth` x median distance (see kernels.gram_rbf).
  """
  if kernel not in KERNELS:
    raise ValueError(f"kernel={kernel!r} is unknown; use one of {KERNELS}.")
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  if kernel == "linear":
    return cka_matrix(x[None], y[None], debiased=debiased, preprocess=preprocess, dtype=dtype)[0, 0]
  checks.same_samples(x, y, min_n=4 if debiased else 2)
  if bandwidth <= 0:
    raise ValueError(f"bandwidth={bandwidth} must be a positive fraction of the median distance, e.g. 1.0.")
  return _cka_rbf(x, y, bool(debiased), as_preprocess(preprocess), float(bandwidth))


@functools.partial(jax.jit, static_argnames=("batch_size", "debiased", "prep"))
def _minibatch(xs, ys, batch_size, debiased, prep):
  xs, ys = apply_preprocess(xs, prep), apply_preprocess(ys, prep)
  (la, n, da), (lb, _, db) = xs.shape, ys.shape
  method = choose_method(la, lb, batch_size, da, db)
  split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], n // batch_size, batch_size, a.shape[2]), 1, 0)

  def step(carry, batch):
    h = hsic_from_terms(linear_terms(batch[0], batch[1], method, batch_size), debiased)
    return jax.tree.map(jnp.add, carry, h), None

  zeros = (jnp.zeros((la, lb), xs.dtype), jnp.zeros((la,), xs.dtype), jnp.zeros((lb,), xs.dtype))
  (xy, xx, yy), _ = jax.lax.scan(step, zeros, (split(xs), split(ys)))
  return xy / jnp.sqrt(xx[:, None] * yy[None, :])


def minibatch_cka_matrix(xs, ys, *, batch_size: int, debiased: bool = True,
                         preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [La, Lb] minibatch CKA (Nguyen, Raghu & Kornblith 2021):
  sum_k HSIC(K_k, L_k) / sqrt(sum_k HSIC(K_k, K_k) sum_k HSIC(L_k, L_k)) over consecutive batches of rows.

  It depends on the batch size (each HSIC is centered within its batch); see streaming.py for the exact
  full-data value. Preprocessing uses the whole data. Same invariances as linear CKA.
  """
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  n = checks.same_samples(xs, ys)
  if batch_size < (4 if debiased else 2) or n % batch_size:
    raise ValueError(f"batch_size={batch_size} must divide n={n} and be >= {4 if debiased else 2}; "
                     "drop or shuffle rows first so the batches tile the data.")
  out = _minibatch(xs, ys, int(batch_size), bool(debiased), as_preprocess(preprocess))
  chex.assert_shape(out, (xs.shape[0], ys.shape[0]))
  return out


def minibatch_cka(x, y, *, batch_size: int, debiased: bool = True, preprocess: str | Preprocess = "none",
                  dtype=None) -> jnp.ndarray:
  """x: [n, d1], y: [n, d2] -> scalar minibatch linear CKA (see minibatch_cka_matrix)."""
  dtype = checks.compute_dtype(dtype)
  x, y = checks.features(x, "x", 2, dtype), checks.features(y, "y", 2, dtype)
  return minibatch_cka_matrix(x[None], y[None], batch_size=batch_size, debiased=debiased,
                              preprocess=preprocess, dtype=dtype)[0, 0]
