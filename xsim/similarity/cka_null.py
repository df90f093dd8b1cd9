"""Permutation null of linear CKA for every layer pair: the Grams once, then only reordered per permutation.

Same statistics and formulas as cka.py's gram path (shifted zero-diagonal Grams K^, see its docstring),
so its float32 accuracy holds here too.
"""
from __future__ import annotations

import functools
from typing import Optional

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xsim import sharding
from xsim.resampling import permutations
from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.cka import (GramSums, add_tile_rows, cka_from_hsic, gram_features, gram_shift, gram_tiles,
                                 hsic_from_sums, pad_axis, shifted_tile)
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess


def _layer_stats(xs, ys, tiles, n: int, side: int):
  """Per-layer statistics, layers first (so devices that split the layers can gather them): K^ of every x
  layer as its tiles on or above the diagonal, each flattened [La, T, side^2], its row sums, diagonal,
  shift and sum of squares; L^ of every y layer whole [Lb, size, size] and the same."""
  size = xs.shape[1]
  shift_x, shift_y = gram_shift(xs, n), gram_shift(ys, n)
  k_tiles = jax.lax.map(lambda t: shifted_tile(xs, t, shift_x, n, side), tiles)  # [T, La, side, side]
  rows_x = jax.lax.scan(lambda r, tk: (add_tile_rows(r, tk[0], tk[1], side), None),
                        jnp.zeros_like(xs[..., 0]), (tiles, k_tiles))[0]
  weights = tiles[:, 2].astype(xs.dtype)
  self_x = jnp.einsum("t,taij,taij->a", weights, k_tiles, k_tiles, precision=HIGHEST)
  l = shifted_tile(ys, jnp.asarray([0, 0, 1]), shift_y, n, size)  # the whole Gram as one tile
  x_side = (jnp.moveaxis(k_tiles, 0, 1).reshape(xs.shape[0], len(tiles), side * side), rows_x,
            jnp.sum(xs * xs, -1), shift_x, self_x)
  y_side = (l, l.sum(2), jnp.sum(ys * ys, -1), shift_y, jnp.sum(l * l, (1, 2)))
  return x_side, y_side


def _null_block(xs, ys, perms, *, tiles, n: int, side: int, debiased: bool, mesh: Optional[Mesh]):
  """xs: [La', size, da], ys: [Lb', size, db] centered and padded, perms: [P', size] -> [P', La, Lb] CKA.

  With a mesh, this device's share of the layers builds its Grams and all devices exchange them; each then
  runs its share of the permutations on all layers.
  """
  x_side, y_side = _layer_stats(xs, ys, tiles, n, side)
  if mesh is not None:
    x_side, y_side = sharding.gather((x_side, y_side), mesh)
  (k_tiles, rows_x, diag_x, shift_x, self_x), (l, rows_y, diag_y, shift_y, self_y) = x_side, y_side
  # K as its flattened upper tiles, so a tile's pair sums are one plain [La, side^2] x [side^2, Lb] matmul;
  # L whole with its layers last, so a permuted tile gathers whole [Lb] vectors (on CPU, other layouts made
  # the gather or the contraction several times slower).
  k_tiles, l = jnp.moveaxis(k_tiles, 1, 0), jnp.moveaxis(l, 0, -1)

  def one(perm):
    # The permuted y's L^ is L^[perm][:, perm], symmetric like K^: the weighted upper tiles give its product.
    def step(_, tile_and_k):
      tile, k_t = tile_and_k
      rows = jax.lax.dynamic_slice_in_dim(perm, tile[0] * side, side)
      cols = jax.lax.dynamic_slice_in_dim(perm, tile[1] * side, side)
      l_t = l[rows[:, None], cols[None, :]].reshape(side * side, -1)
      return None, tile[2].astype(k_t.dtype) * jnp.dot(k_t, l_t, precision=HIGHEST)
    cross = jax.lax.scan(step, None, (tiles, k_tiles))[1].sum(0)
    sums = GramSums(cross=cross, self_x=self_x, self_y=self_y, rows_x=rows_x, rows_y=rows_y[:, perm])
    return cka_from_hsic(hsic_from_sums(sums, diag_x, diag_y[:, perm], shift_x, shift_y, n, debiased))

  # One permutation at a time: vmapping several made the gathers and matmuls slower on CPU.
  return jax.lax.map(one, perms)


@functools.partial(jax.jit, static_argnames=("debiased", "prep", "chunk_size", "mesh"))
def _cka_null(xs, ys, perms, debiased, prep, chunk_size, mesh):
  xs = gram_features(apply_preprocess(xs, prep), debiased)
  ys = gram_features(apply_preprocess(ys, prep), debiased)
  (la, n, _), lb, num = xs.shape, ys.shape[0], perms.shape[0]
  tiles, size, side = gram_tiles(n, chunk_size)
  # Zero rows and columns of the padded Grams add nothing; padded indices map to themselves.
  xs, ys = pad_axis(xs, 1, size), pad_axis(ys, 1, size)
  perms = jnp.concatenate([perms, jnp.broadcast_to(jnp.arange(n, size), (num, size - n))], 1)
  block = functools.partial(_null_block, tiles=tiles, n=n, side=side, debiased=debiased, mesh=mesh)
  if mesh is None:
    return block(xs, ys, perms)
  return sharding.split_map(block, mesh, [xs, ys, perms])[:num, :la, :lb]


def cka_matrix_null(xs, ys, *, key: jax.Array, num_permutations: int = 200, debiased: bool = True,
                    preprocess: str | Preprocess = "none", chunk_size: int = 512, mesh: Optional[Mesh] = None,
                    dtype=None) -> jnp.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [P, La, Lb] linear CKA with the rows of all ys layers permuted.

  Same numbers as permutation_null(cka_matrix, ...) with the same key, much faster: the Grams are built
  once and each permutation only reorders tiles of L_b. Memory: about (La / 2 + Lb) n^2 floats for the
  Grams (K as its upper tiles) plus Lb * chunk_size^2 for a permuted tile, on every device. `mesh` splits
  the Gram building (by layers) and the permutations over all its devices; same numbers as without.
  """
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  n = checks.same_samples(xs, ys, min_n=4 if debiased else 2)
  if min(chunk_size, num_permutations) < 1:
    raise ValueError(f"chunk_size={chunk_size} and num_permutations={num_permutations} must be positive.")
  if mesh is not None:
    replicated = NamedSharding(mesh, P())
    xs, ys = jax.device_put(xs, replicated), jax.device_put(ys, replicated)
  out = _cka_null(xs, ys, permutations(key, num_permutations, n), bool(debiased), as_preprocess(preprocess),
                  int(chunk_size), mesh)
  chex.assert_shape(out, (num_permutations, xs.shape[0], ys.shape[0]))
  return out
