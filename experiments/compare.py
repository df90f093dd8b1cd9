"""Compares two runs' headline numbers, e.g. the seed protocol against the aligned one.

  python -m experiments.compare --a RUN_A --b RUN_B [--out compare.md]

Both runs' numbers are read from their summary.json (experiments/tables.py writes them once; each run's maxima are
over its own scored layer pairs). The output is markdown: per (model pair, measure,
preprocess) present in both runs, max and mean side by side with the difference B - A; the same for the
within / cross / random group means and the within / cross ratios; the best transfer map's R^2 and the probe
transfer accuracies where both runs have them; then what only one run has. Without --out it is printed.
"""
from __future__ import annotations

import os

from absl import app, flags

from experiments import cli, document, outputs
from xsim.errors import InputError

# Checked in main rather than marked required: a required flag would break flag parsing in any other absl
# program (or test) that imports this module.
_A = flags.DEFINE_string("a", None, "workdir of run A (required)")
_B = flags.DEFINE_string("b", None, "workdir of run B (required)")
_OUT = flags.DEFINE_string("out", None, "write the markdown here instead of printing it")
_GROUP = {"mean of max": "mean_max", "mean of mean": "mean_mean"}
_RATIO = {"ratio of means": "mean", "ratio of maxima": "max"}


def _headline(workdir: str) -> dict:
  """A finished run's headline numbers (summary.json, written by experiments/tables.py)."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    raise InputError(f"{path} does not exist; --a and --b must be workdirs of finished runs.")
  headline = outputs.read_json(path).get("headline")
  if not headline or "similarity" not in headline:
    raise InputError(f"{path} has no headline numbers; rerun that run with this version of xsim (its cached "
                     "results are reused) to write them.")
  return headline


_PAIR_FIELDS = ("model_a", "model_b", "relation", "measure", "preprocess")
_PAIR_HEADER = ("model A", "model B", "relation", "measure", "preprocess")


def _keyed(records: list, names: tuple) -> dict:
  """Headline records -> {tuple of their `names` fields: record}."""
  return {tuple(r[n] for n in names): r for r in records}


def _table_blocks(a: dict, b: dict, section: str, heading: str, key_header: tuple, stats: dict):
  """A side-by-side block of one optional section's numbers, or a line saying which run lacks it."""
  if section not in a or section not in b:
    missing = " and ".join(name for name, h in (("A", a), ("B", b)) if section not in h)
    return [document.Heading(2, heading), document.Para(f"Not compared: no {section} numbers in {missing}.")]
  ka, kb = (_pick(_keyed(h[section], key_header), stats) for h in (a, b))
  stat_header = tuple(h for s in stats for h in (f"{s} A", f"{s} B", f"{s} B-A"))
  return [document.Heading(2, heading), document.Table(key_header + stat_header, _side_by_side(ka, kb, tuple(stats)))]


def _side_by_side(a: dict, b: dict, stats: tuple[str, ...]) -> tuple:
  """For each key in both: the key's columns, then per stat A, B and B - A."""
  rows = []
  for key in [k for k in a if k in b]:
    row = list(key)
    for s in stats:
      row += [document.fmt(a[key][s]), document.fmt(b[key][s]), document.fmt(b[key][s] - a[key][s])]
    rows.append(tuple(row))
  return tuple(rows)


def _pick(numbers: dict, labels: dict) -> dict:
  """{key: {field: v}} -> {key: {label: v}} for the (label, field) pairs of labels."""
  return {k: {label: v[field] for label, field in labels.items()} for k, v in numbers.items()}


def _one_sided(a: dict, b: dict, name: str) -> list[str]:
  return [f"only in {name}: " + " / ".join(map(str, k)) for k in a if k not in b]


def compare_runs(run_a: str, run_b: str) -> str:
  """-> markdown comparing the headline numbers of two run workdirs."""
  a, b = _headline(run_a), _headline(run_b)
  # The relation is the pair's, so it joins the key: a pair labelled differently in the two runs is one-sided.
  pairs_a, pairs_b = _keyed(a["similarity"], _PAIR_FIELDS), _keyed(b["similarity"], _PAIR_FIELDS)
  group_key, ratio_key = ("measure", "preprocess", "relation"), ("measure", "preprocess")
  stat_header = lambda *stats: tuple(h for s in stats for h in (f"{s} A", f"{s} B", f"{s} B-A"))
  blocks = [
      document.Heading(1, "Run comparison"),
      document.Para(f"A = `{run_a}`, B = `{run_b}`. Each run's headline numbers (its summary.json), "
                    f"{document.DECIMALS} decimals; maxima, means and best pairs over each run's scored layer "
                    "pairs (its min_layer), cells averaged over seeds."),
      document.Heading(2, "Model pairs"),
      document.Table(_PAIR_HEADER + stat_header("max", "mean"), _side_by_side(pairs_a, pairs_b, ("max", "mean"))),
      document.Heading(2, "Groups"),
      document.Table(group_key + stat_header(*_GROUP),
                     _side_by_side(_pick(_keyed(a.get("groups", []), group_key), _GROUP),
                                   _pick(_keyed(b.get("groups", []), group_key), _GROUP), tuple(_GROUP))),
      document.Heading(2, "Within / cross-family ratios"),
      document.Table(ratio_key + stat_header(*_RATIO),
                     _side_by_side(_pick(_keyed(a.get("ratios", []), ratio_key), _RATIO),
                                   _pick(_keyed(b.get("ratios", []), ratio_key), _RATIO), tuple(_RATIO)))]
  one_sided = _one_sided(pairs_a, pairs_b, "A") + _one_sided(pairs_b, pairs_a, "B")
  measures = lambda pairs: {k[3:] for k in pairs}
  one_sided += [f"measure only in {name}: {m} / {p}" for name, x, y in (("A", pairs_a, pairs_b), ("B", pairs_b, pairs_a))
                for m, p in sorted(measures(x) - measures(y))]
  blocks += _table_blocks(a, b, "transfer", "Transfer maps", ("source", "target", "method"),
                          {"best R²": "r2", "R² shuffled max": "r2_shuffled_max"})
  blocks += _table_blocks(a, b, "probes", "Probe transfer", ("task", "source", "target"),
                          {"mapped": "acc_mapped", "target ceiling": "acc_target",
                                                               "majority": "acc_majority"})
  blocks += [document.Heading(2, "In one run only"),
             document.Bullets(tuple(one_sided)) if one_sided else document.Para(
                 "Nothing: both runs cover the same pairs, measures and preprocessings.")]
  return document.to_markdown(blocks)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --a, --b and --out.")
  if not _A.value or not _B.value:
    raise app.UsageError("both --a and --b are required: the workdirs of the two runs to compare.")
  with cli.user_errors():
    text = compare_runs(_A.value, _B.value)
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        f.write(text)
  if not _OUT.value:
    print(text, end="")


if __name__ == "__main__":
  app.run(main)
