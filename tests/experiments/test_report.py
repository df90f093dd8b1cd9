"""experiments.plots / report / compare on small synthetic run tables, against plain NumPy recomputations."""
import os
import re
import struct
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from experiments import compare, document, grids, outputs, plots, report
from experiments import tables as tables_step

# Layers each model contributes and its depth, layer / num_layers, as outputs.py defines it.
LAYERS = {"org/llama-1b": ([0, 2, 4], 4), "org/llama-3b": ([0, 1, 2, 3], 4), "gemma-2b": ([1, 2], 2),
          "rand/llama-1b": ([0, 2, 4], 4)}
PAIRS = (("org/llama-1b", "org/llama-3b", "within"), ("org/llama-1b", "gemma-2b", "cross"),
         ("org/llama-3b", "gemma-2b", "cross"), ("org/llama-1b", "rand/llama-1b", "random"))
MEASURES = ("cka", "cknna")
PREPS = ("none", "standardize")
REPORT_PAIRS = PAIRS[:2] + PAIRS[3:]  # within, cross, random: one of each keeps the report test fast
LEVEL = {"within": 0.6, "cross": 0.15, "random": 0.02}


def _cells(a, b):
  (la, na), (lb, nb) = LAYERS[a], LAYERS[b]
  return [(i, j, i / na, j / nb) for i in la for j in lb]


def similarity_rows(seed=0, pairs=PAIRS, measures=MEASURES, preps=PREPS,
                    seeds_of=lambda rel: (0, 1) if rel == "within" else (0,)):
  rng = np.random.default_rng(seed)
  return [dict(model_a=a, model_b=b, relation=rel, measure=m, preprocess=p, layer_a=i, layer_b=j, depth_a=da,
               depth_b=db, value=LEVEL[rel] + 0.3 * rng.random(), seed=s)
          for a, b, rel in pairs for m in measures for p in preps for s in seeds_of(rel)
          for i, j, da, db in _cells(a, b)]


def transfer_rows(seed=1):
  rng = np.random.default_rng(seed)
  return [dict(source=a, target=b, relation=rel, method=method, layer_a=i, layer_b=j, depth_a=da, depth_b=db,
               r2=rng.uniform(-1.5, 0.9), r2_shuffled=rng.uniform(-0.2, 0.05), r2_mean=rng.uniform(-0.02, 0.0),
               seed=0)
          for a, b, rel in PAIRS[:2] for method in ("ridge",) for i, j, da, db in _cells(a, b)]


def probe_rows(seed=2):
  rng = np.random.default_rng(seed)
  rows = []
  for task in ("sst2", "ag_news"):
    for a, b, rel in PAIRS[:3]:
      for i, j, da, db in _cells(a, b)[:2]:
        mapped = rng.uniform(0.55, 0.9)
        rows.append(dict(task=task, source=a, target=b, relation=rel, layer_a=i, layer_b=j, depth_a=da, depth_b=db,
                         acc_mapped=mapped,
                         acc_mapped_lo=mapped - 0.03, acc_mapped_hi=mapped + 0.02, acc_shuffled=0.5, acc_target=0.95,
                         acc_source=0.9, acc_majority=0.52, seed=0))
  return rows


def reference_pairs(rows):
  """Plain NumPy: {(a, b, measure, prep): (relation, max, mean, argmax layers)} of the seed-mean grid."""
  cells = {}
  for r in rows:
    key = (r["model_a"], r["model_b"], r["measure"], r["preprocess"])
    cells.setdefault(key, {"relation": r["relation"], "v": {}})["v"].setdefault(
        (r["layer_a"], r["layer_b"]), []).append(r["value"])
  out = {}
  for key, c in cells.items():
    where = list(c["v"])
    means = np.array([np.mean(c["v"][w], dtype=np.float64) for w in where])
    out[key] = (c["relation"], means.max(), means.mean(), where[int(np.argmax(means))])
  return out


