"""Tidy table rows as grids over layer pairs, and a grid's best cell: what the tables step takes maxima of and the
plots draw."""
from __future__ import annotations

import collections
from typing import NamedTuple, Sequence

import numpy as np


class Grid(NamedTuple):
  """One group of tidy rows as matrices over layer pairs (A's layers on rows).

  layers_a [La], layers_b [Lb]: layer indices, ascending; depths_a [La], depths_b [Lb]: relative depths;
  values: column name -> [La, Lb] float64, the mean over seeds; seeds: the seeds present.
  """
  layers_a: np.ndarray
  layers_b: np.ndarray
  depths_a: np.ndarray
  depths_b: np.ndarray
  values: dict
  seeds: tuple


def _layer_depths(cells, layer: str, depth: str, where: str) -> tuple[np.ndarray, np.ndarray]:
  depths = {}
  for row in cells:
    known = depths.setdefault(row[layer], row[depth])
    if not np.isclose(known, row[depth], rtol=0, atol=1e-9):
      raise ValueError(f"{where}: {layer}={row[layer]} has two depths ({known} and {row[depth]}); a layer's "
                       "relative depth must be the same in every row.")
  layers = np.array(sorted(depths), dtype=np.int64)
  return layers, np.array([depths[l] for l in layers], dtype=np.float64)


def layer_grids(rows: Sequence[dict], keys: Sequence[str], values: Sequence[str]) -> dict[tuple, Grid]:
  """Groups tidy rows by the `keys` columns into `Grid`s of the `values` columns, in sorted key order.

  Every seed of a group must fill the whole grid of the group's layers (a mean or max over a partial grid
  would silently change meaning); a cell may appear once per seed. Values are averaged over seeds per cell.
  """
  need = set(keys) | set(values) | {"layer_a", "layer_b", "depth_a", "depth_b", "seed"}
  groups = collections.defaultdict(dict)
  for i, row in enumerate(rows):
    missing = need - set(row)
    if missing:
      raise ValueError(f"table row {i} lacks columns {sorted(missing)}; write tables with the columns in "
                       "experiments/outputs.py.")
    key = tuple(row[k] for k in keys)
    cell = (row["layer_a"], row["layer_b"], row["seed"])
    if cell in groups[key]:
      raise ValueError(f"{dict(zip(keys, key))}: layers ({cell[0]}, {cell[1]}) appear twice for seed {cell[2]}; "
                       "each layer pair needs exactly one row per seed.")
    groups[key][cell] = row
  out = {}
  for key in sorted(groups):
    cells = groups[key]
    where = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
    layers_a, depths_a = _layer_depths(cells.values(), "layer_a", "depth_a", where)
    layers_b, depths_b = _layer_depths(cells.values(), "layer_b", "depth_b", where)
    seeds = tuple(sorted({c[2] for c in cells}))
    stacked = {v: np.full((len(seeds), len(layers_a), len(layers_b)), np.nan) for v in values}
    index_a = {l: i for i, l in enumerate(layers_a.tolist())}
    index_b = {l: i for i, l in enumerate(layers_b.tolist())}
    index_s = {s: i for i, s in enumerate(seeds)}
    for (la, lb, seed), row in cells.items():
      for v in values:
        stacked[v][index_s[seed], index_a[la], index_b[lb]] = row[v]
    expected = len(seeds) * len(layers_a) * len(layers_b)
    if len(cells) != expected:
      raise ValueError(f"{where}: {expected - len(cells)} of {expected} (seed, layer pair) cells are missing; "
                       "every seed must cover all layer pairs of the group (finish or rerun the run).")
    out[key] = Grid(layers_a, layers_b, depths_a, depths_b, {v: s.mean(0) for v, s in stacked.items()}, seeds)
  return out


def best_cell(matrix: np.ndarray) -> tuple[int, int]:
  """matrix [La, Lb] -> (row, col) of the largest finite value (first in row-major order on ties)."""
  if not np.isfinite(matrix).any():
    raise ValueError("the matrix has no finite value to take a maximum of.")
  return tuple(int(i) for i in np.unravel_index(np.argmax(np.where(np.isfinite(matrix), matrix, -np.inf)),
                                                 matrix.shape))
