"""The study's question, answered from a run's tables: within- vs cross-family figures, their ratio with a CI, beside
the published study's numbers, and a two-sentence reading generated from them.

Figures (each the mean over the run's pairs of that relation, at the seed-averaged best layer pair over the scored
layers): max debiased CKA (raw and standardized), best transfer R^2, probe transfer per task (the target's probe on
mapped source activations; its own accuracy and the shuffled-pair map beside it) and the next-token probe (top-1).
The ratio is cross / within. Its CI resamples texts: the units computed every pair's figure (the max over its
scored layer pairs) on the same half-sized subsamples of the texts (CKA), of the maps' test rows (R^2) or of the
probes' test rows, so each subsample gives a ratio; the interval is the basic subsampling interval around the
first seed's ratio (xsim.resampling.subsample_interval). Figures without resamples, or whose pairs hold different
texts, show no CI. Steering efficacies (the steering stage's summary figure per concept) take their CI from the
pairs' own intervals instead (steering_ci): those hold direction noise, which no text resample does.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


# STUDY.md: max debiased CKA over 81 pairs of block outputs, probe transfer Gemma -> Qwen (cross) vs Llama 1B -> 3B
# (within), next-token top-1; the best cross-family map explained 5-7 % of the target's variance.
PUBLISHED = {
    ("cka_debiased", "none"): {"within": 0.914, "cross": float(np.mean([0.208, 0.222, 0.181, 0.184]))},
    "next_token_top1": {"within": 0.589, "cross": 0.049},
    "probes": {"ag_news_sports": {"within": 0.977, "cross": 0.713}, "toxigen": {"within": 0.739, "cross": 0.670},
               "sst2": {"within": 0.737, "cross": 0.550}},
    "r2": {"cross": 0.06},
}


def _ratio(within: float, cross: float) -> float:
  """cross / within; NaN unless within > 0 and cross >= 0 (a negative R^2, worse than predicting the mean, has no
  meaningful share of the within-family value)."""
  return cross / within if within > 0 and cross >= 0 else float("nan")


def _group_mean(records: Sequence[dict], relation: str, value: str) -> Optional[float]:
  values = [r[value] for r in records if r["relation"] == relation]
  return float(np.mean(values)) if values else None


def ratio_ci(resamples: dict, relations: dict, level: float) -> Optional[list]:
  """resamples: {pair: {"estimate", "samples": [R] on the shared subsamples, "n"}} -> the CI of mean(cross) /
  mean(within), or None without pairs of both relations, when they hold different numbers of rows or when the
  within-family mean is zero on some subsample, or when a pair has no subsamples (None: too few rows)."""
  within = [r for p, r in resamples.items() if relations[p] == "within"]
  cross = [r for p, r in resamples.items() if relations[p] == "cross"]
  if (not within or not cross or len({r["n"] for r in within + cross}) != 1
      or any(r["samples"] is None for r in within + cross)):
    return None
  mean = lambda group, key: np.mean([np.asarray(r[key], np.float64) for r in group], axis=0)
  estimate = _ratio(mean(within, "estimate"), mean(cross, "estimate"))
  if not np.isfinite(estimate):
    return None
  from xsim import resampling
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = mean(cross, "samples") / mean(within, "samples")
  if not np.all(np.isfinite(ratios)):  # a subsample where no within-family pair scores above zero
    return None
  low, high = resampling.subsample_interval(estimate, ratios, within[0]["n"], level=level)
  return [float(low), float(high)]


def answer(headline: dict, resamples: dict, relations: dict, level: float = 0.95) -> dict:
  """{"figures": [{"figure", "within", "cross", "ratio", "ratio_ci", "published_within", "published_cross",
  "published_ratio", "detail", "pairs": each pair's figure and where it sits (_per_pair)}], "sensitivity": the CKA
  figures at other scopes of layers (sensitivity), "reading": str} from the headline records (tables.headline) and
  the first seed's resamples: {figure key ((measure, preprocess) for CKA, "r2", ("probe", task) for probes): {pair name:
  {"estimate", "samples", "n"}}}, with the pairs' relations."""
  figures = []
  for record_key in (("cka_debiased", "none"), ("cka_debiased", "standardize")):
    records = [r for r in headline.get("similarity", []) if (r["measure"], r["preprocess"]) == record_key]
    within, cross = _group_mean(records, "within", "max"), _group_mean(records, "cross", "max")
    if within is None or cross is None:
      continue
    ci = ratio_ci(resamples.get(record_key, {}), relations, level)
    published = PUBLISHED.get(record_key, {})
    figures.append(_figure(f"max debiased CKA ({'raw' if record_key[1] == 'none' else 'standardized'})", within,
                           cross, ci, published,
                           pairs=_per_pair(records, ("model_a", "model_b"), "max", "argmax", "argmax_depth")))
  transfer = headline.get("transfer", [])
  within, cross = _group_mean(transfer, "within", "r2"), _group_mean(transfer, "cross", "r2")
  if within is not None and cross is not None:
    figures.append(_figure("best transfer R²", within, cross, ratio_ci(resamples.get("r2", {}), relations, level),
                           PUBLISHED["r2"],
                           detail=f"shuffled-pair max: within {_group_mean(transfer, 'within', 'r2_shuffled_max'):.3f}, "
                                  f"cross {_group_mean(transfer, 'cross', 'r2_shuffled_max'):.3f}",
                           pairs=_per_pair(transfer, ("source", "target"), "r2", "best", "best_depth")))
  probes = headline.get("probes", [])
  for task in sorted({r["task"] for r in probes}):
    mine = [r for r in probes if r["task"] == task]
    within, cross = _group_mean(mine, "within", "acc_mapped"), _group_mean(mine, "cross", "acc_mapped")
    if within is None or cross is None:
      continue
    own = lambda rel: _group_mean(mine, rel, "acc_target")
    shuffled = lambda rel: _group_mean(mine, rel, "acc_shuffled")
    name = "next-token probe top-1" if task == "next_token_top1" else f"probe transfer: {task}"
    if task == "next_token_top5":
      continue
    published = PUBLISHED["next_token_top1"] if task == "next_token_top1" else PUBLISHED["probes"].get(task, {})
    figures.append(_figure(name, within, cross, ratio_ci(resamples.get(("probe", task), {}), relations, level),
                           published,
                           detail=f"target's own probe {own('within'):.3f} / {own('cross'):.3f}, shuffled map "
                                  f"{shuffled('within'):.3f} / {shuffled('cross'):.3f} (within / cross)",
                           pairs=_per_pair(mine, ("source", "target"), "acc_mapped", "best", None)))
  for concept in sorted({r["concept"] for r in headline.get("steering", [])}):
    mine = [r for r in headline["steering"] if r["concept"] == concept]
    within, cross = _group_mean(mine, "within", "efficacy"), _group_mean(mine, "cross", "efficacy")
    if within is None or cross is None:
      continue
    ci, difference = steering_ci(mine, level)
    detail = (f"cross - within {cross - within:+.3f}" + (f" [{difference[0]:+.3f}, {difference[1]:+.3f}]"
                                                          if difference else "")
              + "; each pair's efficacy at the scales its perplexity rule allows, mean over its layer pairs")
    pairs = [{"pair": f"{r['source']} → {r['target']}", "relation": r["relation"], "value": r["efficacy"],
              "layers": "; ".join(f"{a}, {b} ×{scale:g}" for a, b, scale in r["layer_pairs"]), "depths": None}
             for r in mine if r["relation"] in ("within", "cross")]
    figures.append(_figure(f"steering efficacy: {concept}", within, cross, ci, {}, detail=detail,
                           pairs=sorted(pairs, key=lambda r: r["relation"] != "within")))
  matched_ci = {prep: ratio_ci(resamples.get(("matched", "cka_debiased", prep), {}), relations, level)
                for prep in ("none", "standardize")}
  return {"figures": figures, "sensitivity": sensitivity(headline.get("sensitivity", []),
                                                          headline.get("matched_depths", []), matched_ci),
          "reading": reading(figures)}