def reference_groups(ref):
  groups = {}
  for (a, b, m, p), (rel, mx, mean, _) in ref.items():
    groups.setdefault((m, p, rel), []).append((mx, mean))
  return {k: (np.mean([v[0] for v in vs]), np.mean([v[1] for v in vs])) for k, vs in groups.items()}


def summary_for(rows):
  pairs = {}
  for (a, b, m, p), (rel, mx, mean, arg) in reference_pairs(rows).items():
    pairs.setdefault(f"{a}|{b}", {"relation": rel, "num_samples": 64, "measures": {}})["measures"][f"{m}|{p}"] = {
        "max": mx, "mean": mean, "argmax": list(arg), "max_ci": [mx - 0.05, mx + 0.03],
        "mean_ci": [mean - 0.01, mean + 0.01], "null_max_q95": 0.0731, "p_value": 1 / 501}
  stats = {"org/llama-1b": {"num_rows": 64, "layers": [
      {"layer": l, "max_abs": 900.0 if l == 2 else 3.0, "mean_norm": 40.0, "top_variance_dims": [7, 1, 2],
       "top_variance_share": [0.62 if l == 2 else 0.02, 0.01, 0.01], "top_maxabs_dims": [7, 1, 2]}
      for l in (0, 2, 4)]}}
  return {"ci_level": 0.95, "pairs": pairs, "activation_stats": stats}


def write_run(workdir, sim=None, transfer=None, probes=None, summary=None):
  """Writes the tables and, as the tables step does, summary.json with their headline numbers."""
  os.makedirs(workdir, exist_ok=True)
  for name, columns, rows in (("similarity", outputs.SIMILARITY_COLUMNS, sim),
                              ("transfer", outputs.TRANSFER_COLUMNS, transfer),
                              ("probes", outputs.PROBE_COLUMNS, probes)):
    if rows is not None:
      outputs.write_table(os.path.join(workdir, f"{name}.csv"), columns, rows)
  summary = dict(summary or {})
  summary["headline"] = tables_step.headline(sim, transfer, probes, summary.get("min_layer", 0))
  outputs.write_json(os.path.join(workdir, "summary.json"), summary)
  return str(workdir)


def md_tables(md):
  """-> {heading text: [tables under it, each a list of rows of cell strings (header first)]}."""
  out, heading, table = {}, None, None
  for line in md.splitlines():
    if line.startswith("#"):
      heading, table = line.lstrip("#").strip(), None
      out[heading] = []
    elif line.startswith("|") and not line.startswith("|---"):
      if table is None:
        table = []
        out[heading].append(table)
      table.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    elif not line.startswith("|---"):
      table = None
  return out


def png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
  return struct.unpack(">II", head[16:24])


def test_headline_numbers_match_numpy():
  rows = similarity_rows()
  got = tables_step.headline_numbers(rows)
  ref = reference_pairs(rows)
  assert set(got["pairs"]) == set(ref)
  for key, (rel, mx, mean, arg) in ref.items():
    p = got["pairs"][key]
    assert p["relation"] == rel and p["argmax"] == arg
    np.testing.assert_allclose([p["max"], p["mean"]], [mx, mean], rtol=1e-12)
    assert p["argmax_depth"] == (arg[0] / LAYERS[key[0]][1], arg[1] / LAYERS[key[1]][1])
    assert p["num_seeds"] == (2 if rel == "within" else 1)
    assert p["layers"] == (len(LAYERS[key[0]][0]), len(LAYERS[key[1]][0]))
  groups = reference_groups(ref)
  assert set(got["groups"]) == set(groups)
  for key, (mean_max, mean_mean) in groups.items():
    np.testing.assert_allclose([got["groups"][key]["mean_max"], got["groups"][key]["mean_mean"]],
                               [mean_max, mean_mean], rtol=1e-12)
  assert set(got["ratios"]) == {(m, p) for m in MEASURES for p in PREPS}
  for (m, p), ratio in got["ratios"].items():
    within, cross = groups[(m, p, "within")], groups[(m, p, "cross")]
    np.testing.assert_allclose([ratio["mean"], ratio["max"]], [within[1] / cross[1], within[0] / cross[0]],
                               rtol=1e-12)
    assert ratio["mean"] > 1  # the synthetic within-family level is far above the cross-family one


