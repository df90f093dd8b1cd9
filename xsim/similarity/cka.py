"""Centered kernel alignment (Kornblith et al. 2019): one pair, every layer pair at once, and minibatch CKA.

Linear CKA of every layer pair follows from linear HSIC of each pair and of each layer with itself
(`LinearHsic`). It comes from one of two exact paths, whichever needs fewer FLOPs:
  gram:     each layer's Gram K_a = X_a X_a' is built once, tile by tile (only tiles on or above the
            diagonal, as Grams are symmetric), and every pair's share of the Gram products is one matmul of
            the flattened tiles (memory beyond the centered inputs: (La + Lb) * chunk_size^2 floats);
  features: tr(K_a L_b) = |X_a' Y_b|_F^2, one x layer against all y layers at a time (memory: Lb * da * db).
Float32 numerics. When d >> n the diagonal of a centered Gram (about d) dwarfs its other entries (about
sqrt(d)), and tr(KL) - d_K.d_L cancels most digits. The gram path never forms that difference: its tiles
hold K^ = K + c off the diagonal and 0 on it, c minus the mean off-diagonal entry. The debiased estimator
(Song et al. 2012) reads only off-diagonal entries and is unchanged by a constant added to all of them (or
by a shift of the features, see gram_features), and its row sums K^1 come from the same tiles, so no term
of order d^2 cancels: within 3e-6 of float64 down to n = 4 with d = 2,000 (tests/similarity/
test_cka_numerics.py; 1e-3 before). The features path cannot separate the diagonal from |X'Y|_F^2: its
debiased error grows like rounding x d / n (4e-6 at n = 64, d = 2,000; 1e-4 and more at n <= 8);
choose_method takes it only when n > L d, where that loss is nil.
Nothing is clamped to [0, 1]: debiased CKA of independent data is slightly negative half the time, and the
permutation nulls (cka_null.py, grid.py) need that sign.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xsim import sharding
from xsim.similarity import checks, kernels
from xsim.similarity.checks import HIGHEST
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess

METHODS = ("auto", "gram", "features")
KERNELS = ("linear", "rbf")


class LinearHsic(NamedTuple):
  """Linear HSIC (biased or debiased) of every layer pair, xy [La, Lb], and of each layer with itself,
  xx [La] and yy [Lb]."""
  xy: jnp.ndarray
  xx: jnp.ndarray
  yy: jnp.ndarray


def cka_from_hsic(h: LinearHsic) -> jnp.ndarray:
  """-> [La, Lb] CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), unclamped."""
  return h.xy / jnp.sqrt(h.xx[:, None] * h.yy[None, :])


def hsic_from_traces(tr_kl, dd, t_k, t_l, n, debiased: bool):
  """HSIC of centered Grams from tr(KL), dd = d_K.d_L (diagonals) and the traces: biased tr(KL)/(n-1)^2, or
  Song et al.'s estimator where K~1 = -d and 1'K~1 = -tr K: [tr(KL) - n/(n-2) dd + tr K tr L / ((n-1)(n-2))]
  / (n(n-3)). Loses about log10(d/n) digits when d >> n (see the module docstring)."""
  if not debiased:
    return tr_kl / (n - 1) ** 2
  return (tr_kl - n / (n - 2) * dd + t_k * t_l / ((n - 1) * (n - 2))) / (n * (n - 3))


def gram_hsic(cross, rows_dot, diag_dot, t_k, t_l, c_k, c_l, n: int, debiased: bool):
  """HSIC of centered Grams K, L from sums over K^ = (K + c_k)(11' - I) and L^ (any constants c_k, c_l):
  cross = sum K^ o L^, rows_dot = (K^1).(L^1), t = 1'K^1, diag_dot = diag K . diag L.

  Debiased: Song et al.'s estimator, which reads only off-diagonal entries and is invariant to a constant
  added to all of them: [cross - 2/(n-2) rows_dot + t_k t_l / ((n-1)(n-2))] / (n(n-3)), as for K itself.
  Biased: tr(KL) / (n-1)^2 with the shifts taken back out of the off-diagonal sum.
  """
  if debiased:
    return (cross - 2.0 / (n - 2) * rows_dot + t_k * t_l / ((n - 1) * (n - 2))) / (n * (n - 3))
  off_diagonal = cross - c_k * t_l - c_l * t_k + n * (n - 1) * c_k * c_l
  return (off_diagonal + diag_dot) / (n - 1) ** 2


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
  mirror too (weight 2). Tiles shrink below `tile` until there are at least `devices` of them (so that no
  device only computes padding), and weight-0 tiles pad T to a multiple of `devices`.
  """
  blocks = -(-n // min(tile, n))
  while blocks * (blocks + 1) // 2 < devices and blocks < n:
    blocks += 1
  side = -(-n // blocks)
  pairs = [(i, j, 1 if i == j else 2) for i in range(blocks) for j in range(i, blocks)]
  pairs += [(0, 0, 0)] * (-len(pairs) % devices)
  return jnp.asarray(pairs, jnp.int32), side * blocks, side


def pad_axis(x, axis: int, size: int):
  """Zero-pads `axis` to `size`: zero rows add nothing to any Gram sum, zero layers are sliced off later."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def center(x):
  """x: [..., n, d] -> columns centered; twice, as the first pass leaves a mean of the order of the float32
  rounding of a large offset, which the features path's formula would read as signal."""
  x = x - x.mean(-2, keepdims=True)
  return x - x.mean(-2, keepdims=True)


def gram_features(x, debiased: bool):
  """x: [L, n, d] -> the features whose Grams the gram path builds: centered, and for the debiased estimator
  (shift invariant, so one centering pass is exact enough) moved by sigma / sqrt(n) per column (sigma^2 the
  column variance). Centering leaves E[x_id x_jd] = -sigma^2 / n for i != j, so the dot products of a small
  sample drift far from 0 as they accumulate over d and round on that scale; the move cancels it (n = 4,
  d = 2,000: 7e-6 -> 2e-6)."""
  mean = x.mean(-2, keepdims=True)
  if debiased:
    mean = mean + jnp.sqrt(jnp.mean((x - mean) ** 2, -2, keepdims=True) / x.shape[-2])
  return x - mean


def gram_shift(x, n: int):
  """x: [L, size, d], rows beyond n zero -> [L] c = -(mean off-diagonal entry of the Gram) =
  (tr K - 1'K1) / (n(n-1))."""
  total = jnp.sum(x, 1)
  return (jnp.sum(x * x, (1, 2)) - jnp.sum(total * total, -1)) / (n * (n - 1))


def shifted_tile(x, tile, shift, n: int, side: int):
  """x: [L, size, d] (gram_features; rows beyond n zero), tile: (I, J, weight), shift: [L] -> [L, side, side]
  block (I, J) of
  K^ = (K + shift)(11' - I): zero on the diagonal of K and on the padding rows and columns beyond n."""
  rows = lambda b: jax.lax.dynamic_slice_in_dim(x, tile[b] * side, side, axis=1)
  gram = jnp.einsum("aid,ajd->aij", rows(0), rows(1), precision=HIGHEST)
  i, j = tile[0] * side + jnp.arange(side), tile[1] * side + jnp.arange(side)
  keep = (i[:, None] != j[None, :]) & (i[:, None] < n) & (j[None, :] < n)
  return jnp.where(keep, gram + shift[:, None, None], 0.0)


def add_tile_rows(rows, tile, block, side: int):
  """rows: [L, size] += the share of K^ 1 in `block` [L, side, side] (tile (I, J, weight)): its row sums, and
  for an off-diagonal tile (weight 2) its column sums, the row sums of its mirror. Weight-0 tiles add 0."""
  def add(r, at, sums):
    old = jax.lax.dynamic_slice_in_dim(r, at * side, side, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(r, old + sums, at * side, axis=1)
  rows = add(rows, tile[0], jnp.where(tile[2] > 0, block.sum(2), 0.0))
  return add(rows, tile[1], jnp.where(tile[2] == 2, block.sum(1), 0.0))


class GramSums(NamedTuple):
  """Sums over the shifted Grams K^_a of every x layer and L^_b of every y layer (see shifted_tile):
  cross [La, Lb] = sum K^_a o L^_b; self_x [La] = sum K^_a o K^_a; self_y [Lb]; rows_x [La, size] = K^_a 1;
  rows_y [Lb, size]."""
  cross: jnp.ndarray
  self_x: jnp.ndarray
  self_y: jnp.ndarray
  rows_x: jnp.ndarray
  rows_y: jnp.ndarray


def hsic_from_sums(s: GramSums, diag_x, diag_y, shift_x, shift_y, n: int, debiased: bool) -> LinearHsic:
  """GramSums, Gram diagonals diag_x [La, size], diag_y [Lb, size] and the shifts -> LinearHsic."""
  ein = functools.partial(jnp.einsum, precision=HIGHEST)
  t_x, t_y = s.rows_x.sum(-1), s.rows_y.sum(-1)
  hsic = functools.partial(gram_hsic, n=n, debiased=debiased)
  return LinearHsic(
      xy=hsic(s.cross, ein("an,bn->ab", s.rows_x, s.rows_y), ein("an,bn->ab", diag_x, diag_y), t_x[:, None],
              t_y[None, :], shift_x[:, None], shift_y[None, :]),
      xx=hsic(s.self_x, jnp.sum(s.rows_x**2, -1), jnp.sum(diag_x**2, -1), t_x, t_x, shift_x, shift_x),
      yy=hsic(s.self_y, jnp.sum(s.rows_y**2, -1), jnp.sum(diag_y**2, -1), t_y, t_y, shift_y, shift_y))


def _tile_sums(tile, xs, ys, shift_x, shift_y, n: int, side: int) -> GramSums:
  """One tile's share of GramSums: the tile of K^_a of every x layer and L^_b of every y layer, built once;
  every pair's share of the products is one matmul of the flattened tiles."""
  k = shifted_tile(xs, tile, shift_x, n, side)
  l = shifted_tile(ys, tile, shift_y, n, side)
  w = tile[2].astype(xs.dtype)
  return GramSums(
      cross=w * jnp.einsum("aij,bij->ab", k, l, precision=HIGHEST),
      self_x=w * jnp.sum(k * k, (1, 2)), self_y=w * jnp.sum(l * l, (1, 2)),
      rows_x=add_tile_rows(jnp.zeros(xs.shape[:2], xs.dtype), tile, k, side),
      rows_y=add_tile_rows(jnp.zeros(ys.shape[:2], ys.dtype), tile, l, side))


def _gram_sums(tiles, xs, ys, shift_x, shift_y, n: int, side: int, axes) -> GramSums:
  """tiles: [T, 3] (see gram_tiles), xs: [La, size, da], ys: [Lb, size, db] -> GramSums, tile by tile.

  The first tile's sums start the scan's carry (so the carry varies over the same mesh axes as every step
  inside shard_map, ours or a caller's). With `axes`, partial sums are added across the devices that split
  the tiles.
  """
  sums = functools.partial(_tile_sums, xs=xs, ys=ys, shift_x=shift_x, shift_y=shift_y, n=n, side=side)
  step = lambda acc, tile: (jax.tree.map(jnp.add, acc, sums(tile)), None)
  out = jax.lax.scan(step, sums(tiles[0]), tiles[1:])[0]
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


def linear_hsic(xs, ys, debiased: bool, method: str, chunk_size: int, mesh: Optional[Mesh] = None) -> LinearHsic:
  """xs: [La, n, da], ys: [Lb, n, db] (preprocessed, not necessarily centered) -> LinearHsic.

  method is "gram" or "features" (see the module docstring). With a mesh, the gram path splits the tiles
  across all its devices and the feature path the x layers (inputs replicated); same numbers as without.
  """
  la, n, _ = xs.shape
  axes = sharding.axes(mesh) if mesh is not None else ()
  if method == "gram":
    xs, ys = gram_features(xs, debiased), gram_features(ys, debiased)
    tiles, size, side = gram_tiles(n, chunk_size, mesh.size if mesh is not None else 1)
    xs, ys = pad_axis(xs, 1, size), pad_axis(ys, 1, size)  # zero rows: masked out of every tile
    shift_x, shift_y = gram_shift(xs, n), gram_shift(ys, n)
    fn = functools.partial(_gram_sums, n=n, side=side, axes=axes)
    if mesh is not None:
      fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(axes),) + (P(),) * 4, out_specs=P())
      tiles = sharding.place(tiles, mesh, P(axes))
    sums = fn(tiles, xs, ys, shift_x, shift_y)
    return hsic_from_sums(sums, jnp.sum(xs * xs, -1), jnp.sum(ys * ys, -1), shift_x, shift_y, n, debiased)
  xs, ys = center(xs), center(ys)
  if mesh is None:
    cross = _feature_cross(xs, ys)
  else:
    cross = sharding.split_map(_feature_cross, mesh, [xs], [ys])[:la]
  dx, dy = jnp.sum(xs * xs, -1), jnp.sum(ys * ys, -1)  # [L, n] Gram diagonals
  tx, ty = dx.sum(-1), dy.sum(-1)
  hsic = functools.partial(hsic_from_traces, n=n, debiased=debiased)
  return LinearHsic(
      xy=hsic(cross, jnp.einsum("an,bn->ab", dx, dy, precision=HIGHEST), tx[:, None], ty[None, :]),
      xx=hsic(_feature_self(xs), jnp.sum(dx * dx, -1), tx, tx),
      yy=hsic(_feature_self(ys), jnp.sum(dy * dy, -1), ty, ty))


@functools.partial(jax.jit, static_argnames=("prep", "debiased", "method", "chunk_size", "mesh"))
def _cka_matrix(xs, ys, prep, debiased, method, chunk_size, mesh):
  xs, ys = apply_preprocess(xs, prep), apply_preprocess(ys, prep)
  return cka_from_hsic(linear_hsic(xs, ys, debiased, method, chunk_size, mesh))


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
  see checks.compute_dtype). Traceable (jit, vmap, lax.map) without a mesh.
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
  out = _cka_matrix(xs, ys, as_preprocess(preprocess), bool(debiased), method, int(chunk_size), mesh)
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
    h = linear_hsic(batch[0], batch[1], debiased, method, batch_size)
    return jax.tree.map(jnp.add, carry, h), None

  zeros = LinearHsic(jnp.zeros((la, lb), xs.dtype), jnp.zeros((la,), xs.dtype), jnp.zeros((lb,), xs.dtype))
  return cka_from_hsic(jax.lax.scan(step, zeros, (split(xs), split(ys)))[0])


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