def steering_ci(records: Sequence[dict], level: float, draws: int = 20000) -> tuple:
  """(CI of mean(cross) / mean(within), CI of mean(cross) - mean(within)) of the pairs' steering efficacies, each
  pair's efficacy drawn from a normal distribution whose central `level` interval is the pair's own (which holds
  prompt and direction noise), independently across pairs; percentile intervals. The ratio's is None where the
  within-family mean falls to 0 or below in more than the interval's tail (the ratio is then unbounded); both are
  None without pairs of both relations or of intervals."""
  from statistics import NormalDist
  groups = {rel: [r for r in records if r["relation"] == rel] for rel in ("within", "cross")}
  if not all(groups.values()) or any(r.get("ci") is None for g in groups.values() for r in g):
    return None, None
  z = NormalDist().inv_cdf((1 + level) / 2)
  rng = np.random.default_rng(0)
  mean = {rel: np.mean([rng.normal(r["efficacy"], (r["ci"][1] - r["ci"][0]) / (2 * z), draws) for r in g], axis=0)
          for rel, g in groups.items()}
  tail = (1 - level) / 2
  interval = lambda x: [float(v) for v in np.quantile(x, [tail, 1 - tail])]
  difference = interval(mean["cross"] - mean["within"])
  if np.mean(mean["within"] <= 0) > tail:
    return None, difference
  with np.errstate(divide="ignore"):
    return interval(mean["cross"] / mean["within"]), difference


