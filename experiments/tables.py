"""The tables step: a run's results turned into tidy rows and headline numbers, once.

Unit entries (experiments/units.py) -> the tidy tables of experiments/results.py, each pair's statistics per
measure and seed (max, mean, argmax, permutation null and subsampling CI of the max over the scored layer pairs),
and the headline numbers (seed-averaged grids' maxima and means, within / cross-family groups and ratios, best
maps, best probes). Everything is written to the workdir; the report, the plots and `experiments.compare` only
read and draw it.

summary.json:
  {"pairs": {"A|B": {"relation", "num_samples", "measures": {"MEASURE|PREP": stats of the first seed},
                     "measures_by_seed": {"SEED": {"MEASURE|PREP": stats}}}},
   "headline": {"similarity": [...], "groups": [...], "ratios": [...], "transfer": [...], "probes": [...]},
   "seeds", "min_layer", "num_texts", "ci_level", "activation_stats": {MODEL: per-layer stats}, "work": {...}}
  stats = {"max", "mean", "argmax": [layer_a, layer_b], "null_max_q95", "p_value", "max_ci": [lo, hi]} (the last
  three for measures with statistics).
"""
from __future__ import annotations

import collections
from typing import NamedTuple, Optional, Sequence

import numpy as np

from experiments.study import RELATIONS
from xsim import layer_select

CI_LEVEL = 0.95


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


def relation_rank(relation: str) -> int:
  """Sort order of relations: within-family, cross-family, random-init baseline."""
  if relation not in RELATIONS:
    raise ValueError(f"relation {relation!r} is unknown; tables use one of {RELATIONS}.")
  return RELATIONS.index(relation)


def scored_rows(rows: Sequence[dict], min_layer: int) -> list[dict]:
  """The table rows whose layer pair counts for maxima, means and best pairs (xsim.layer_select.is_scored)."""
  return [r for r in rows if layer_select.is_scored(r["layer_a"], r["layer_b"], min_layer)]


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
                       "experiments/results.py.")
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


_ACCURACIES = ("acc_mapped", "acc_mapped_lo", "acc_mapped_hi", "acc_shuffled", "acc_target", "acc_source",
               "acc_majority")


def best_probe_rows(rows: Sequence[dict]) -> list[dict]:
  """-> for each (task, source, target, seed), the probes.csv row with the highest acc_mapped, plus
  "num_layer_pairs" (how many layer pairs it was chosen from), sorted by task, relation, source, target, seed."""
  groups = collections.defaultdict(list)
  for i, row in enumerate(rows):
    bad = [k for k in _ACCURACIES if not 0.0 <= row[k] <= 1.0]
    if bad:
      raise ValueError(f"probes row {i} has {', '.join(f'{k}={row[k]}' for k in bad)} outside [0, 1]; "
                       "accuracies are fractions, not percentages.")
    groups[(row["task"], row["source"], row["target"], row["seed"])].append(row)
  best = [dict(max(g, key=lambda r: r["acc_mapped"]), num_layer_pairs=len(g)) for g in groups.values()]
  return sorted(best, key=lambda r: (r["task"], relation_rank(r["relation"]), r["source"], r["target"], r["seed"]))


def _relations(rows: Sequence[dict], a: str, b: str, table: str) -> dict[tuple, str]:
  """-> {(rows' a, rows' b): relation}, refusing a pair listed under two relations."""
  out = {}
  for row in rows:
    pair = (row[a], row[b])
    if out.setdefault(pair, row["relation"]) != row["relation"]:
      raise ValueError(f"{table}: pair {pair} appears as both {out[pair]!r} and {row['relation']!r}; a pair has "
                       "one relation.")
    relation_rank(row["relation"])
  return out


def _seed_ranges(rows: Sequence[dict], keys: tuple, value: str) -> dict:
  """-> {key: (lowest, highest) over seeds of the grid's max of `value`}, for groups with several seeds."""
  by_seed = layer_grids(rows, keys + ("seed",), (value,))
  maxima = {}
  for key, grid in by_seed.items():
    v = grid.values[value]
    maxima.setdefault(key[:-1], []).append(float(v[np.isfinite(v)].max()) if np.isfinite(v).any() else np.nan)
  return {key: (min(m), max(m)) for key, m in maxima.items() if len(m) > 1}


