"""The run report: report.md and report.html in a run's workdir, drawn from what the tables step wrote.

Inputs read from the workdir; each is optional and a section whose input is absent is left out (and named):
  similarity.csv, transfer.csv, probes.csv, next_token.csv   the tidy tables of experiments/outputs.py (drawn as
                 heatmaps and charts; next_token.csv is listed as it is)
  summary.json   the numbers (experiments/tables.py): "headline" (seed-averaged maxima and means, groups,
                 within / cross ratios, best maps and probes), per-pair statistics with the permutation null
                 and subsampling CI of each max ("pairs"), "activation_stats", "min_layer", "seeds", "ci_level".
The report computes nothing; "-" marks a statistic a measure does not have.

Both files are rendered from one list of blocks (experiments/document.py), so the HTML page (self-contained,
images referenced relatively from figures/) says exactly what the markdown says.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from experiments import outputs, plots
from experiments.document import (DECIMALS, MISSING, NO_RATIO, Bullets, Code, Heading, Image, Para, Table, fmt,
                                  fmt_ci, fmt_ci_label, fmt_layers, fmt_ratio, to_html, to_markdown)
from xsim.io import atomic_write

# A layer whose largest-variance dimension holds more than this share of the total variance is flagged: with
# d >= 1,000 dimensions an even spread gives each about 0.1 %, so 10 % is a massive-activation outlier.
OUTLIER_SHARE = 0.10
FIGURES = "figures"


def _summary_entry(summary: dict, a: str, b: str, measure: str, prep: str) -> dict:
  pair = summary.get("pairs", {}).get(f"{a}|{b}", {})
  return pair.get("measures", {}).get(f"{measure}|{prep}", {})


def _scope(min_layer: int) -> str:
  return ("all layer pairs" if min_layer <= 0 else "the layer pairs of block outputs (embeddings left out)"
          if min_layer == 1 else f"the layer pairs with both hidden-state indices >= {min_layer}")


def _similarity_blocks(headline: dict, summary: dict, figures: list[Image]) -> list:
  ci = fmt_ci_label(summary.get("ci_level"))
  scope = _scope(summary.get("min_layer", 0))
  first_seed = " (of the first seed)" if len(summary.get("seeds", [])) > 1 else ""
  blocks = [Heading(2, "Similarity over layer pairs"), Para(
      f"For each measure and preprocessing: the max and the mean over {scope} of each model pair (cells "
      "averaged over seeds first; 'seed range' gives the lowest and highest per-seed max), within-family, "
      f"cross-family and the random-init baselines side by side. The {ci}s{first_seed} (subsampling "
      "half of the samples without replacement, so debiased CKA is not inflated by duplicated rows; the interval "
      "also removes the estimate's small-sample bias, so for biased CKA, whose bias is large when the dimension "
      "exceeds the number of samples, it can lie below the estimate) and the "
      f"permutation null are computed for CKA and the neighbour measures (mutual k-NN, CKNNA), '{MISSING}' "
      "elsewhere. null max q95: the 95th "
      "percentile of the max over those layer pairs with the rows of one model permuted; a max below it is what "
      "chance and the choice of the best pair alone give (STUDY.md, point 6). p (max): the permutation p-value of "
      "the observed max against that null; clears null: whether the max exceeds that q95 (Groger, Wen and Brbic "
      "2026: after calibration much global convergence disappears while neighbour agreement may survive). The "
      "heatmaps show every layer pair.")]
  non_finite = [f"{p['model_a']} vs {p['model_b']}, {p['measure']}|{p['preprocess']}" for p in headline["similarity"]
                if p["argmax"] is None]
  if non_finite:
    blocks.append(Bullets(tuple(f"{name}: undefined: non-finite values in the grid (e.g. a layer whose rows have no "
                                "spread), so no max, mean, null or p-value." for name in non_finite)))
  by_section = {}
  for p in headline["similarity"]:
    by_section.setdefault((p["measure"], p["preprocess"]), []).append(p)
  for (measure, prep), pairs in by_section.items():
    rows = []
    for p in pairs:
      a, b = p["model_a"], p["model_b"]
      e = _summary_entry(summary, a, b, measure, prep)
      n = summary.get("pairs", {}).get(f"{a}|{b}", {}).get("num_samples", MISSING)
      rows.append((f"{a} vs {b}", p["relation"], fmt(p["max"]), fmt_ci(e.get("max_ci")),
                   fmt_ci(p["max_seed_range"]),
                   fmt_layers(p["argmax"], p["argmax_depth"]) if p["argmax"] else MISSING, fmt(p["mean"]),
                   fmt(e.get("null_max_q95")), fmt(e.get("p_value")), _above_null(e), "x".join(map(str, p["layers"])),
                   p["num_seeds"], n))
    groups = [(g["relation"], g["num_pairs"], fmt(g["mean_max"]), fmt(g["mean_mean"]))
              for g in headline["groups"] if (g["measure"], g["preprocess"]) == (measure, prep)]
    blocks += [Heading(3, f"{measure}, preprocess={prep}"),
               Table(("pair", "relation", "max", f"max {ci}", "seed range", "argmax layers (depths)", "mean",
                      "null max q95", "p (max)", "clears null", "grid", "seeds", "n"), tuple(rows)),
               Table(("relation", "pairs", "mean of max", "mean of mean"), tuple(groups))]
    ratio = next((r for r in headline["ratios"] if (r["measure"], r["preprocess"]) == (measure, prep)), None)
    if ratio is not None:
      undefined = f" ({NO_RATIO} where the cross-family value is <= 0)" if np.isnan(
          [ratio["mean"], ratio["max"]]).any() else ""
      blocks.append(Para(f"Within / cross-family ratio: {fmt_ratio(ratio['mean'])} of the means, "
                         f"{fmt_ratio(ratio['max'])} of the maxima{undefined}."))
  if figures:
    blocks += [Heading(3, "Heatmaps"), Para(
        "Model A's layers on the vertical axis, B's on the horizontal, ticks 'layer (relative depth)'; the red box "
        "is the max. One colour scale per measure across all pairs and preprocessings.")] + figures
  return blocks


def _above_null(stats: dict) -> str:
  """'yes' where a pair's max (of the first seed) exceeds the 95th percentile of its permutation null, 'no' where it
  does not, MISSING without a null."""
  if stats.get("null_max_q95") is None or stats.get("max") is None:
    return MISSING
  return "yes" if stats["max"] > stats["null_max_q95"] else "no"


def _answer_blocks(answer: dict, level) -> list:
  """The opening section: within vs cross-family figures, their ratio with its CI, the published numbers."""
  ci = fmt_ci_label(level)
  rows = tuple((f["figure"], fmt(f["within"]), fmt(f["cross"]), fmt_ratio(f["ratio"]), fmt_ci(f["ratio_ci"]),
                fmt(f["published_within"]), fmt(f["published_cross"]), fmt_ratio(f["published_ratio"]),
                f["detail"] or "")
               for f in answer["figures"])
  per_pair = tuple((p["pair"], p["relation"], f["figure"], fmt(p["value"]), fmt_layers(p["layers"], p["depths"]))
                   for f in answer["figures"] for p in f.get("pairs", ()))
  return [Heading(2, "The answer: within- vs cross-family"), Para(answer["reading"]), Para(
      "Each figure is the mean over this run's within-family and cross-family pairs at the best layer pair (over "
      "the scored layers, seeds averaged); the ratio is cross / within. Its CI resamples the texts (half of them, "
      f"without replacement, the same texts for every pair), recomputing the ratio; '{MISSING}' where the run has no "
      f"resamples for that figure; '{NO_RATIO}' where the cross-family figure is negative (a negative R² is no "
      f"share of the within-family value). Steering efficacies are each pair's summary figure (the steering "
      "section's rule); their CI draws each pair's efficacy from its own interval, which holds prompt and direction "
      "noise. The published columns are the study's numbers (STUDY.md), "
      f"'{MISSING}' where it gave none."),
      Table(("figure", "within", "cross", "cross / within", f"ratio {ci}", "published within", "published cross",
             "published ratio", "detail"), rows),
      Para("Every pair's figure behind those means, at its best layer pair (hidden-state indices, relative depths "
           "in parentheses):"),
      Table(("source → target", "relation", "figure", "value", "layers (depths)"), per_pair)] + _sensitivity_blocks(
          answer.get("sensitivity", []))


def _sensitivity_blocks(rows: Sequence[dict]) -> list:
  if not rows:
    return []
  scope = lambda k: ("as configured" if k is None else "embeddings in (from hidden state 0)" if k == 0
                     else f"from block {k}")
  return [Para("How much rides on token identity and on choosing the best layer pair: the same maxima with the "
               "embeddings in, as configured, and with one more block left out; and the mean at matched depths (for "
               "each source layer the target layer at the nearest relative depth), where no layer pair is chosen "
               "for being best. The scopes are point estimates (the CIs above are the configured maxima's); the "
               "matched-depth ratio's CI resamples the texts as the maxima's do."),
          Table(("layers scored", "figure", "within", "cross", "cross / within", "ratio CI"),
                tuple((scope(r["min_layer"]), r["figure"], fmt(r["within"]), fmt(r["cross"]), fmt_ratio(r["ratio"]),
                       fmt_ci(r.get("ratio_ci"))) for r in rows))]


def _transfer_blocks(records: list, figures: list[Image], min_layer: int) -> list:
  rows = tuple((f"{n['source']} → {n['target']}", n["relation"], n["method"], fmt_layers(n["best"], n["best_depth"]),
                fmt(n["r2"]), fmt_ci(n["r2_seed_range"]), fmt(n["r2_shuffled"]), fmt(n["r2_shuffled_max"]),
                fmt(n["r2_mean"]), fmt(n["r2_grid_mean"]), n["num_seeds"]) for n in records)
  return [Heading(2, "Transfer maps"), Para(
      f"Held-out R² of each map at its best layer pair (over {_scope(min_layer)}; cells averaged over seeds, 'seed "
      "range' gives the lowest and highest per-seed best), next to the floors at that pair: a map fit on shuffled "
      "row pairs, and predicting the training mean. Because the best pair is a max over the grid, compare it "
      "with the max of the shuffled map over all pairs too. R² below 0 is worse than predicting the mean."),
      Table(("source → target", "relation", "method", "best layers (depths)", "R²", "seed range", "R² shuffled",
             "R² shuffled max", "R² mean predictor", "R² mean over grid", "seeds"), rows)] + figures


def _probe_blocks(best: list[dict], figures: list[Image], min_layer: int) -> list:
  rows = tuple((r["task"], f"{r['source']} → {r['target']}", r["relation"], f"{r['layer_a']}, {r['layer_b']}",
                fmt(r["acc_mapped"]), fmt_ci((r["acc_mapped_lo"], r["acc_mapped_hi"])), fmt(r["acc_shuffled"]),
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


def _steering_blocks(rows: Sequence[dict], pairs: dict, figures: list[Image]) -> list:
  figures_rows = tuple(
      (concept, name.replace("|", " → "), entry["relation"], fmt(figure["efficacy"]),
       fmt_ci(figure["ci"]), "; ".join(f"{a}→{b} ×{s:g}" for a, b, s in figure["layer_pairs"]) or MISSING,
       fmt(figure["max_p_value"]), seed)
      for name, entry in pairs.items() for seed, by_concept in entry.get("steering", {}).items()
      for concept, figure in sorted(by_concept.items()))
  table = tuple((r["concept"], f"{r['source']} → {r['target']}", f"{r['layer_a']}, {r['layer_b']}",
                 f"{r['scale']:g}", fmt(r["efficacy"]), fmt_ci((r["efficacy_lo"], r["efficacy_hi"])),
                 fmt(r["p_value"]), fmt(r["null_q95"]), fmt(r["own_effect"]), fmt(r["perplexity_own"]),
                 fmt(r["perplexity_mapped"]), fmt(r["perplexity_random"]), fmt(r["map_r2"]), r["seed"])
                for r in rows)
  return [Heading(2, "Steering transfer"), Para(
      "A steering vector (the difference of mean activations between a concept's contrast sets) found on the "
      "source, mapped into the target by the pair's map and added to the target's residual stream at every prompt "
      "position, against the target's own vector at the same norm: efficacy is the mapped vector's mean effect "
      "on the concept's score over the own vector's (1: it does what the target's own vector does, 0: nothing). "
      "Its interval holds the prompts' and the direction's noise (the spread of random and shuffled-map directions "
      "of the same norm); the p-value is against those null directions. Perplexity is the ratio on held-out "
      "passages with the vector added (own, mapped, a random direction). The summary takes, at each layer pair, "
      "the largest scale where the own and mapped vectors keep perplexity within the configured ratio (a rule "
      "fixed before the run), and averages over layer pairs; its bounds are the means of theirs."),
      Table(("concept", "source → target", "relation", "efficacy", "CI", "layers, scale", "largest p", "seed"),
            figures_rows),
      Table(("concept", "source → target", "layers", "scale", "efficacy", "CI", "p", "null q95", "own effect",
             "perplexity own", "perplexity mapped", "perplexity random", "map R²", "seed"), table)] + figures


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
  return outputs.read_json(path) if name.endswith(".json") else outputs.read_table(path)


def write_report(workdir: str, config_dict: Mapping, environment: Mapping) -> tuple[str, str]:
  """Writes workdir/report.md, workdir/report.html and their figures under workdir/figures/.

  Numbers come from summary.json (written by experiments/tables.py); the tables are read only to draw them.
  config_dict: the run's config as plain data (ConfigDict.to_dict()); environment: what ran it (versions,
  devices, date). -> (md_path, html_path).
  """
  if not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is not a directory; pass the run's --workdir.")
  similarity, transfer, probes, next_token, steering = (
      _read(workdir, f"{n}.csv") for n in ("similarity", "transfer", "probes", "next_token", "steering"))
  summary = _read(workdir, "summary.json") or {}
  if not isinstance(summary, dict) or not isinstance(summary.get("pairs", {}), dict):
    raise ValueError(f"{workdir}/summary.json must be an object with a 'pairs' object; see experiments/tables.py.")
  headline = summary.get("headline", {})
  figures = os.path.join(workdir, FIGURES)
  absent = [f"{n} (no {n}.csv or no rows)" for n, t in (("similarity", similarity), ("transfer", transfer),
                                                        ("probes", probes)) if not t]
  if "activation_stats" not in summary:
    absent.append("activation outliers (no activation_stats in summary.json)")
  body = []
  if summary.get("answer", {}).get("figures"):
    body += _answer_blocks(summary["answer"], summary.get("ci_level"))
  depth_figures = _images(plots.depth_curve_plots(summary.get("pairs", {}), figures), workdir)
  if depth_figures:
    body += [Heading(2, "Along depth"), Para(
        "For each pair and each scored source layer: its best match over the target's scored layers (solid) and its "
        "value at the target layer of nearest relative depth (dashed), with subsampling CIs (shaded; half of the "
        "texts, as the maxima's CIs). Where a curve peaks, and whether within- and cross-family bands separate at "
        "matched depths, says more than the single maximum.")] + depth_figures
  min_layer = summary.get("min_layer", 0)
  # Maxima, means and best pairs are over the scored layer pairs; heatmaps show all of them.
  if similarity and "similarity" in headline:
    body += _similarity_blocks(headline, summary, _images(
        plots.similarity_heatmaps(similarity, figures, min_layer=min_layer), workdir))
  if transfer and "transfer" in headline:
    body += _transfer_blocks(headline["transfer"], _images(
        plots.transfer_plots(transfer, figures, min_layer=min_layer), workdir), min_layer)
  if probes and "best_probes" in headline:
    body += _probe_blocks(headline["best_probes"], _images(plots.probe_plot(headline["best_probes"], figures),
                                                           workdir), min_layer)
  if next_token:
    body += _next_token_blocks(next_token)
  if steering:
    body += _steering_blocks(steering, summary.get("pairs", {}), _images(
        plots.steering_plot(steering, figures) + plots.steering_heatmaps(steering, figures), workdir))
  if "activation_stats" in summary:
    body += _activation_blocks(summary["activation_stats"])
  config = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  body += [Heading(2, "Config and environment"),
           Table(("environment", "value"), tuple((k, str(v)) for k, v in sorted(environment.items()))),
           Code(json.dumps(config, indent=1, sort_keys=True, default=str))]
  title = f"xsim report: {os.path.basename(os.path.abspath(workdir))}"
  head = [Heading(1, title), Para(
      f"Numbers are rounded to {DECIMALS} decimals. They are computed once from the run's results "
      "(experiments/tables.py) into the tables in this directory (similarity.csv, transfer.csv, probes.csv, "
      "next_token.csv, steering.csv) and summary.json, which also holds the permutation nulls and subsampling CIs.")]
  if absent:
    head.append(Para("Not in this run: " + "; ".join(absent) + "."))
  drawn = {block.path for block in body if isinstance(block, Image)}
  stale = outputs.move_aside(workdir, [f"{FIGURES}/{n}" for n in sorted(os.listdir(figures)) if n.endswith(".png")
                                       and f"{FIGURES}/{n}" not in drawn] if os.path.isdir(figures) else [])
  if stale:
    head.append(Para(f"{len(stale)} figures of an earlier run in this workdir, which this run does not draw, were "
                     f"moved to {outputs.PREVIOUS}/{FIGURES}/."))
  if summary.get("moved_aside"):
    head.append(Para(f"An earlier run in this workdir, with another config, wrote {', '.join(summary['moved_aside'])}, "
                     f"which this run's config does not: moved to {outputs.PREVIOUS}/, so every table here is this "
                     "run's."))
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

