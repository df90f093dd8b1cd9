"""The tables step: a run's results turned into tidy rows and headline numbers, once.

assemble: every stage's rows from its unit entries (each stage's tabulate, experiments/stages) -> the tidy tables of
experiments/outputs.py, each pair's statistics per measure and seed (max, mean, argmax, permutation null and
subsampling CI of the max over the scored layer pairs), the headline numbers (seed-averaged grids' maxima and
means, within / cross-family groups and ratios, best maps, best probes) and the answer (experiments/answer.py).
Everything is written to the workdir; the report, the plots and `experiments.compare` only read and draw it.

summary.json:
  {"pairs": {"A|B": {"relation", "num_samples", "measures": {"MEASURE|PREP": stats of the first seed},
                     "measures_by_seed": {"SEED": {"MEASURE|PREP": stats}}}},
   "headline": {"similarity": [...], "groups": [...], "ratios": [...], "transfer": [...], "probes": [...]},
   "seeds", "min_layer", "num_texts", "ci_level", "activation_stats": {MODEL: per-layer stats}, "work": {...},
   "moved_aside": [tables of an earlier run this config does not write, moved to WORKDIR/previous/] (when any)}
  stats = {"max", "mean", "argmax": [layer_a, layer_b], "null_max_q95", "p_value", "max_ci": [lo, hi]} (the last
  three for measures with statistics).
"""
from __future__ import annotations

import collections
import math
import os
from typing import Sequence

import numpy as np

from experiments import answer, cache, outputs
from experiments.grids import best_cell, layer_grids
from experiments.study import RELATIONS
from xsim import layer_select


def relation_rank(relation: str) -> int:
  """Sort order of relations: within-family, cross-family, random-init baseline."""
  if relation not in RELATIONS:
    raise ValueError(f"relation {relation!r} is unknown; tables use one of {RELATIONS}.")
  return RELATIONS.index(relation)


def scored_rows(rows: Sequence[dict], min_layer: int) -> list[dict]:
  """The table rows whose layer pair counts for maxima, means and best pairs (xsim.layer_select.is_scored)."""
  return [r for r in rows if layer_select.is_scored(r["layer_a"], r["layer_b"], min_layer)]


_ACCURACIES = ("acc_mapped", "acc_mapped_lo", "acc_mapped_hi", "acc_shuffled", "acc_target", "acc_source",
               "acc_majority")
_INTERVAL = ("acc_mapped_lo", "acc_mapped_hi")  # NaN where fewer than 4 test rows leave no interval


def best_probe_rows(rows: Sequence[dict]) -> list[dict]:
  """-> for each (task, source, target, seed), the probes.csv row with the highest acc_mapped, plus
  "num_layer_pairs" (how many layer pairs it was chosen from), sorted by task, relation, source, target, seed."""
  groups = collections.defaultdict(list)
  for i, row in enumerate(rows):
    bad = [k for k in _ACCURACIES if not 0.0 <= row[k] <= 1.0 and not (k in _INTERVAL and math.isnan(row[k]))]
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


def scope_sensitivity(similarity_rows: Sequence[dict], min_layer: int) -> list[dict]:
  """How much of the similarity answer rides on the first layers: each relation's mean of the pairs' maxima with
  the embeddings in (min_layer 0), as configured, and with the first scored block left out too (min_layer + 1),
  per measure and preprocessing: [{"min_layer", "measure", "preprocess", "relation", "mean_max", "num_pairs"}]."""
  out = []
  for scope in sorted({0, min_layer, min_layer + 1}):
    rows = scored_rows(similarity_rows, scope)
    if rows:
      groups = headline_numbers(rows)["groups"]
      out += [dict(min_layer=scope, measure=m, preprocess=p, relation=r, **g) for (m, p, r), g in groups.items()]
  return out


def matched_depth_means(similarity_rows: Sequence[dict], min_layer: int) -> list[dict]:
  """Each relation's mean over pairs of the similarity at matched depths (for every scored layer of model a, the
  scored layer of model b at the nearest relative depth; the mean over a's layers), per measure and preprocessing:
  [{"measure", "preprocess", "relation", "mean_matched", "num_pairs"}]. Unlike the max, no layer pair is chosen
  for being best."""
  relation = _relations(similarity_rows, "model_a", "model_b", "similarity.csv")
  per_pair = collections.defaultdict(list)
  for (a, b, measure, prep), grid in layer_grids(scored_rows(similarity_rows, min_layer),
                                                 ("model_a", "model_b", "measure", "preprocess"), ("value",)).items():
    nearest = layer_select.nearest_by_depth(grid.depths_a, grid.depths_b)
    matched = grid.values["value"][np.arange(len(grid.layers_a)), nearest]
    per_pair[(measure, prep, relation[(a, b)])].append(float(matched.mean()))
  return [dict(measure=m, preprocess=p, relation=r, mean_matched=float(np.mean(v)), num_pairs=len(v))
          for (m, p, r), v in per_pair.items()]


