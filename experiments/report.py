"""The run report: report.md and report.html in a run's workdir, every number recomputed from its tables.

Inputs read from the workdir; each is optional and a section whose input is absent is left out (and named):
  similarity.csv, transfer.csv, probes.csv, next_token.csv   the tidy tables of experiments/results.py
  summary.json   what the tables cannot hold (statistics that need the activations themselves):
    {
      "ci_level": 0.95,                         level of every "*_ci" below
      "pairs": {
        "MODEL_A|MODEL_B": {                    model_a|model_b exactly as in similarity.csv
          "relation": "within" | "cross" | "random",
          "num_samples": int,                   paired samples the pair's measures were computed on
          "measures": {
            "MEASURE|PREPROCESS": {             measure|preprocess exactly as in similarity.csv
              "max": float, "mean": float,      over all layer pairs; checked against the table
              "argmax": [layer_a, layer_b],     layer indices of the max; checked against the table
              "max_ci": [lo, hi], "mean_ci": [lo, hi],   CIs (rows resampled, all layers jointly)
              "null_max_q95": float,            95th percentile of the max over all layer pairs, rows permuted
              "p_value": float}}}},             of the observed max against that null of the max
      "seeds": [int, ...],                      the run's seeds; "measures" above hold the first one's
      "min_layer": int,                         max / mean / argmax / best pairs are over layer pairs whose
                                                hidden-state indices are both >= this (1: no embeddings)
      "activation_stats": {MODEL: the stats.json of MODEL's activation store ({"num_rows", "layers": [...]},
                           see xsim.activations.store.summarize_stats), or just its "layers" list}
    }
  Every key is optional; the report shows "-" where one is missing. max/mean/argmax are checked only for
  single-seed grids (with several seeds the table's cells are averaged over seeds first).

Both files are rendered from one list of blocks (headings, paragraphs, tables, images, code), so the HTML page
(self-contained, images referenced relatively from figures/) says exactly what the markdown says.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from typing import Mapping, Sequence

import numpy as np

from experiments import plots, results
from xsim.activations.store import atomic_write

DECIMALS = 3
# A layer whose largest-variance dimension holds more than this share of the total variance is flagged: with
# d >= 1,000 dimensions an even spread gives each about 0.1 %, so 10 % is a massive-activation outlier.
OUTLIER_SHARE = 0.10
CHECK_TOLERANCE = 1e-6
FIGURES = "figures"
_MISSING = "-"


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Para:
  text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
  items: tuple


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple
  rows: tuple


@dataclasses.dataclass(frozen=True)
class Image:
  path: str
  caption: str


@dataclasses.dataclass(frozen=True)
class Code:
  text: str


def to_markdown(blocks: Sequence) -> str:
  """Renders blocks as GitHub-flavoured markdown."""
  cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
  out = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append("#" * b.level + " " + b.text)
    elif isinstance(b, Para):
      out.append(b.text)
    elif isinstance(b, Bullets):
      out.append("\n".join(f"- {item}" for item in b.items))
    elif isinstance(b, Table):
      lines = ["| " + " | ".join(cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
      lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in b.rows]
      out.append("\n".join(lines))
    elif isinstance(b, Image):
      out.append(f"![{b.caption}]({b.path})")
    elif isinstance(b, Code):
      out.append("```\n" + b.text + "\n```")
    else:
      raise ValueError(f"unknown report block {b!r}.")
  return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}code{background:#f2f2f2;padding:0 2px}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}"""


