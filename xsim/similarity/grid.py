"""Every similarity measure over a whole layer grid, each one compiled computation, and the statistics of the
grid's maximum: its permutation null and its subsampling interval.

xs: [La, n, da] and ys: [Lb, n, db] hold the layers of two models on the same n samples. CKA comes from
cka.py's all-pairs statistics; every other measure splits into a per-layer summary, built once per layer
(La + Lb of them, not 2 La Lb), and a pair step over all pairs: mutual k-NN and RSA are one matmul of the
flattened summaries, CKNNA, Procrustes and SVCCA a map over the x layers, each against all y layers at once.
With a mesh, the layers (CKA: the Gram tiles) are split over its devices; the nulls and intervals split
their resamples. Summaries stay in memory for the whole grid: (La + Lb) n^2 floats for mutual k-NN and RSA,
twice that for CKNNA, (La + Lb) n min(n, d) for Procrustes and SVCCA, on every device.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from xsim import resampling, sharding
from xsim.similarity import cca, checks, neighbors, procrustes, rsa, stats
from xsim.similarity.cka import cka_matrix
from xsim.similarity.cka_null import cka_matrix_null
from xsim.similarity.preprocess import Preprocess, as_preprocess



@dataclasses.dataclass(frozen=True)
class MeasureInfo:
  """A layer-grid measure: its options with their defaults (those of the per-pair functions); gram: CKA, computed
  from Gram tiles (cka_matrix, cka_matrix_null) rather than per-layer summaries; with_statistics: studies report
  the permutation null and the subsampling CI of its grid max."""
  options: dict
  gram: bool = False
  with_statistics: bool = False


# The measures, in report order.
MEASURES = {
    "cka": MeasureInfo(dict(method="auto", chunk_size=512), gram=True, with_statistics=True),
    "cka_debiased": MeasureInfo(dict(method="auto", chunk_size=512), gram=True, with_statistics=True),
    "mutual_knn": MeasureInfo(dict(k=10), with_statistics=True),
    "cknna": MeasureInfo(dict(k=10, debiased=True), with_statistics=True),
    "procrustes": MeasureInfo({}),
    "svcca": MeasureInfo(dict(keep=0.99, dims=None)),
    "rsa": MeasureInfo(dict(rdm="correlation", compare="spearman")),
}
GRID_MEASURES = tuple(MEASURES)
# Plain Python values, so equal settings hash alike (one compilation) whatever numeric types they came in.
_AS = {"chunk_size": int, "k": int, "debiased": bool, "keep": float, "dims": lambda v: None if v is None else int(v),
       "method": str, "rdm": str, "compare": str}


class LayerMeasure(NamedTuple):
  """A measure built from per-layer summaries.

  layer: x [n, d] -> F, a tuple of arrays; pairs: (*F_x, *F_y), each stacked over layers ([La, ...] and
  [Lb, ...]) -> [La, Lb]; sample_axes: for each array of F, how many leading axes index samples (a row
  permutation of the layer moves those, so nulls permute summaries instead of rebuilding them).
  """
  layer: Callable
  pairs: Callable
  sample_axes: tuple


@dataclasses.dataclass(frozen=True)
class GridMeasure:
  """measure(xs [La, n, da], ys [Lb, n, db]) -> [La, Lb]: a traceable function of arrays (no mesh), hashable
  by its settings, so statistics compile it once. Build it with grid_measure."""
  name: str
  prep: Preprocess
  options: tuple  # ((option, value), ...), every option of the measure

  def option(self, key: str):
    return dict(self.options)[key]

  def check(self, n: int, da: int, db: int):
    """Raises if n samples (and widths da, db) cannot give this measure (k-NN needs k < n, ...)."""
    o = dict(self.options)
    min_n = {"cka_debiased": 4, "rsa": 3, "cknna": 4 if o.get("debiased") else 2}.get(self.name, 2)
    if n < min_n:
      raise ValueError(f"{self.name} needs at least {min_n} samples, got n={n}.")
    if "k" in o:
      neighbors.check_k(o["k"], n)
    if self.name == "svcca":
      cca.check_svcca(o["keep"], o["dims"], min(n, da, db))

  def layer_measure(self) -> LayerMeasure:
    o, prep = dict(self.options), self.prep
    if self.name == "mutual_knn":
      return LayerMeasure(lambda x: neighbors.gram_and_mask(x, o["k"], prep)[1:],
                          functools.partial(neighbors.mutual_overlap, k=o["k"]), (2,))
    if self.name == "cknna":
      def layer(x):
        gram, mask = neighbors.gram_and_mask(x, o["k"], prep)
        return gram, mask, neighbors.cknna_self(gram, mask, o["debiased"])
      return LayerMeasure(layer, functools.partial(_cknna_pairs, debiased=o["debiased"]), (2, 2, 0))
    if self.name == "procrustes":
      return LayerMeasure(lambda x: procrustes.procrustes_layer(x, prep), procrustes.procrustes_pairs, (1, 0))
    if self.name == "svcca":
      return LayerMeasure(lambda x: cca.svcca_layer(x, o["keep"], o["dims"], prep), cca.svcca_pairs, (1, 0))
    if self.name == "rsa":
      return LayerMeasure(lambda x: (rsa.rsa_layer(x, o["rdm"], o["compare"], prep),), rsa.rsa_pairs, (2,))
    raise ValueError(f"{self.name} is not built from per-layer summaries.")

  def __call__(self, xs, ys) -> jnp.ndarray:
    if MEASURES[self.name].gram:
      return cka_matrix(xs, ys, debiased=self.name == "cka_debiased", preprocess=self.prep,
                        method=self.option("method"), chunk_size=self.option("chunk_size"), dtype=xs.dtype)
    self.check(xs.shape[1], xs.shape[2], ys.shape[2])
    return _layer_grid(self, xs, ys, None)


@dataclasses.dataclass(frozen=True)
class _GridMax:
  """(xs, ys) -> the grid's max, hashable like its GridMeasure (one compilation per setting)."""
  grid: GridMeasure

  def __call__(self, xs, ys):
    return self.grid(xs, ys).max()


