"""The tables step: a run's results turned into tidy rows and headline numbers, once.

assemble: unit entries (experiments/units.py) -> the tidy tables of experiments/results.py, each pair's statistics
per measure and seed (max, mean, argmax, permutation null and subsampling CI of the max over the scored layer
pairs), the headline numbers (seed-averaged grids' maxima and means, within / cross-family groups and ratios, best
maps, best probes) and the answer (experiments/answer.py). Everything is written to the workdir; the report, the
plots and `experiments.compare` only read and draw it.

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
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

from experiments import answer, cache, results
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
               max_ci=[float(v) for v in sim.subsample_interval(float(scored.max()), subsample_max, n,
                                                                level=CI_LEVEL)])
  return out


def assemble(s, pairs, stores, first, second, workdir: str, num_texts: int, work: dict) -> dict:
  """Process 0: the tables and summary.json from the verified unit entries of a run (s: experiments.run.Study;
  first, second: the planned units of both phases; work: each process's unit counts)."""
  sim_rows, transfer_rows, probe_rows, next_rows, pairs_summary = [], [], [], [], {}
  resamples, relations = {}, {}  # for the answer's CIs: real pairs, first seed
  grouped = {}
  for unit in first:
    if unit.kind == "similarity":
      grouped.setdefault((unit.pair, unit.measure, unit.preprocess, unit.seed), []).append(unit)
  for pair in pairs:
    for seed in s.seeds:
      data_info = _layers(stores, pair, seed)
      entry = pairs_summary.setdefault(pair.name, {"relation": pair.relation, "num_samples": None,
                                                   "measures_by_seed": {}})
      measures = entry["measures_by_seed"].setdefault(str(seed), {})
      for measure in s.similarity.measures:
        for prep in s.similarity.preprocess:
          seeded = s.similarity.depends_on(measure, pair.is_random)[1]
          chunk_units = grouped[(pair, measure, prep, seed if seeded else None)]
          parts = [cache.read(u.path) for u in chunk_units]
          matrix = np.concatenate([np.asarray(p["matrix"], np.float64) for p in parts])
          combine = lambda name: None if parts[0][name] is None else np.max([p[name] for p in parts], axis=0)
          n = data_info["num_samples"]
          entry["num_samples"] = n
          measures[f"{measure}|{prep}"] = grid_statistics(
              matrix, data_info["layers_a"], data_info["layers_b"], s.similarity.min_layer, combine("null_max"),
              combine("subsample_max"), n)
          if seed == s.seeds[0] and not pair.is_random and parts[0]["subsample_max"] is not None:
            resamples.setdefault((measure, prep), {})[pair.name] = {
                "estimate": measures[f"{measure}|{prep}"]["max"], "samples": combine("subsample_max"), "n": n}
          for i, j in np.ndindex(matrix.shape):
            sim_rows.append(dict(model_a=pair.a, model_b=pair.b, relation=pair.relation, measure=measure,
                                 preprocess=prep, **_cell(data_info, i, j), value=float(matrix[i, j]), seed=seed))
      maps = cache.read(_find(first, "maps", pair, seed).path)
      r2, shuffled = np.asarray(maps["r2"]), np.asarray(maps["r2_shuffled"])
      if seed == s.seeds[0] and not pair.is_random:
        best = grid_statistics(r2, data_info["layers_a"], data_info["layers_b"], s.similarity.min_layer, None, None,
                               maps["num_test"])["max"]
        resamples.setdefault("r2", {})[pair.name] = {"estimate": best, "samples": maps["r2_subsample_max"],
                                                     "n": maps["num_test"]}
      for i, j in np.ndindex(r2.shape):
        transfer_rows.append(dict(source=pair.a, target=pair.b, relation=pair.relation, method=s.transfer.method,
                                  **_cell(data_info, i, j), r2=float(r2[i, j]), r2_shuffled=float(shuffled[i, j]),
                                  r2_mean=float(maps["r2_mean"][j]), seed=seed))
      if pair.is_random:
        continue
      relations[pair.name] = pair.relation
      probe_scores = []  # (task, scores, layers_a, layers_b)
      if s.next_token.enabled:
        result = cache.read(_find(second, "next_token", pair, seed).path)
        next_rows += [dict(source=pair.a, target=pair.b, relation=pair.relation, **row, seed=seed)
                      for row in result["patching"]]
        probe_scores += [(f"next_token_top{k}", scores, result["layers_a"], result["layers_b"])
                         for k, scores in result.get("token_probes", {}).items()]
      probe_scores += [(task, cache.read(_find(second, "probes", pair, seed, task).path), data_info["layers_a"],
                        data_info["layers_b"]) for task in s.tasks]
      for task, scores, layers_a, layers_b in probe_scores:
        probe_rows += _probe_rows(task, pair, seed, scores, layers_a, layers_b, data_info)
        if seed == s.seeds[0]:
          best = grid_statistics(np.asarray(scores["mapped"]), layers_a, layers_b, s.similarity.min_layer, None,
                                 None, scores["num_test"])["max"]
          resamples.setdefault(("probe", task), {})[pair.name] = {
              "estimate": best, "samples": scores["mapped_subsample_max"], "n": scores["num_test"]}
    pairs_summary[pair.name]["measures"] = pairs_summary[pair.name]["measures_by_seed"][str(s.seeds[0])]
  outputs = (("similarity.csv", results.SIMILARITY_COLUMNS, sim_rows),
             ("transfer.csv", results.TRANSFER_COLUMNS, transfer_rows),
             ("probes.csv", results.PROBE_COLUMNS, probe_rows),
             ("next_token.csv", results.NEXT_TOKEN_COLUMNS, next_rows))
  for name, columns, rows in outputs:
    if rows:
      results.write_table(os.path.join(workdir, name), columns, rows)
  numbers = headline(sim_rows, transfer_rows, probe_rows, s.similarity.min_layer)
  summary = {"pairs": pairs_summary, "ci_level": CI_LEVEL, "seeds": list(s.seeds),
             "min_layer": s.similarity.min_layer, "num_texts": num_texts, "headline": numbers,
             "answer": answer.answer(numbers, resamples, relations, CI_LEVEL),
             "activation_stats": {name: store.stats["layers"] for name, store in stores.texts.items()},
             "work": work}
  results.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _layers(stores, pair, seed) -> dict:
  """A pair's layer lists, depths and paired sample count."""
  from xsim import activations as xa
  store_a, store_b = stores.get(pair.a, seed), stores.get(pair.b, seed)
  return {"layers_a": list(store_a.layers), "layers_b": list(store_b.layers),
          "num_layers_a": stores.info[pair.a].num_layers, "num_layers_b": stores.info[pair.b].num_layers,
          "num_samples": int(len(xa.paired_rows(store_a, store_b)[0]))}


def _cell(info: dict, i: int, j: int) -> dict:
  la, lb = info["layers_a"][i], info["layers_b"][j]
  return dict(layer_a=la, layer_b=lb, depth_a=layer_select.relative_depth(la, info["num_layers_a"]),
              depth_b=layer_select.relative_depth(lb, info["num_layers_b"]))


def _find(planned, kind, pair, seed, task=""):
  return next(u for u in planned if (u.kind, u.pair, u.seed, u.task) == (kind, pair, seed, task))


def _probe_rows(task: str, pair, seed: int, scores: dict, layers_a, layers_b, info: dict) -> list[dict]:
  """probes.csv rows of one task: every layer pair's mapped accuracy with its CI, floors and ceilings."""
  cells = {"layers_a": list(layers_a), "layers_b": list(layers_b), "num_layers_a": info["num_layers_a"],
           "num_layers_b": info["num_layers_b"]}
  mapped = np.asarray(scores["mapped"])
  return [dict(task=task, source=pair.a, target=pair.b, relation=pair.relation, **_cell(cells, i, j),
               acc_mapped=float(mapped[i, j]), acc_mapped_lo=float(scores["mapped_lo"][i][j]),
               acc_mapped_hi=float(scores["mapped_hi"][i][j]), acc_shuffled=float(scores["shuffled"][i][j]),
               acc_target=float(scores["target"][j]), acc_source=float(scores["source"][i]),
               acc_majority=float(scores["majority"]), seed=seed)
          for i, j in np.ndindex(mapped.shape)]