def sensitivity(scopes: Sequence[dict], matched: Sequence[dict] = (), matched_ci: Optional[dict] = None) -> list[dict]:
  """The debiased CKA figures at each scope of layers (tables.scope_sensitivity's groups: "min_layer" set) and at
  matched depths (tables.matched_depth_means: "min_layer" None): [{"min_layer", "figure", "within", "cross",
  "ratio", "ratio_ci"}], where the run has pairs of both relations; ratio_ci: the matched-depth ratios' CIs by
  preprocessing (matched_ci), None for the scopes (point estimates)."""
  sources = [(k, [g for g in scopes if g["min_layer"] == k], "mean_max", "max")
             for k in sorted({g["min_layer"] for g in scopes})]
  sources.append((None, list(matched), "mean_matched", "matched-depth"))
  out = []
  for scope, groups, value, kind in sources:
    for prep, name in (("none", "raw"), ("standardize", "standardized")):
      mine = {g["relation"]: g[value] for g in groups if (g["measure"], g["preprocess"]) == ("cka_debiased", prep)}
      if "within" in mine and "cross" in mine:
        out.append({"min_layer": scope, "figure": f"{kind} debiased CKA ({name})", "within": mine["within"],
                    "cross": mine["cross"], "ratio": _ratio(mine["within"], mine["cross"]),
                    "ratio_ci": (matched_ci or {}).get(prep) if scope is None else None})
  return out


def _per_pair(records: Sequence[dict], names: tuple, value: str, layers: str, depths: Optional[str]) -> list[dict]:
  """Each within- or cross-family pair's figure and where it sits: {"pair", "relation", "value", "layers",
  "depths" (None where the records give none)}, within-family pairs first."""
  rows = [{"pair": f"{r[names[0]]} → {r[names[1]]}", "relation": r["relation"], "value": r[value],
           "layers": r[layers], "depths": r[depths] if depths else None}
          for r in records if r["relation"] in ("within", "cross")]
  return sorted(rows, key=lambda r: r["relation"] != "within")


def _figure(name: str, within: float, cross: float, ci, published: dict, detail: str = "",
            pairs: Sequence[dict] = ()) -> dict:
  pw, pc = published.get("within"), published.get("cross")
  return {"figure": name, "within": within, "cross": cross, "ratio": _ratio(within, cross), "ratio_ci": ci,
          "published_within": pw, "published_cross": pc,
          "published_ratio": _ratio(pw, pc) if pw is not None and pc is not None else None, "detail": detail,
          "pairs": list(pairs)}


def reading(figures: Sequence[dict]) -> str:
  """A few sentences generated from the figures: how the CKA ratio compares with the published one (and whether its
  CI excludes it), at which depths its maxima sit, how much of the probes' accuracy survives the maps across
  families, and how much of the target's own steering effect mapped vectors carry."""
  if not figures:
    return "This run has no within-family and cross-family pair to compare, so it cannot answer the question."
  by_name = {f["figure"]: f for f in figures}
  cka = by_name.get("max debiased CKA (raw)") or figures[0]
  first = (f"Under this run's protocol cross-family {cka['figure']} is {cka['ratio']:.2f} of the within-family value "
           f"({cka['cross']:.3f} vs {cka['within']:.3f})")
  if cka["ratio_ci"] is not None:
    first += f", 95% CI [{cka['ratio_ci'][0]:.2f}, {cka['ratio_ci'][1]:.2f}]"
  if cka["published_ratio"] is not None:
    outside = cka["ratio_ci"] is not None and not cka["ratio_ci"][0] <= cka["published_ratio"] <= cka["ratio_ci"][1]
    first += (f", against {cka['published_ratio']:.2f} in the published study"
              + (" (outside this interval)." if outside else "."))
  else:
    first += "."
  placed = [p for p in cka.get("pairs", ()) if p["depths"] is not None]
  if placed:
    where = lambda relation: ", ".join(f"{p['depths'][0]:.2f} / {p['depths'][1]:.2f} ({p['pair']})"
                                       for p in placed if p["relation"] == relation)
    first += (f" The maxima sit at relative depths (source / target) {where('within')} within family and "
              f"{where('cross')} across families.")
  probes = [f for f in figures if f["figure"].startswith("probe transfer")]
  if probes:
    kept = np.mean([f["ratio"] for f in probes])
    second = (f"Through the maps, cross-family probes reach {kept:.0%} of the within-family probes' accuracy "
              f"(mean over {len(probes)} task{'s' if len(probes) > 1 else ''}).")
  else:
    r2 = by_name.get("best transfer R²")
    second = (f"The best cross-family map explains R² {r2['cross']:.2f} of the target's activations against "
              f"{r2['within']:.2f} within family." if r2 else "No transfer figure is in this run.")
  steered = [f for f in figures if f["figure"].startswith("steering efficacy")]
  if steered:
    third = "Steering vectors mapped into the target reach " + "; ".join(
        f"{f['cross']:.2f} of the target's own vector's effect across families against {f['within']:.2f} within "
        f"({f['figure'].split(': ', 1)[1]})" for f in steered) + "."
    return " ".join((first, second, third))
  return first + " " + second
