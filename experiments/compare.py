"""Compares two runs' headline numbers, e.g. the seed protocol against the aligned one.

  python -m experiments.compare --a RUN_A --b RUN_B [--out compare.md]

Both runs' numbers are recomputed from their tables as their reports compute them (experiments.report), over
each run's scored layer pairs (summary.json's min_layer). The output is markdown: per (model pair, measure,
preprocess) present in both runs, max and mean side by side with the difference B - A; the same for the
within / cross / random group means and the within / cross ratios; the best transfer map's R^2 and the probe
transfer accuracies where both runs have them; then what only one run has. Without --out it is printed.
"""
from __future__ import annotations

import os

from absl import app, flags

from experiments import report, results

# Checked in main rather than marked required: a required flag would break flag parsing in any other absl
# program (or test) that imports this module.
_A = flags.DEFINE_string("a", None, "workdir of run A (required)")
_B = flags.DEFINE_string("b", None, "workdir of run B (required)")
_OUT = flags.DEFINE_string("out", None, "write the markdown here instead of printing it")
_GROUP = {"mean of max": "mean_max", "mean of mean": "mean_mean"}
_RATIO = {"ratio of means": "mean", "ratio of maxima": "max"}


def _scored_rows(workdir: str, table: str):
  """The rows of workdir/table over the run's scored layer pairs (both >= its min_layer); None if absent."""
  path, summary = os.path.join(workdir, table), os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  min_layer = results.read_json(summary).get("min_layer", 0) if os.path.exists(summary) else 0
  return report.scored_rows(results.read_table(path), min_layer)


def _numbers(workdir: str) -> dict:
  rows = _scored_rows(workdir, "similarity.csv")
  if rows is None:
    raise ValueError(f"{os.path.join(workdir, 'similarity.csv')} does not exist; --a and --b must be workdirs of "
                     "finished runs.")
  return report.headline_numbers(rows)


def _table_blocks(run_a: str, run_b: str, table: str, numbers, heading: str, key_header: tuple, stats: dict):
  """A side-by-side block of one optional table's numbers, or a line saying which run lacks it."""
  rows_a, rows_b = _scored_rows(run_a, table), _scored_rows(run_b, table)
  if not rows_a or not rows_b:
    missing = " and ".join(name for name, rows in (("A", rows_a), ("B", rows_b)) if not rows)
    return [report.Heading(2, heading), report.Para(f"Not compared: no {table} in {missing}.")]
  a, b = _pick(numbers(rows_a), stats), _pick(numbers(rows_b), stats)
  stat_header = tuple(h for s in stats for h in (f"{s} A", f"{s} B", f"{s} B-A"))
  return [report.Heading(2, heading), report.Table(key_header + stat_header, _side_by_side(a, b, tuple(stats)))]


def _side_by_side(a: dict, b: dict, stats: tuple[str, ...]) -> tuple:
  """For each key in both: the key's columns, then per stat A, B and B - A."""
  rows = []
  for key in [k for k in a if k in b]:
    row = list(key)
    for s in stats:
      row += [report.fmt(a[key][s]), report.fmt(b[key][s]), report.fmt(b[key][s] - a[key][s])]
    rows.append(tuple(row))
  return tuple(rows)


def _pick(numbers: dict, labels: dict) -> dict:
  """{key: {field: v}} -> {key: {label: v}} for the (label, field) pairs of labels."""
  return {k: {label: v[field] for label, field in labels.items()} for k, v in numbers.items()}


def _one_sided(a: dict, b: dict, name: str) -> list[str]:
  return [f"only in {name}: " + " / ".join(map(str, k)) for k in a if k not in b]


def compare_runs(run_a: str, run_b: str) -> str:
  """-> markdown comparing the similarity headline numbers of two run workdirs."""
  a, b = _numbers(run_a), _numbers(run_b)
  # The relation is the pair's, so it joins the key: a pair labelled differently in the two runs is one-sided.
  pairs = lambda n: {k[:2] + (p["relation"],) + k[2:]: p for k, p in n["pairs"].items()}
  stat_header = lambda *stats: tuple(h for s in stats for h in (f"{s} A", f"{s} B", f"{s} B-A"))
  blocks = [
      report.Heading(1, "Run comparison"),
      report.Para(f"A = `{run_a}`, B = `{run_b}`. Numbers recomputed from each run's tables, "
                  f"{report.DECIMALS} decimals; maxima, means and best pairs over each run's scored layer pairs "
                  "(its summary.json min_layer; all pairs without one), cells averaged over seeds."),
      report.Heading(2, "Model pairs"),
      report.Table(("model A", "model B", "relation", "measure", "preprocess") + stat_header("max", "mean"),
                   _side_by_side(pairs(a), pairs(b), ("max", "mean"))),
      report.Heading(2, "Groups"),
      report.Table(("measure", "preprocess", "relation") + stat_header(*_GROUP),
                   _side_by_side(_pick(a["groups"], _GROUP), _pick(b["groups"], _GROUP), tuple(_GROUP))),
      report.Heading(2, "Within / cross-family ratios"),
      report.Table(("measure", "preprocess") + stat_header(*_RATIO),
                   _side_by_side(_pick(a["ratios"], _RATIO), _pick(b["ratios"], _RATIO), tuple(_RATIO)))]
  one_sided = _one_sided(pairs(a), pairs(b), "A") + _one_sided(pairs(b), pairs(a), "B")
  measures = lambda n: {k[2:] for k in n["pairs"]}
  one_sided += [f"measure only in {name}: {m} / {p}" for name, x, y in (("A", a, b), ("B", b, a))
                for m, p in sorted(measures(x) - measures(y))]
  blocks += _table_blocks(run_a, run_b, "transfer.csv", report.transfer_numbers, "Transfer maps",
                          ("source", "target", "method"), {"best R²": "r2", "R² shuffled max": "r2_shuffled_max"})
  blocks += _table_blocks(run_a, run_b, "probes.csv", report.probe_numbers, "Probe transfer",
                          ("task", "source", "target"), {"mapped": "mapped", "target ceiling": "target",
                                                         "majority": "majority"})
  blocks += [report.Heading(2, "In one run only"),
             report.Bullets(tuple(one_sided)) if one_sided else report.Para("Nothing: both runs cover the same "
                                                                            "pairs, measures and preprocessings.")]
  return report.to_markdown(blocks)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --a, --b and --out.")
  if not _A.value or not _B.value:
    raise app.UsageError("both --a and --b are required: the workdirs of the two runs to compare.")
  text = compare_runs(_A.value, _B.value)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    print(text, end="")


if __name__ == "__main__":
  app.run(main)
