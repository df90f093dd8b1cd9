r"""The ablation ladder: from the published protocol to the corrected one, one choice at a time, and how the
cross / within-family ratio moves at each step.

  python -m experiments.ladder --workdir runs/ladder [--ladder_config experiments/configs/offline_study.py]

Runs the config at `ladder:0` (the published protocol) through `ladder:K` (all of its LADDER switched) in one
workdir, so steps that do not change the activations (preprocessing, maps) reuse every cached store; after each step
its tables, summary and report are kept under step-K/. Writes ladder.md and ladder.json: per step, the choice
switched and each answer figure's cross / within ratio with its CI (experiments/answer.py).
"""
from __future__ import annotations

import os
import runpy
import shutil

from absl import app, flags, logging

from experiments import cli, document, outputs, run as runner

# --workdir is the runner's flag (experiments.run defines it): the directory for the ladder's runs and tables.
_CONFIG = flags.DEFINE_string("ladder_config", "experiments/configs/offline_study.py",
                              "A config file whose get_config takes 'ladder:K' and defines LADDER and STEPS.")
KEPT = ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv", "summary.json", "report.md", "report.html")


def protocol_cka(answer: dict) -> dict | None:
  """The step's own CKA figure: standardized where the step standardizes, else raw."""
  by_name = {f["figure"]: f for f in answer["figures"]}
  return by_name.get("max debiased CKA (standardized)") or by_name.get("max debiased CKA (raw)")


def ladder_rows(steps: list[tuple[str, str, dict]]) -> list[dict]:
  """[(step name, what it switched, answer)] -> one row per step: the ratio (and CI) of every figure."""
  rows = []
  for name, switched, ans in steps:
    row = {"step": name, "switched": switched}
    cka = protocol_cka(ans)
    if cka:
      row["max debiased CKA (the step's preprocessing)"] = (cka["ratio"], cka["ratio_ci"])
    for f in ans["figures"]:
      if not f["figure"].startswith("max debiased CKA"):
        row[f["figure"]] = (f["ratio"], f["ratio_ci"])
    rows.append(row)
  return rows


def markdown(rows: list[dict], note: str) -> str:
  figures = [k for k in rows[0] if k not in ("step", "switched")] if rows else []
  for row in rows[1:]:
    figures += [k for k in row if k not in figures and k not in ("step", "switched")]
  def cell(v):
    if v is None:
      return document.MISSING
    return f"{document.fmt_ratio(v[0])} {document.fmt_ci(v[1])}" if v[1] else document.fmt_ratio(v[0])
  table = document.Table(("step", "switched") + tuple(f"{f}: cross / within" for f in figures),
                         tuple((r["step"], r["switched"]) + tuple(cell(r.get(f)) for f in figures) for r in rows))
  return document.to_markdown([document.Heading(1, "Ablation ladder: published -> corrected protocol"),
                               document.Para(note), table])


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("Pass --workdir=DIR.")
  runner.quiet_third_party_info()
  with cli.user_errors():
    climb(flags.FLAGS.workdir)


def climb(workdir: str) -> None:
  """Runs every step of the ladder in `workdir` and writes ladder.json and ladder.md."""
  module = runpy.run_path(_CONFIG.value)
  ladder, descriptions = module["LADDER"], module["STEPS"]
  steps = []
  for k in range(len(ladder) + 1):
    logging.info("Ladder step %d of %d.", k, len(ladder))
    summary = runner.run(module["get_config"](f"ladder:{k}"), workdir)
    kept = os.path.join(workdir, f"step-{k}")
    os.makedirs(kept, exist_ok=True)
    for name in KEPT:
      if os.path.exists(os.path.join(workdir, name)):
        shutil.copy(os.path.join(workdir, name), kept)
    switched = "published protocol" if k == 0 else descriptions[ladder[k - 1]]
    steps.append((f"{k}: {'published' if k == 0 else ladder[k - 1]}", switched, summary["answer"]))
  rows = ladder_rows(steps)
  outputs.write_json(os.path.join(workdir, "ladder.json"), rows)
  note = ("Each step switches one more choice of the published protocol to the corrected one (cumulatively); "
          "each cell is the cross / within-family ratio of that figure with its 95% CI where the run has "
          "resamples for it (texts subsampled, ratio recomputed). Step reports are under step-K/.")
  with open(os.path.join(workdir, "ladder.md"), "w", encoding="utf-8") as f:
    f.write(markdown(rows, note))
  logging.info("Ladder: %s", os.path.join(workdir, "ladder.md"))


if __name__ == "__main__":
  app.run(main)