def grid_measure(measure: str, *, preprocess: str | Preprocess = "none", **options) -> GridMeasure:
  """A GridMeasure for `measure` (one of GRID_MEASURES) with its options (see MEASURES; unset ones take the
  defaults of the per-pair functions) after `preprocess`."""
  if measure not in GRID_MEASURES:
    raise ValueError(f"measure={measure!r} is unknown; use one of {GRID_MEASURES}.")
  allowed = MEASURES[measure].options
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"{measure} takes options {sorted(allowed)}, not {unknown}.")
  o = {key: _AS[key](value) for key, value in {**allowed, **options}.items()}
  if MEASURES[measure].gram and o["chunk_size"] < 1:
    raise ValueError(f"chunk_size={o['chunk_size']} must be a positive Gram tile side, e.g. 512.")
  if measure == "svcca":
    cca.check_svcca(o["keep"], o["dims"])
  if measure == "rsa":
    rsa.check_kinds(o["rdm"], o["compare"])
  return GridMeasure(measure, as_preprocess(preprocess), tuple(sorted(o.items())))


def _cknna_pairs(grams_x, masks_x, selfs_x, grams_y, masks_y, selfs_y, debiased: bool):
  """-> [La, Lb] CKNNA, one x layer against all y layers at a time."""
  cross = jax.vmap(neighbors.cknna_cross, in_axes=(None, None, 0, 0, None))
  def row(args):
    gram, mask, self_x = args
    return cross(gram, mask, grams_y, masks_y, debiased) / jnp.sqrt(self_x * selfs_y)
  return jax.lax.map(row, (grams_x, masks_x, selfs_x))