def headline_numbers(similarity_rows: Sequence[dict]) -> dict:
  """similarity.csv rows (scored layer pairs) -> the similarity numbers of the report.

  {"pairs":  {(model_a, model_b, measure, preprocess): {"relation", "max", "mean", "argmax": (layer_a, layer_b),
              "argmax_depth": (depth_a, depth_b), "layers": (La, Lb), "num_seeds",
              "max_seed_range": (lowest, highest) of the per-seed maxima, None for one seed}},
   "groups": {(measure, preprocess, relation): {"num_pairs", "mean_max", "mean_mean"}},
   "ratios": {(measure, preprocess): {"mean": mean_mean within / cross, "max": mean_max within / cross}}}
  max and mean are over all layer pairs of the grid averaged over seeds; a grid with a non-finite cell gets
  NaN max/mean and argmax None. A ratio is NaN where the cross-family value is <= 0 (debiased CKA can be).
  Keys are in report order: measure, preprocess, relation (within, cross, random), models.
  """
  relation = _relations(similarity_rows, "model_a", "model_b", "similarity.csv")
  keys = ("model_a", "model_b", "measure", "preprocess")
  grids = layer_grids(similarity_rows, keys, ("value",))
  seed_ranges = _seed_ranges(similarity_rows, keys, "value")
  order = sorted(grids, key=lambda k: (k[2], k[3], relation_rank(relation[k[:2]]), k[0], k[1]))
  pairs = {}
  for key in order:
    grid = grids[key]
    v = grid.values["value"]
    finite = bool(np.isfinite(v).all())
    i, j = best_cell(v) if finite else (None, None)
    pairs[key] = {
        "relation": relation[key[:2]], "max": float(v.max()) if finite else float("nan"),
        "mean": float(v.mean()) if finite else float("nan"),
        "argmax": (int(grid.layers_a[i]), int(grid.layers_b[j])) if finite else None,
        "argmax_depth": (float(grid.depths_a[i]), float(grid.depths_b[j])) if finite else None,
        "layers": v.shape, "num_seeds": len(grid.seeds), "max_seed_range": seed_ranges.get(key)}
  groups = {}
  for (_, _, measure, prep), p in pairs.items():
    groups.setdefault((measure, prep, p["relation"]), []).append(p)
  groups = {k: {"num_pairs": len(ps), "mean_max": float(np.mean([p["max"] for p in ps])),
                "mean_mean": float(np.mean([p["mean"] for p in ps]))} for k, ps in groups.items()}
  ratios = {}
  for (measure, prep, rel), g in groups.items():
    cross = groups.get((measure, prep, "cross"))
    if rel == "within" and cross is not None:
      ratio = lambda s: g[s] / cross[s] if cross[s] > 0 else float("nan")
      ratios[(measure, prep)] = {"mean": ratio("mean_mean"), "max": ratio("mean_max")}
  return {"pairs": pairs, "groups": groups, "ratios": ratios}


def transfer_numbers(transfer_rows: Sequence[dict]) -> dict:
  """transfer.csv rows (scored layer pairs) -> {(source, target, method): {"relation", "best": (layer_a, layer_b),
  "best_depth", "r2", "r2_shuffled", "r2_mean" (all three at the best layer pair), "r2_shuffled_max" (over all
  layer pairs: the floor a max over the grid must beat), "r2_grid_mean", "num_seeds", "r2_seed_range" ((lowest,
  highest) per-seed best R^2, None for one seed)}}, cells averaged over seeds."""
  relation = _relations(transfer_rows, "source", "target", "transfer.csv")
  keys = ("source", "target", "method")
  grids = layer_grids(transfer_rows, keys, ("r2", "r2_shuffled", "r2_mean"))
  seed_ranges = _seed_ranges(transfer_rows, keys, "r2")
  out = {}
  for key in sorted(grids, key=lambda k: (relation_rank(relation[k[:2]]), k)):
    grid, v = grids[key], grids[key].values
    if not np.isfinite(v["r2"]).any():
      raise ValueError(f"transfer.csv: {key} has no finite r2 in any layer pair; rerun that map.")
    i, j = best_cell(v["r2"])
    out[key] = {"relation": relation[key[:2]], "best": (int(grid.layers_a[i]), int(grid.layers_b[j])),
                "best_depth": (float(grid.depths_a[i]), float(grid.depths_b[j])), "r2": float(v["r2"][i, j]),
                "r2_shuffled": float(v["r2_shuffled"][i, j]), "r2_mean": float(v["r2_mean"][i, j]),
                "r2_shuffled_max": float(np.max(v["r2_shuffled"])), "r2_grid_mean": float(np.mean(v["r2"])),
                "num_seeds": len(grid.seeds), "r2_seed_range": seed_ranges.get(key)}
  return out