def _inline_html(text: str) -> str:
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def to_html(blocks: Sequence, title: str) -> str:
  """Renders blocks as one self-contained HTML page (inline CSS; images by relative path)."""
  body = []
  for b in blocks:
    if isinstance(b, Heading):
      body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
    elif isinstance(b, Para):
      body.append(f"<p>{_inline_html(b.text)}</p>")
    elif isinstance(b, Bullets):
      body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
    elif isinstance(b, Table):
      head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
      rows = "".join("<tr>" + "".join(f"<td>{_inline_html(v)}</td>" for v in r) + "</tr>" for r in b.rows)
      body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    elif isinstance(b, Image):
      src = html.escape(b.path, quote=True)
      body.append(f'<figure><img src="{src}" alt="{html.escape(b.caption, quote=True)}">'
                  f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
    elif isinstance(b, Code):
      body.append(f"<pre>{html.escape(b.text)}</pre>")
    else:
      raise ValueError(f"unknown report block {b!r}.")
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def fmt(x) -> str:
  """A number with DECIMALS decimals ("nan" for NaN, "-" for None)."""
  return _MISSING if x is None else f"{float(x):.{DECIMALS}f}"


def _fmt_ci(ci) -> str:
  return _MISSING if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _relations(rows: Sequence[dict], a: str, b: str, table: str) -> dict[tuple, str]:
  """-> {(rows' a, rows' b): relation}, refusing a pair listed under two relations."""
  out = {}
  for row in rows:
    pair = (row[a], row[b])
    if out.setdefault(pair, row["relation"]) != row["relation"]:
      raise ValueError(f"{table}: pair {pair} appears as both {out[pair]!r} and {row['relation']!r}; a pair has "
                       "one relation.")
    plots.relation_rank(row["relation"])
  return out


def headline_numbers(similarity_rows: Sequence[dict]) -> dict:
  """similarity.csv rows -> the similarity numbers of the report.

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
  grids = plots.layer_grids(similarity_rows, keys, ("value",))
  seed_ranges = _seed_ranges(similarity_rows, keys, "value")
  order = sorted(grids, key=lambda k: (k[2], k[3], plots.relation_rank(relation[k[:2]]), k[0], k[1]))
  pairs = {}
  for key in order:
    grid = grids[key]
    v = grid.values["value"]
    finite = bool(np.isfinite(v).all())
    i, j = plots.best_cell(v) if finite else (None, None)
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


def _seed_ranges(rows: Sequence[dict], keys: tuple, value: str) -> dict:
  """-> {key: (lowest, highest) over seeds of the grid's max of `value`}, for groups with several seeds."""
  by_seed = plots.layer_grids(rows, keys + ("seed",), (value,))
  maxima = {}
  for key, grid in by_seed.items():
    v = grid.values[value]
    maxima.setdefault(key[:-1], []).append(float(v[np.isfinite(v)].max()) if np.isfinite(v).any() else np.nan)
  return {key: (min(m), max(m)) for key, m in maxima.items() if len(m) > 1}


def transfer_numbers(transfer_rows: Sequence[dict]) -> dict:
  """transfer.csv rows -> {(source, target, method): {"relation", "best": (layer_a, layer_b), "best_depth",
  "r2", "r2_shuffled", "r2_mean" (all three at the best layer pair), "r2_shuffled_max" (over all layer pairs:
  the floor a max over the grid must beat), "r2_grid_mean", "num_seeds", "r2_seed_range" ((lowest, highest)
  per-seed best R^2, None for one seed)}}, cells averaged over seeds."""
  relation = _relations(transfer_rows, "source", "target", "transfer.csv")
  keys = ("source", "target", "method")
  grids = plots.layer_grids(transfer_rows, keys, ("r2", "r2_shuffled", "r2_mean"))
  seed_ranges = _seed_ranges(transfer_rows, keys, "r2")
  out = {}
  for key in sorted(grids, key=lambda k: (plots.relation_rank(relation[k[:2]]), k)):
    grid, v = grids[key], grids[key].values
    if not np.isfinite(v["r2"]).any():
      raise ValueError(f"transfer.csv: {key} has no finite r2 in any layer pair; rerun that map.")
    i, j = plots.best_cell(v["r2"])
    out[key] = {"relation": relation[key[:2]], "best": (int(grid.layers_a[i]), int(grid.layers_b[j])),
                "best_depth": (float(grid.depths_a[i]), float(grid.depths_b[j])), "r2": float(v["r2"][i, j]),
                "r2_shuffled": float(v["r2_shuffled"][i, j]), "r2_mean": float(v["r2_mean"][i, j]),
                "r2_shuffled_max": float(np.max(v["r2_shuffled"])), "r2_grid_mean": float(np.mean(v["r2"])),
                "num_seeds": len(grid.seeds), "r2_seed_range": seed_ranges.get(key)}
  return out


def probe_numbers(probe_rows: Sequence[dict]) -> dict:
  """probes.csv rows -> {(task, source, target): {"relation", "best": (layer_a, layer_b), "mapped", "shuffled",
  "target", "source", "majority" (at the layer pair with the best seed-mean mapped accuracy), "num_seeds"}}."""
  relation = _relations(probe_rows, "source", "target", "probes.csv")
  columns = ("acc_mapped", "acc_shuffled", "acc_target", "acc_source", "acc_majority")
  grids = plots.layer_grids(probe_rows, ("task", "source", "target"), columns)
  out = {}
  for key in sorted(grids, key=lambda k: (k[0], plots.relation_rank(relation[k[1:]]), k)):
    grid = grids[key]
    i, j = plots.best_cell(grid.values["acc_mapped"])
    out[key] = {"relation": relation[key[1:]], "best": (int(grid.layers_a[i]), int(grid.layers_b[j])),
                **{c[4:]: float(grid.values[c][i, j]) for c in columns}, "num_seeds": len(grid.seeds)}
  return out


def scored_rows(rows: Sequence[dict], min_layer: int) -> list[dict]:
  """The table rows whose layer pair counts for maxima, means and best pairs: both layers >= min_layer."""
  return [r for r in rows if r["layer_a"] >= min_layer and r["layer_b"] >= min_layer]


def _layers(layers, depths) -> str:
  return f"{layers[0]}, {layers[1]} ({depths[0]:.2f}, {depths[1]:.2f})"


def _summary_entry(summary: dict, a: str, b: str, measure: str, prep: str) -> dict:
  pair = summary.get("pairs", {}).get(f"{a}|{b}", {})
  return pair.get("measures", {}).get(f"{measure}|{prep}", {})


def _summary_checks(numbers: dict, summary: dict) -> list[str]:
  """Disagreements between summary.json and the table, and summary entries the table lacks."""
  problems = []
  close = lambda x, y: abs(x - y) <= CHECK_TOLERANCE * (1 + abs(y))
  for (a, b, measure, prep), p in numbers["pairs"].items():
    if p["argmax"] is None:
      problems.append(f"{a} vs {b}, {measure}|{prep}: non-finite values in the grid; max and mean are NaN.")
      continue
    pair = summary.get("pairs", {}).get(f"{a}|{b}", {})
    if "relation" in pair and pair["relation"] != p["relation"]:
      problems.append(f"{a} vs {b}: relation {pair['relation']!r} in summary.json, {p['relation']!r} in the table.")
    entry = _summary_entry(summary, a, b, measure, prep)
    if p["num_seeds"] != 1:
      continue
    for stat in ("max", "mean"):
      if stat in entry and not close(entry[stat], p[stat]):
        problems.append(f"{a} vs {b}, {measure}|{prep}: summary.json {stat} {entry[stat]!r} differs from the "
                        f"table's {p[stat]!r}.")
    if "argmax" in entry and tuple(entry["argmax"]) != p["argmax"]:
      problems.append(f"{a} vs {b}, {measure}|{prep}: summary.json argmax {tuple(entry['argmax'])} differs from "
                      f"the table's {p['argmax']}.")
  for name, pair in summary.get("pairs", {}).items():
    a, _, b = name.partition("|")
    for key in pair.get("measures", {}):
      measure, _, prep = key.partition("|")
      if (a, b, measure, prep) not in numbers["pairs"]:
        problems.append(f"summary.json has {name} {key}, which similarity.csv does not.")
  return problems


def _scope(min_layer: int) -> str:
  return ("all layer pairs" if min_layer <= 0 else "the layer pairs of block outputs (embeddings left out)"
          if min_layer == 1 else f"the layer pairs with both hidden-state indices >= {min_layer}")


def _similarity_blocks(numbers: dict, summary: dict, figures: list[Image]) -> list:
  level = summary.get("ci_level")
  ci = f"{level:.0%} CI" if level is not None else "CI"
  level_text = f"{level:.0%} " if level is not None else ""
  scope = _scope(summary.get("min_layer", 0))
  first_seed = " (of the first seed)" if len(summary.get("seeds", [])) > 1 else ""
  blocks = [Heading(2, "Similarity over layer pairs"), Para(
      f"For each measure and preprocessing: the max and the mean over {scope} of each model pair (cells "
      "averaged over seeds first; 'seed range' gives the lowest and highest per-seed max), within-family, "
      f"cross-family and the random-init baselines side by side. The {level_text}CIs{first_seed} (subsampling "
      "half of the samples without replacement, so debiased CKA is not inflated by duplicated rows; the interval "
      "also removes the estimate's small-sample bias, so for biased CKA, whose bias is large when the dimension "
      "exceeds the number of samples, it can lie below the estimate) and the "
      f"permutation null come from `summary.json`, '{_MISSING}' where it has none. null max q95: the 95th "
      "percentile of the max over those layer pairs with the rows of one model permuted; a max below it is what "
      "chance and the choice of the best pair alone give (STUDY.md, point 6). p (max): the permutation p-value of "
      "the observed max against that null. The heatmaps show every layer pair.")]
  by_section = {}
  for (a, b, measure, prep), p in numbers["pairs"].items():
    by_section.setdefault((measure, prep), []).append((a, b, p))
  for (measure, prep), pairs in by_section.items():
    rows = []
    for a, b, p in pairs:
      e = _summary_entry(summary, a, b, measure, prep)
      n = summary.get("pairs", {}).get(f"{a}|{b}", {}).get("num_samples", _MISSING)
      rows.append((f"{a} vs {b}", p["relation"], fmt(p["max"]), _fmt_ci(e.get("max_ci")),
                   _fmt_ci(p["max_seed_range"]),
                   _layers(p["argmax"], p["argmax_depth"]) if p["argmax"] else _MISSING, fmt(p["mean"]),
                   _fmt_ci(e.get("mean_ci")), fmt(e.get("null_max_q95")), fmt(e.get("p_value")),
                   "x".join(map(str, p["layers"])), p["num_seeds"], n))
    groups = [(rel, g["num_pairs"], fmt(g["mean_max"]), fmt(g["mean_mean"]))
              for (m, pr, rel), g in numbers["groups"].items() if (m, pr) == (measure, prep)]
    blocks += [Heading(3, f"{measure}, preprocess={prep}"),
               Table(("pair", "relation", "max", f"max {ci}", "seed range", "argmax layers (depths)", "mean",
                      f"mean {ci}",
                      "null max q95", "p (max)", "grid", "seeds", "n"), tuple(rows)),
               Table(("relation", "pairs", "mean of max", "mean of mean"), tuple(groups))]
    ratio = numbers["ratios"].get((measure, prep))
    if ratio is not None:
      undefined = " (nan: the cross-family value is <= 0, so no ratio is meaningful)" if np.isnan(
          [ratio["mean"], ratio["max"]]).any() else ""
      blocks.append(Para(f"Within / cross-family ratio: {fmt(ratio['mean'])} of the means, {fmt(ratio['max'])} of "
                         f"the maxima{undefined}."))
  if figures:
    blocks += [Heading(3, "Heatmaps"), Para(
        "Model A's layers on the vertical axis, B's on the horizontal, ticks 'layer (relative depth)'; the red box "
        "is the max. One colour scale per measure across all pairs and preprocessings.")] + figures
  return blocks


def _transfer_blocks(numbers: dict, figures: list[Image], min_layer: int) -> list:
  rows = tuple((f"{s} → {t}", n["relation"], method, _layers(n["best"], n["best_depth"]), fmt(n["r2"]),
                _fmt_ci(n["r2_seed_range"]), fmt(n["r2_shuffled"]), fmt(n["r2_shuffled_max"]), fmt(n["r2_mean"]),
                fmt(n["r2_grid_mean"]), n["num_seeds"]) for (s, t, method), n in numbers.items())
  return [Heading(2, "Transfer maps"), Para(
      f"Held-out R² of each map at its best layer pair (over {_scope(min_layer)}; cells averaged over seeds, 'seed "
      "range' gives the lowest and highest per-seed best), next to the floors at that pair: a map fit on shuffled "
      "row pairs, and predicting the training mean. Because the best pair is a max over the grid, compare it "
      "with the max of the shuffled map over all pairs too. R² below 0 is worse than predicting the mean."),
      Table(("source → target", "relation", "method", "best layers (depths)", "R²", "seed range", "R² shuffled",
             "R² shuffled max", "R² mean predictor", "R² mean over grid", "seeds"), rows)] + figures


def _probe_blocks(best: list[dict], figures: list[Image], min_layer: int) -> list:
  rows = tuple((r["task"], f"{r['source']} → {r['target']}", r["relation"], f"{r['layer_a']}, {r['layer_b']}",
                fmt(r["acc_mapped"]), _fmt_ci((r["acc_mapped_lo"], r["acc_mapped_hi"])), fmt(r["acc_shuffled"]),
                fmt(r["acc_target"]), fmt(r["acc_source"]), fmt(r["acc_majority"]), r["num_layer_pairs"], r["seed"])
               for r in best)
  return [Heading(2, "Probe transfer"), Para(
      "A probe trained on the target model, scored on source activations mapped into the target (mapped, with "
      "its CI from probes.csv), against the same probe through the shuffled-pair map, the target's own accuracy "
      "(ceiling), the source's own probe and the majority class (chance). next_token_top1 / next_token_top5 are "
      "the published next-token probe (softmax over the target's most frequent next tokens, labels from the text "
      "after the cut), scored top-1 / top-5; their majority is the k most frequent tokens. Where several layer "
      f"pairs were probed the one with the best mapped accuracy (over {_scope(min_layer)}) is shown, which is "
      "optimistic; 'layer pairs' says how many it was chosen from."),
      Table(("task", "source → target", "relation", "layers", "mapped", "mapped CI", "shuffled map",
             "target ceiling", "source own", "majority", "layer pairs", "seed"), rows)] + figures


def _next_token_blocks(rows: Sequence[dict]) -> list:
  table = tuple((f"{r['source']} → {r['target']}", r["relation"], f"{r['layer_a']}, {r['layer_b']}",
                 r["num_samples"], fmt(r["clean_accuracy"]), fmt(r["accuracy_mapped"]), fmt(r["top1_mapped"]),
                 fmt(r["kl_mapped"]), fmt(r["accuracy_shuffled"]), fmt(r["kl_shuffled"]),
                 fmt(r["accuracy_mean_ablation"]), fmt(r["kl_mean_ablation"])) for r in rows)
  return [Heading(2, "Next-token transfer by patching"), Para(
      "The source's activation at the last token of a text prefix, mapped into the target at a depth-matched "
      "layer and written into the target's residual stream there; the target's remaining layers then predict "
      "the next token, whose label comes from the text after the prefix. Against the target's clean accuracy, "
      "a shuffled-pair map and mean-ablation at the same layer. KL is KL(clean || patched) in nats; top-1 is "
      "agreement with the clean prediction."),
      Table(("source → target", "relation", "layers", "n", "clean acc", "mapped acc", "mapped top-1",
             "mapped KL", "shuffled acc", "shuffled KL", "mean-ablation acc", "mean-ablation KL"), table)]


def _layer_stats(model: str, stats) -> list[dict]:
  layers = stats.get("layers") if isinstance(stats, Mapping) else stats
  need = ("layer", "max_abs", "mean_norm", "top_variance_dims", "top_variance_share")
  if not isinstance(layers, list) or any(not isinstance(l, Mapping) or set(need) - set(l) for l in layers):
    raise ValueError(f"summary.json activation_stats[{model!r}] must be a store's stats.json or its 'layers' list "
                     f"of dicts with keys {need}.")
  return layers


def _activation_blocks(activation_stats: dict) -> list:
  blocks = [Heading(2, "Activation outliers"), Para(
      "Per layer of each model's activations: the largest |x|, the mean row norm, and the dimension holding the "
      "largest share of the variance. Massive activations dominate linear CKA (STUDY.md, point 4); layers whose "
      f"top dimension holds more than {OUTLIER_SHARE:.0%} of the variance are listed as outlier layers.")]
  for model in sorted(activation_stats):
    layers = _layer_stats(model, activation_stats[model])
    flagged = [f"{l['layer']} (dim {l['top_variance_dims'][0]}: {l['top_variance_share'][0]:.1%})"
               for l in layers if l["top_variance_share"][0] > OUTLIER_SHARE]
    none = f"No layer's top dimension holds more than {OUTLIER_SHARE:.0%} of the variance."
    blocks += [Heading(3, model), Para("Outlier layers: " + ", ".join(flagged) if flagged else none),
               Table(("layer", "max |x|", "mean row norm", "top dim", "top dim variance share",
                      f"top-{len(layers[0]['top_variance_share']) if layers else 0} share"),
                     tuple((l["layer"], fmt(l["max_abs"]), fmt(l["mean_norm"]), l["top_variance_dims"][0],
                            fmt(l["top_variance_share"][0]), fmt(sum(l["top_variance_share"]))) for l in layers))]
  return blocks


def _images(paths: list[str], workdir: str) -> list[Image]:
  return [Image(os.path.relpath(p, workdir).replace(os.sep, "/"), os.path.basename(p)) for p in paths]


def _read(workdir: str, name: str):
  """-> the rows of workdir/name (None when absent), or the parsed JSON for .json files."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  return results.read_json(path) if name.endswith(".json") else results.read_table(path)


def write_report(workdir: str, config_dict: Mapping, environment: Mapping) -> tuple[str, str]:
  """Writes workdir/report.md, workdir/report.html and their figures under workdir/figures/.

  config_dict: the run's config as plain data (ConfigDict.to_dict()); environment: what ran it (versions,
  devices, date). -> (md_path, html_path).
  """
  if not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is not a directory; pass the run's --workdir.")
  similarity, transfer, probes, next_token = (_read(workdir, f"{n}.csv")
                                              for n in ("similarity", "transfer", "probes", "next_token"))
  summary = _read(workdir, "summary.json") or {}
  if not isinstance(summary, dict) or not isinstance(summary.get("pairs", {}), dict):
    raise ValueError(f"{workdir}/summary.json must be an object with a 'pairs' object; see experiments/report.py.")
  figures = os.path.join(workdir, FIGURES)
  absent = [f"{n} (no {n}.csv or no rows)" for n, t in (("similarity", similarity), ("transfer", transfer),
                                                        ("probes", probes)) if not t]
  if "activation_stats" not in summary:
    absent.append("activation outliers (no activation_stats in summary.json)")
  body, checks = [], []
  min_layer = summary.get("min_layer", 0)
  # Maxima, means and best pairs are over the scored layer pairs; heatmaps show all of them.
  scored = lambda rows: scored_rows(rows, min_layer)
  if similarity:
    numbers = headline_numbers(scored(similarity))
    checks += _summary_checks(numbers, summary)
    body += _similarity_blocks(numbers, summary, _images(
        plots.similarity_heatmaps(similarity, figures, min_layer=min_layer), workdir))
  if transfer:
    body += _transfer_blocks(transfer_numbers(scored(transfer)), _images(
        plots.transfer_plots(transfer, figures, min_layer=min_layer), workdir), min_layer)
  if probes:
    body += _probe_blocks(plots.best_probe_rows(scored(probes)), _images(plots.probe_plot(scored(probes), figures),
                                                                         workdir), min_layer)
  if next_token:
    body += _next_token_blocks(next_token)
  if "activation_stats" in summary:
    body += _activation_blocks(summary["activation_stats"])
  config = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  body += [Heading(2, "Config and environment"),
           Table(("environment", "value"), tuple((k, str(v)) for k, v in sorted(environment.items()))),
           Code(json.dumps(config, indent=1, sort_keys=True, default=str))]
  title = f"xsim report: {os.path.basename(os.path.abspath(workdir))}"
  head = [Heading(1, title), Para(
      f"Numbers are rounded to {DECIMALS} decimals. All of them are recomputed from the tables in this directory "
      "(similarity.csv, transfer.csv, probes.csv, next_token.csv), except the bootstrap CIs and permutation nulls of the "
      "similarity section, which need the activations and are read from summary.json.")]
  if absent:
    head.append(Para("Not in this run: " + "; ".join(absent) + "."))
  if checks:
    head += [Heading(2, "Checks that failed"), Bullets(tuple(checks))]
  blocks = head + body
  md_path, html_path = os.path.join(workdir, "report.md"), os.path.join(workdir, "report.html")
  _write_text(md_path, to_markdown(blocks))
  _write_text(html_path, to_html(blocks, title))
  return md_path, html_path


def _write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  atomic_write(path, write)