def test_headline_numbers_ignore_row_order_and_transpose_with_the_pair():
  rows = similarity_rows(pairs=PAIRS[:2])
  got = tables_step.headline_numbers(rows)
  shuffled = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
  assert tables_step.headline_numbers(shuffled) == got
  swap = {"model_a": "model_b", "model_b": "model_a", "layer_a": "layer_b", "layer_b": "layer_a",
          "depth_a": "depth_b", "depth_b": "depth_a"}
  swapped = tables_step.headline_numbers([{swap.get(k, k): v for k, v in r.items()} for r in rows])
  for (a, b, m, p), n in got["pairs"].items():
    t = swapped["pairs"][(b, a, m, p)]
    assert (t["max"], t["argmax"], t["layers"]) == (n["max"], n["argmax"][::-1], n["layers"][::-1])
    assert t["mean"] == pytest.approx(n["mean"], rel=1e-12)


def test_ratio_is_nan_when_cross_family_mean_is_not_positive(tmp_path):
  rows = similarity_rows(pairs=PAIRS[:2], measures=("cka",))
  for r in rows:
    if r["relation"] == "cross":
      r["value"] -= 1.0
  ratio = tables_step.headline_numbers(rows)["ratios"][("cka", "none")]
  assert np.isnan(ratio["mean"]) and np.isnan(ratio["max"])
  md = open(report.write_report(write_run(tmp_path / "run", sim=rows), {}, {})[0], encoding="utf-8").read()
  assert (f"Within / cross-family ratio: {document.NO_RATIO} of the means, {document.NO_RATIO} of the maxima "
          f"({document.NO_RATIO} where the cross-family value is <= 0).") in md  # as in the answer table


def test_transfer_numbers_match_numpy():
  rows = transfer_rows()
  got = tables_step.transfer_numbers(rows)
  assert len(got) == 2
  for (s, t, method), n in got.items():
    mine = [r for r in rows if (r["source"], r["target"], r["method"]) == (s, t, method)]
    best = max(mine, key=lambda r: r["r2"])
    assert n["best"] == (best["layer_a"], best["layer_b"])
    np.testing.assert_allclose([n["r2"], n["r2_shuffled"], n["r2_mean"], n["r2_shuffled_max"], n["r2_grid_mean"]],
                               [best["r2"], best["r2_shuffled"], best["r2_mean"], max(r["r2_shuffled"] for r in mine),
                                np.mean([r["r2"] for r in mine])], rtol=1e-12)