@functools.partial(jax.jit, static_argnames=("grid", "mesh"))
def _layer_grid(grid: GridMeasure, xs, ys, mesh: Optional[Mesh]):
  lm = grid.layer_measure()

  def block(xb, yb):
    fx, fy = jax.lax.map(lm.layer, xb), jax.lax.map(lm.layer, yb)
    if mesh is not None:
      fy = sharding.gather(fy, mesh)  # every device pairs its x layers with all y layers
    return lm.pairs(*fx, *fy)

  if mesh is None:
    return block(xs, ys)
  return sharding.split_map(block, mesh, [xs, ys])[:xs.shape[0], :ys.shape[0]]


def _permute(summary, perm, sample_axes):
  """Rows of one layer permuted, in its stacked summary [L, ...]: each array's sample axes follow the layer axis."""
  out = []
  for a, s in zip(summary, sample_axes):
    for axis in range(1, 1 + s):
      a = jnp.take(a, perm, axis=axis)
    out.append(a)
  return tuple(out)


@functools.partial(jax.jit, static_argnames=("grid", "batch_size", "mesh"))
def _layer_null_max(grid: GridMeasure, xs, ys, perms, batch_size: Optional[int], mesh: Optional[Mesh]):
  lm = grid.layer_measure()

  def block(xb, yb, pb):
    fx, fy = jax.lax.map(lm.layer, xb), jax.lax.map(lm.layer, yb)
    if mesh is not None:
      fx, fy = sharding.gather((fx, fy), mesh)  # padded layers repeat real ones: maxima unchanged
    one = lambda perm: lm.pairs(*fx, *_permute(fy, perm, lm.sample_axes)).max()
    return jax.lax.map(one, pb, batch_size=batch_size)

  if mesh is None:
    return block(xs, ys, perms)
  return sharding.split_map(block, mesh, [xs, ys, perms])[:perms.shape[0]]


def _inputs(measure, xs, ys, preprocess, dtype, options):
  grid = grid_measure(measure, preprocess=preprocess, **options)
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  n = checks.same_samples(xs, ys)
  return grid, xs, ys, n


def similarity_grid(measure: str, xs, ys, *, preprocess: str | Preprocess = "none", mesh: Optional[Mesh] = None,
                    dtype=None, **options) -> jnp.ndarray:
  """xs: [La, n, da], ys: [Lb, n, db] -> [La, Lb] `measure` (one of GRID_MEASURES) of every layer pair, in one
  compiled call; the same values as the per-pair functions (cka, mutual_knn, cknna, procrustes, svcca, rsa).

  options: see MEASURES, e.g. k=10 for mutual_knn. `mesh` splits the work over all its devices (same numbers).
  """
  grid, xs, ys, n = _inputs(measure, xs, ys, preprocess, dtype, options)
  grid.check(n, xs.shape[2], ys.shape[2])
  if MEASURES[measure].gram:
    out = cka_matrix(xs, ys, debiased=measure == "cka_debiased", preprocess=grid.prep,
                     method=grid.option("method"), chunk_size=grid.option("chunk_size"), mesh=mesh, dtype=dtype)
  else:
    out = _layer_grid(grid, xs, ys, mesh)
  chex.assert_shape(out, (xs.shape[0], ys.shape[0]))
  return out


def grid_null_max(measure: str, xs, ys, *, key: jax.Array, num_permutations: int = 200,
                  preprocess: str | Preprocess = "none", mesh: Optional[Mesh] = None,
                  batch_size: Optional[int] = None, dtype=None, **options) -> jnp.ndarray:
  """-> [P] max over the [La, Lb] grid of `measure` with the rows of all ys layers permuted (the layers the
  caller passes, e.g. those scored).

  The same numbers as permutation_null(grid_measure(...), key=key).max((1, 2)), much faster: every layer's
  summary (CKA: Gram, by cka_matrix_null whatever `method`) is built once and each permutation only reorders
  y's. `mesh` splits the summaries
  (by layer) and the permutations over all its devices; batch_size vmaps that many permutations at a time
  (None: one at a time, fastest on CPU).
  """
  grid, xs, ys, n = _inputs(measure, xs, ys, preprocess, dtype, options)
  grid.check(n, xs.shape[2], ys.shape[2])
  if num_permutations < 1:
    raise ValueError(f"num_permutations={num_permutations} must be positive.")
  if MEASURES[measure].gram:
    null = cka_matrix_null(xs, ys, key=key, num_permutations=num_permutations, debiased=measure == "cka_debiased",
                           preprocess=grid.prep, chunk_size=grid.option("chunk_size"), mesh=mesh, dtype=dtype)
    return null.max((1, 2))
  return _layer_null_max(grid, xs, ys, resampling.permutations(key, num_permutations, n), batch_size, mesh)