def probe_numbers(probe_rows: Sequence[dict]) -> dict:
  """probes.csv rows (scored layer pairs) -> {(task, source, target): {"relation", "best": (layer_a, layer_b),
  "acc_mapped", "acc_shuffled", "acc_target", "acc_source", "acc_majority" (at the layer pair with the best
  seed-mean mapped accuracy), "num_seeds"}}."""
  relation = _relations(probe_rows, "source", "target", "probes.csv")
  columns = ("acc_mapped", "acc_shuffled", "acc_target", "acc_source", "acc_majority")
  grids = layer_grids(probe_rows, ("task", "source", "target"), columns)
  out = {}
  for key in sorted(grids, key=lambda k: (k[0], relation_rank(relation[k[1:]]), k)):
    grid = grids[key]
    i, j = best_cell(grid.values["acc_mapped"])
    out[key] = {"relation": relation[key[1:]], "best": (int(grid.layers_a[i]), int(grid.layers_b[j])),
                **{c: float(grid.values[c][i, j]) for c in columns}, "num_seeds": len(grid.seeds)}
  return out


def _records(numbers: dict, names: Sequence[str]) -> list[dict]:
  """{tuple key: dict} -> JSON-able records with the key's parts under `names` (tuples become lists)."""
  plain = lambda v: list(v) if isinstance(v, tuple) else v
  return [{**dict(zip(names, key)), **{k: plain(v) for k, v in value.items()}} for key, value in numbers.items()]


def headline(similarity, transfer, probes, min_layer: int) -> dict:
  """The report's numbers as JSON-able records, from the tables' rows over the scored layer pairs."""
  out = {}
  if similarity:
    numbers = headline_numbers(scored_rows(similarity, min_layer))
    out["similarity"] = _records(numbers["pairs"], ("model_a", "model_b", "measure", "preprocess"))
    out["groups"] = _records(numbers["groups"], ("measure", "preprocess", "relation"))
    out["ratios"] = _records(numbers["ratios"], ("measure", "preprocess"))
  if transfer:
    out["transfer"] = _records(transfer_numbers(scored_rows(transfer, min_layer)), ("source", "target", "method"))
  if probes:
    out["probes"] = _records(probe_numbers(scored_rows(probes, min_layer)), ("task", "source", "target"))
    out["best_probes"] = best_probe_rows(scored_rows(probes, min_layer))
  return out


def subsample_interval(estimate: float, samples, n: int, level: float = CI_LEVEL) -> list[float]:
  """The basic subsampling interval of xsim.similarity.subsample_ci from its half-sample values."""
  samples = np.asarray(samples, np.float64)
  size = n // 2
  scale = (size / (n - size)) ** 0.5
  alpha = (1.0 - level) / 2.0
  deviations = samples - estimate
  return [float(estimate - scale * np.quantile(deviations, 1.0 - alpha)),
          float(estimate - scale * np.quantile(deviations, alpha))]


def grid_statistics(matrix: np.ndarray, layers_a, layers_b, min_layer: int, null_max: Optional[Sequence],
                    subsample_max: Optional[Sequence], n: int) -> dict:
  """A [La, Lb] grid's max, mean and argmax over its scored layer pairs and, where the resamples exist, the 95th
  percentile of the permutation null of that max, its permutation p-value and its subsampling CI."""
  from xsim import similarity as sim
  ia = layer_select.scored_positions(layers_a, min_layer)
  ib = layer_select.scored_positions(layers_b, min_layer)
  scored = matrix[np.ix_(ia, ib)]
  i, j = np.unravel_index(np.argmax(scored), scored.shape)
  out = {"max": float(scored.max()), "mean": float(scored.mean()),
         "argmax": [int(layers_a[ia[i]]), int(layers_b[ib[j]])]}
  if null_max is not None:
    null_max = np.asarray(null_max, np.float64)
    out.update(null_max_q95=float(np.quantile(null_max, 0.95)),
               p_value=float(sim.p_value(np.float64(scored.max()), null_max)),
               max_ci=subsample_interval(float(scored.max()), subsample_max, n))
  return out