def test_report_numbers_equal_the_tables(tmp_path):
  sim, tr, pr = similarity_rows(pairs=REPORT_PAIRS), transfer_rows(), probe_rows()
  workdir = write_run(tmp_path / "run", sim, tr, pr, summary_for(sim))
  md_path, html_path = report.write_report(workdir, {"models": ["a", "b"], "n": 64},
                                           {"jax": "0.0-test", "date": "2025-01-01T00:00:00+00:00"})
  md = open(md_path, encoding="utf-8").read()
  tables = md_tables(md)
  assert "Not in this run" not in md
  tol = 0.5 * 10.0**-document.DECIMALS + 1e-12
  ref = reference_pairs(sim)
  for m in MEASURES:
    for p in PREPS:
      pair_table, group_table = tables[f"{m}, preprocess={p}"]
      header = pair_table[0]
      assert len(pair_table) == 1 + len(REPORT_PAIRS)
      for row in pair_table[1:]:
        cell = dict(zip(header, row))
        a, b = cell["pair"].split(" vs ")
        rel, mx, mean, arg = ref[(a, b, m, p)]
        assert cell["relation"] == rel
        assert abs(float(cell["max"]) - mx) <= tol and abs(float(cell["mean"]) - mean) <= tol
        assert cell["argmax layers (depths)"].startswith(f"{arg[0]}, {arg[1]} (")
        lo, hi = (float(x) for x in cell["max 95% CI"].strip("[]").split(","))
        assert abs(lo - (mx - 0.05)) <= tol and abs(hi - (mx + 0.03)) <= tol
        assert cell["null max q95"] == "0.073" and cell["p (max)"] == "0.002" and cell["n"] == "64"
        per_seed = {}
        for r in sim:
          if (r["model_a"], r["model_b"], r["measure"], r["preprocess"]) == (a, b, m, p):
            per_seed[r["seed"]] = max(per_seed.get(r["seed"], -np.inf), r["value"])
        assert len(per_seed) == (2 if rel == "within" else 1)
        low, high = min(per_seed.values()), max(per_seed.values())
        assert cell["seed range"] == ("-" if rel != "within" else f"[{low:.3f}, {high:.3f}]")
      groups = reference_groups(ref)
      for rel, n, mean_max, mean_mean in group_table[1:]:
        assert abs(float(mean_max) - groups[(m, p, rel)][0]) <= tol
        assert abs(float(mean_mean) - groups[(m, p, rel)][1]) <= tol
      within, cross = groups[(m, p, "within")][1], groups[(m, p, "cross")][1]
      assert f"Within / cross-family ratio: {within / cross:.{document.DECIMALS}f} of the means" in md
  assert [row[0] for row in tables["cka, preprocess=none"][1][1:]] == ["within", "cross", "random"]

  transfer_table = tables["Transfer maps"][0]
  expected = tables_step.transfer_numbers(tr)
  assert len(transfer_table) == 1 + len(expected)
  for row, ((s, t, method), n) in zip(transfer_table[1:], expected.items()):
    cell = dict(zip(transfer_table[0], row))
    assert cell["source → target"] == f"{s} → {t}" and cell["method"] == method and cell["seed range"] == "-"
    assert [float(cell[k]) for k in ("R²", "R² shuffled", "R² shuffled max", "R² mean predictor",
                                     "R² mean over grid")] == pytest.approx(
        [n["r2"], n["r2_shuffled"], n["r2_shuffled_max"], n["r2_mean"], n["r2_grid_mean"]], abs=tol)

  probe_table = tables["Probe transfer"][0]
  assert len(probe_table) == 1 + 2 * 3
  for row in probe_table[1:]:
    task, pair = row[0], row[1]
    mine = [r for r in pr if r["task"] == task and f"{r['source']} → {r['target']}" == pair]
    best = max(mine, key=lambda r: r["acc_mapped"])
    assert row[3] == f"{best['layer_a']}, {best['layer_b']}" and row[10] == str(len(mine))
    assert float(row[4]) == pytest.approx(best["acc_mapped"], abs=tol)
    assert row[6:10] == ["0.500", "0.950", "0.900", "0.520"]

  assert "Outlier layers: 2 (dim 7: 62.0%)" in md
  assert '"n": 64' in md and "0.0-test" in md

  html = open(html_path, encoding="utf-8").read()
  images = re.findall(r'<img src="([^"]+)"', html)
  assert images == re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  # 12 heatmaps, 6 raw/standardized panels, 2 transfer maps, 2 probe charts.
  assert len(images) == 12 + 6 + 2 + 2
  for src in images:
    assert src.startswith("figures/") and src.endswith(".png")
    width, height = png_size(os.path.join(workdir, src))
    assert 300 <= width <= 2000 and 300 <= height <= 1000, (src, width, height)
  assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "<table>" in html
  assert matplotlib.image.imread(os.path.join(workdir, images[0])).ndim == 3