def on_subsamples(grid: GridMeasure, n: int, size: int) -> GridMeasure:
  """The measure as computed on subsamples of `size` of n rows. A neighbourhood of k rows covers k / n of the data,
  so the neighbour measures take round(k * size / n) neighbours there: with a fixed k the subsample values drift
  from the estimate and the interval misses it (mutual k-NN, n = 384, k = 10: 2 of 20 intervals covered the mean
  of independent draws with a fixed k, 18 of 20 scaled)."""
  o = dict(grid.options)
  if "k" not in o:
    return grid
  return dataclasses.replace(grid, options=tuple(sorted(dict(o, k=max(1, round(o["k"] * size / n))).items())))


def grid_subsample_max(measure: str, xs, ys, *, key: jax.Array, num_resamples: int = 200,
                       size: Optional[int] = None, preprocess: str | Preprocess = "none",
                       mesh: Optional[Mesh] = None, batch_size: Optional[int] = 8, dtype=None, **options):
  """-> [R] max over the [La, Lb] grid of `measure` on `size` rows drawn without replacement (default n // 2),
  the rows of stats.subsample with the same key; every layer's summary is rebuilt on each subsample, with
  its preprocessing (neighbour measures with k scaled to the subsample, see on_subsamples). `mesh` splits the
  subsamples over all its devices."""
  grid, xs, ys, n = _inputs(measure, xs, ys, preprocess, dtype, options)
  size = resampling.subsample_size(size, n)
  grid = on_subsamples(grid, n, size)
  grid.check(size, xs.shape[2], ys.shape[2])
  return stats.subsample(_GridMax(grid), xs, ys, key=key, num_resamples=num_resamples, size=size,
                         batch_size=batch_size, mesh=mesh, dtype=dtype)


def grid_subsamples(measure: str, xs, ys, *, key: jax.Array, num_resamples: int = 200, size: Optional[int] = None,
                    preprocess: str | Preprocess = "none", mesh: Optional[Mesh] = None,
                    batch_size: Optional[int] = 8, dtype=None, **options):
  """-> [R, La, Lb]: the whole grid on each of grid_subsample_max's subsamples (same rows, same key), for what the
  max alone does not say: each source layer's best match, the values at matched depths."""
  grid, xs, ys, n = _inputs(measure, xs, ys, preprocess, dtype, options)
  size = resampling.subsample_size(size, n)
  grid = on_subsamples(grid, n, size)
  grid.check(size, xs.shape[2], ys.shape[2])
  return stats.subsample(grid, xs, ys, key=key, num_resamples=num_resamples, size=size, batch_size=batch_size,
                         mesh=mesh, dtype=dtype)


def grid_max_ci(measure: str, xs, ys, *, key: jax.Array, num_resamples: int = 200, level: float = 0.95,
                size: Optional[int] = None, preprocess: str | Preprocess = "none", mesh: Optional[Mesh] = None,
                batch_size: Optional[int] = 8, dtype=None, **options):
  """-> (low, high): the subsampling interval (xsim.resampling.subsample_interval) of the max over the [La, Lb]
  grid of `measure`, from that max and grid_subsample_max's values. `mesh` splits the subsamples over all its
  devices."""
  estimate = similarity_grid(measure, xs, ys, preprocess=preprocess, mesh=mesh, dtype=dtype, **options).max()
  samples = grid_subsample_max(measure, xs, ys, key=key, num_resamples=num_resamples, size=size,
                               preprocess=preprocess, mesh=mesh, batch_size=batch_size, dtype=dtype, **options)
  return resampling.subsample_interval(estimate, samples, xs.shape[1], size=size, level=level)