def headline(similarity, transfer, probes, min_layer: int) -> dict:
  """The report's numbers as JSON-able records, from the tables' rows over the scored layer pairs."""
  out = {}
  if similarity:
    numbers = headline_numbers(scored_rows(similarity, min_layer))
    out["similarity"] = _records(numbers["pairs"], ("model_a", "model_b", "measure", "preprocess"))
    out["groups"] = _records(numbers["groups"], ("measure", "preprocess", "relation"))
    out["ratios"] = _records(numbers["ratios"], ("measure", "preprocess"))
    out["sensitivity"] = scope_sensitivity(similarity, min_layer)
    out["matched_depths"] = matched_depth_means(similarity, min_layer)
  if transfer:
    out["transfer"] = _records(transfer_numbers(scored_rows(transfer, min_layer)), ("source", "target", "method"))
  if probes:
    out["probes"] = _records(probe_numbers(scored_rows(probes, min_layer)), ("task", "source", "target"))
    out["best_probes"] = best_probe_rows(scored_rows(probes, min_layer))
  return out


def steering_records(sections: dict, pairs, seed: int) -> list[dict]:
  """Each real pair's steering figures of `seed` (the stage's summary section: efficacy, ci, layer_pairs,
  max_p_value per concept) as records with the pair's source, target and relation."""
  return [dict(source=p.a, target=p.b, relation=p.relation, concept=concept, **figure)
          for p in pairs for concept, figure in sections.get(p.name, {}).get("steering", {}).get(str(seed), {}).items()
          if figure.get("efficacy") is not None]


class Tables:
  """What the stages' tabulate functions add up: each table's rows, each pair's summary and, for the answer's CIs,
  every real pair's figures with their subsamples (first seed)."""

  def __init__(self, first_seed: int):
    self.first_seed = first_seed
    self.rows = collections.defaultdict(list)
    self.pairs = {}
    self.resamples = {}

  def add(self, table: str, rows: Sequence[dict]) -> None:
    self.rows[table] += rows

  def pair_summary(self, pair, seed: int, num_samples: int) -> dict:
    """The pair's summary entry for `seed` (its measures; the first seed's are also the pair's "measures")."""
    entry = self.pairs.setdefault(pair.name, {"relation": pair.relation, "measures_by_seed": {}})
    entry["num_samples"] = num_samples
    measures = entry["measures_by_seed"].setdefault(str(seed), {})
    if seed == self.first_seed:
      entry["measures"] = measures
    return measures

  def pair_section(self, pair, seed: int, section: str) -> dict:
    """The pair's summary entry `section` for `seed` (a stage's own figures, e.g. "steering")."""
    entry = self.pairs.setdefault(pair.name, {"relation": pair.relation, "measures_by_seed": {}})
    return entry.setdefault(section, {}).setdefault(str(seed), {})

  def resample(self, figure, pair, seed: int, estimate: float, samples, n: int) -> None:
    """A real pair's figure (its max over the scored layer pairs) and its values on the shared subsamples of n
    rows, for the ratio CIs of the answer (first seed only)."""
    if seed == self.first_seed and not pair.is_random:
      self.resamples.setdefault(figure, {})[pair.name] = {"estimate": estimate, "samples": samples, "n": n}


def assemble(ctx, stages, pairs, work: dict) -> dict:
  """Process 0: the tables and summary.json from the verified unit entries of a run (ctx: the run's
  experiments/context.Context; stages: experiments/stages.STAGES; work: each process's unit counts)."""
  out = Tables(ctx.study.seeds[0])
  for pair in pairs:
    for seed in ctx.study.seeds:
      for stage in stages:
        settings = ctx.settings(stage.NAME)
        entries = [(u, cache.read(u.path)) for u in stage.units(settings, ctx, pair, seed)]
        if entries:
          stage.tabulate(settings, ctx, pair, seed, entries, out)
  for name, columns in outputs.TABLES.items():
    if out.rows[name]:
      outputs.write_table(os.path.join(ctx.workdir, name), columns, out.rows[name])
  moved = outputs.move_aside(ctx.workdir, [name for name in outputs.TABLES if not out.rows[name]])
  stats = ctx.stats
  numbers = headline(out.rows["similarity.csv"], out.rows["transfer.csv"], out.rows["probes.csv"], stats.min_layer)
  relations = {p.name: p.relation for p in pairs if not p.is_random}
  steered = steering_records(out.pairs, [p for p in pairs if not p.is_random], out.first_seed)
  if steered:
    numbers["steering"] = steered
  summary = {"pairs": out.pairs, "ci_level": stats.ci_level, "seeds": list(ctx.study.seeds),
             "min_layer": stats.min_layer, "num_texts": len(ctx.texts), "headline": numbers,
             "answer": answer.answer(numbers, out.resamples, relations, stats.ci_level),
             "activation_stats": {name: store.stats["layers"] for name, store in ctx.stores.texts.items()},
             "work": work, **({"moved_aside": moved} if moved else {})}
  outputs.write_json(os.path.join(ctx.workdir, "summary.json"), summary)
  return summary