def test_min_layer_leaves_the_embeddings_out_of_maxima_but_not_out_of_the_heatmaps(tmp_path):
  sim, tr = similarity_rows(pairs=PAIRS[:2], measures=("cka",), preps=("none",)), transfer_rows()
  for r in sim + tr:  # the embeddings (layer 0) would win every max
    if 0 in (r["layer_a"], r["layer_b"]):
      r["value" if "value" in r else "r2"] = 0.99
  blocks = [r for r in sim if r["layer_a"] >= 1 and r["layer_b"] >= 1]
  summary = summary_for(blocks)
  summary["min_layer"] = 1
  workdir = write_run(tmp_path / "run", sim, tr, None, summary)
  md = open(report.write_report(workdir, {}, {})[0], encoding="utf-8").read()
  tables = md_tables(md)
  assert "block outputs (embeddings left out)" in md
  for row in tables["cka, preprocess=none"][0][1:]:
    cell = dict(zip(tables["cka, preprocess=none"][0][0], row))
    a, b = cell["pair"].split(" vs ")
    expected = reference_pairs(blocks)[(a, b, "cka", "none")][1]  # the max of the seed-mean grid
    assert float(cell["max"]) == pytest.approx(expected, abs=1e-3) and expected < 0.99
  for row in tables["Transfer maps"][0][1:]:
    layer_a, layer_b = (int(x) for x in row[3].split(" (")[0].split(", "))
    assert layer_a >= 1 and layer_b >= 1 and float(row[4]) < 0.99
  # Every layer pair is still drawn: the llama-1b vs llama-3b heatmap has 3 x 4 cells, layer 0 included.
  assert os.path.exists(os.path.join(workdir, "figures"))
  assert {(r["layer_a"], r["layer_b"]) for r in outputs.read_table(os.path.join(workdir, "similarity.csv"))
          if r["model_b"] == "org/llama-3b"} == {(i, j) for i in (0, 2, 4) for j in (0, 1, 2, 3)}


def test_missing_tables_skip_sections(tmp_path):
  workdir = write_run(tmp_path / "probes_only", probes=probe_rows())
  md_path, _ = report.write_report(workdir, {}, {})
  md = open(md_path, encoding="utf-8").read()
  headings = set(md_tables(md))
  assert "Probe transfer" in headings
  assert not headings & {"Similarity over layer pairs", "Transfer maps", "Activation outliers"}
  assert "Not in this run: similarity (no similarity.csv or no rows); transfer (no transfer.csv or no rows); " \
         "activation outliers (no activation_stats in summary.json)." in md
  assert sorted(os.listdir(os.path.join(workdir, "figures"))) == ["probes__ag_news.png", "probes__sst2.png"]

  sim = similarity_rows(pairs=PAIRS[:2], measures=("cka",), preps=("none",))
  workdir = write_run(tmp_path / "similarity_only", sim=sim)  # no statistics: CIs and nulls show "-"
  md = open(report.write_report(workdir, {}, {})[0], encoding="utf-8").read()
  assert "Similarity over layer pairs" in md and "Transfer maps" not in md and "Probe transfer" not in md
  header, row = md_tables(md)["cka, preprocess=none"][0][:2]
  cell = dict(zip(header, row))
  assert [cell[k] for k in ("max CI", "null max q95", "p (max)", "n")] == ["-"] * 4


def test_bad_tables_raise_clear_errors():
  rows = similarity_rows(pairs=PAIRS[:1], measures=("cka",))
  with pytest.raises(ValueError, match="appear twice for seed 0"):
    tables_step.headline_numbers(rows + [dict(rows[0], seed=0)])
  with pytest.raises(ValueError, match="cells are missing"):
    tables_step.headline_numbers(rows[1:])
  with pytest.raises(ValueError, match="has two depths"):
    tables_step.headline_numbers([dict(rows[0], depth_a=0.9)] + rows[1:])
  with pytest.raises(ValueError, match="appears as both"):
    tables_step.headline_numbers([dict(rows[0], relation="cross")] + rows[1:])
  with pytest.raises(ValueError, match="relation 'family' is unknown"):
    tables_step.headline_numbers([dict(r, relation="family") for r in rows])
  with pytest.raises(ValueError, match="lacks columns"):
    tables_step.headline_numbers([{k: v for k, v in r.items() if k != "depth_b"} for r in rows])
  with pytest.raises(ValueError, match="not percentages"):
    tables_step.best_probe_rows([dict(probe_rows()[0], acc_target=95.0)])


def test_non_finite_cells_give_nan_and_a_check(tmp_path):
  sim = similarity_rows(pairs=PAIRS[1:2], measures=("cka",), preps=("none",))
  sim[3]["value"] = float("nan")
  p = tables_step.headline_numbers(sim)["pairs"][("org/llama-1b", "gemma-2b", "cka", sim[3]["preprocess"])]
  assert np.isnan(p["max"]) and np.isnan(p["mean"]) and p["argmax"] is None
  md = open(report.write_report(write_run(tmp_path / "run", sim=sim), {}, {})[0], encoding="utf-8").read()
  assert "non-finite values in the grid" in md


def test_plots_are_deterministic_and_mark_the_right_files(tmp_path):
  sim = similarity_rows(pairs=PAIRS[1:2], measures=("cka",), seeds_of=lambda rel: (0,))
  first = plots.similarity_heatmaps(sim, str(tmp_path / "one"))
  second = plots.similarity_heatmaps(sim, str(tmp_path / "two"))
  assert [os.path.basename(p) for p in first] == [
      "similarity__org-llama-1b__gemma-2b__cka__none.png", "similarity__org-llama-1b__gemma-2b__cka__standardize.png",
      "similarity__org-llama-1b__gemma-2b__cka__all-preprocess.png"]
  for a, b in zip(first, second):
    assert open(a, "rb").read() == open(b, "rb").read()
  single, panel = png_size(first[0]), png_size(first[2])
  assert panel[0] > 1.5 * single[0]  # two heatmaps side by side


def test_layer_grids_average_seeds():
  rows = similarity_rows(pairs=PAIRS[:1], measures=("cka",), seeds_of=lambda rel: (0, 1, 2))
  grid = grids.layer_grids(rows, ("model_a", "model_b", "measure", "preprocess"), ("value",))[
      ("org/llama-1b", "org/llama-3b", "cka", "none")]
  assert grid.seeds == (0, 1, 2) and grid.values["value"].shape == (3, 4)
  np.testing.assert_array_equal(grid.layers_a, [0, 2, 4])
  np.testing.assert_allclose(grid.depths_b, [0, 0.25, 0.5, 0.75])
  mine = [r["value"] for r in rows if r["preprocess"] == "none" and (r["layer_a"], r["layer_b"]) == (2, 3)]
  np.testing.assert_allclose(grid.values["value"][1, 3], np.mean(mine), rtol=1e-12)


def test_compare_lists_matches_and_one_sided_entries(tmp_path):
  sim_a = similarity_rows(seed=0, pairs=PAIRS[:3], measures=("cka",))
  sim_b = similarity_rows(seed=5, pairs=PAIRS[:2] + PAIRS[3:], measures=("cka", "cknna"))
  run_a, run_b = write_run(tmp_path / "a", sim=sim_a), write_run(tmp_path / "b", sim=sim_b)
  text = compare.compare_runs(run_a, run_b)
  tables = md_tables(text)
  pair_rows = tables["Model pairs"][0]
  assert len(pair_rows) == 1 + 2 * 2  # two shared pairs, cka with two preprocessings
  ref_a, ref_b = reference_pairs(sim_a), reference_pairs(sim_b)
  tol = 0.5 * 10.0**-document.DECIMALS + 1e-12
  for row in pair_rows[1:]:
    cell = dict(zip(pair_rows[0], row))
    key = (cell["model A"], cell["model B"], cell["measure"], cell["preprocess"])
    for stat, index in (("max", 1), ("mean", 2)):
      a, b = ref_a[key][index], ref_b[key][index]
      assert [float(cell[f"{stat} A"]), float(cell[f"{stat} B"]), float(cell[f"{stat} B-A"])] == pytest.approx(
          [a, b, b - a], abs=tol)
  one_sided = text.split("## In one run only")[1]
  for prep in PREPS:
    assert f"only in A: org/llama-3b / gemma-2b / cross / cka / {prep}" in one_sided
    assert f"only in B: org/llama-1b / rand/llama-1b / random / cka / {prep}" in one_sided
    assert f"measure only in B: cknna / {prep}" in one_sided
  assert "only in A: org/llama-1b / gemma-2b" not in one_sided
  assert "Nothing: both runs" in compare.compare_runs(run_a, run_a)

  out = tmp_path / "compare.md"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, "-m", "experiments.compare", f"--a={run_a}", f"--b={run_b}", f"--out={out}"],
                 check=True, cwd=root, timeout=120)
  assert out.read_text(encoding="utf-8") == text
  with pytest.raises(ValueError, match="summary.json does not exist"):
    compare.compare_runs(run_a, str(tmp_path))
  assert "Not compared: no transfer numbers in A and B." in text


def test_compare_puts_transfer_and_probe_numbers_side_by_side(tmp_path):
  sim, pr = similarity_rows(pairs=PAIRS[:2], measures=("cka",)), probe_rows()
  tr_a, tr_b = transfer_rows(seed=1), transfer_rows(seed=7)
  pr_b = [dict(r, acc_mapped=r["acc_mapped"] - 0.1) for r in pr]
  run_a = write_run(tmp_path / "a", sim=sim, transfer=tr_a, probes=pr)
  run_b = write_run(tmp_path / "b", sim=sim, transfer=tr_b, probes=pr_b)
  tables = md_tables(compare.compare_runs(run_a, run_b))
  tol = 0.5 * 10.0**-document.DECIMALS + 1e-12
  header, *rows = tables["Transfer maps"][0]
  assert len(rows) == 2
  for row in rows:
    cell = dict(zip(header, row))
    best = lambda tr: max(r["r2"] for r in tr if (r["source"], r["target"]) == (cell["source"], cell["target"]))
    assert [float(cell["best R² A"]), float(cell["best R² B"])] == pytest.approx([best(tr_a), best(tr_b)], abs=tol)
  header, *rows = tables["Probe transfer"][0]
  assert len(rows) == 2 * 3  # two tasks x three pairs
  for row in rows:
    cell = dict(zip(header, row))
    mine = [r["acc_mapped"] for r in pr if (r["task"], r["source"], r["target"]) == (cell["task"], cell["source"],
                                                                                     cell["target"])]
    assert float(cell["mapped A"]) == pytest.approx(max(mine), abs=tol)
    assert float(cell["mapped B-A"]) == pytest.approx(-0.1, abs=2 * tol)
    assert cell["target ceiling B-A"] == "0.000"


def _steering_rows(cells, scales=(1.0, 2.0)):
  """steering.csv rows of one pair and concept at the given (layer_a, layer_b) cells and scales."""
  from experiments import outputs as out
  return [dict({c: 0.5 for c in out.STEERING_COLUMNS}, concept="weddings", readout="words", source="a", target="b",
               relation="cross", layer_a=a, layer_b=b, depth_a=a / 4, depth_b=b / 4, scale=s,
               efficacy=0.1 * a - 0.05 * b, efficacy_lo=-0.5, efficacy_hi=0.9, seed=0)
          for a, b in cells for s in scales]


def test_steering_heatmaps_only_where_every_layer_pair_was_steered(tmp_path):
  grid = _steering_rows([(a, b) for a in (1, 2, 3) for b in (1, 2, 4)])
  (path,) = plots.steering_heatmaps(grid, str(tmp_path / "grid"))
  assert os.path.basename(path) == "steering__weddings__a__b.png" and png_size(path)[0] > png_size(path)[1]
  assert plots.steering_heatmaps(_steering_rows([(1, 1), (2, 2), (3, 4)]), str(tmp_path / "depths")) == []
  (curve,) = plots.steering_plot(grid, str(tmp_path / "curve"))
  assert os.path.basename(curve) == "steering__weddings.png"
