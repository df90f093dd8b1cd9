"""The files a run writes to its workdir: the tidy tables' columns, their atomic CSV reading and writing, JSON files.

similarity.csv  one row per model pair x layer pair x measure x preprocessing x seed:
  model_a, model_b, relation ("within" | "cross" | "random"), measure, preprocess, layer_a, layer_b,
  depth_a, depth_b (layer / num_layers, in [0, 1]), value, seed
transfer.csv    one row per (source, target) x layer pair x method x seed:
  source, target, relation, method, layer_a, layer_b, depth_a, depth_b, r2, r2_shuffled, r2_mean, seed
probes.csv      one row per task x (source, target) x layer pair x seed:
  task, source, target, relation, layer_a, layer_b, depth_a, depth_b, acc_mapped, acc_mapped_lo, acc_mapped_hi
  (the target's probe on mapped source activations, with its subsampling CI on half-sized subsets of the test
  rows), acc_shuffled (the same through the shuffled-pair map),
  acc_target (ceiling), acc_source (the source's own probe), acc_majority (constant prediction), seed.
  Binary tasks are scored top-1; the published next-token probe appears as tasks next_token_top1 / next_token_top5
  (top-k accuracy over the target's most frequent next tokens; majority = its k most frequent tokens)
next_token.csv  one row per (source, target) x depth-matched layer pair x seed: source, target, relation, layer_a,
  layer_b, num_samples, clean_accuracy, then kl_X, top1_X, accuracy_X for X in mapped, shuffled, mean_ablation
  (KL(target clean || patched) in nats, top-1 agreement with the clean prediction, accuracy on the true next token)
steering.csv    one row per (source, target) x concept x layer pair x scale x seed: the mapped vector's efficacy
  (mapped / own effect) with its interval (prompts and direction noise) and p-value against the null directions,
  the null's mean / sd / q95, the random directions' lowest and highest efficacy and the shuffled-map directions'
  mean (a control: it should fall between them), the own and mapped mean effects, the zero vector's largest effect, the perplexity
  ratios of the own, mapped and a random vector on held-out passages, the vectors' norm, the target's mean
  residual norm there and the map's held-out R^2 (experiments/stages/steering.py)
summary.json    per pair and measure (first seed; every seed under measures_by_seed): max, mean, argmax layers over
  the layer pairs >= min_layer, permutation null of that max, p-value, subsampling CI; per pair "steering"
  {seed: {concept: the summary figure}}.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterable, Sequence

from xsim.io import atomic_write

SIMILARITY_COLUMNS = ("model_a", "model_b", "relation", "measure", "preprocess", "layer_a", "layer_b", "depth_a",
                      "depth_b", "value", "seed")
TRANSFER_COLUMNS = ("source", "target", "relation", "method", "layer_a", "layer_b", "depth_a", "depth_b", "r2",
                    "r2_shuffled", "r2_mean", "seed")
PROBE_COLUMNS = ("task", "source", "target", "relation", "layer_a", "layer_b", "depth_a", "depth_b", "acc_mapped",
                 "acc_mapped_lo", "acc_mapped_hi", "acc_shuffled", "acc_target", "acc_source", "acc_majority", "seed")
NEXT_TOKEN_COLUMNS = ("source", "target", "relation", "layer_a", "layer_b", "num_samples", "clean_accuracy") + tuple(
    f"{metric}_{name}" for name in ("mapped", "shuffled", "mean_ablation") for metric in ("kl", "top1", "accuracy")
) + ("seed",)
STEERING_COLUMNS = ("concept", "readout", "source", "target", "relation", "layer_a", "layer_b", "depth_a", "depth_b",
                    "scale", "norm", "residual_norm", "map_r2", "efficacy", "efficacy_lo", "efficacy_hi", "p_value",
                    "null_mean", "null_sd", "null_q95", "random_min", "random_max", "shuffled_mean", "own_effect",
                    "mapped_effect", "zero_effect", "perplexity_own", "perplexity_mapped", "perplexity_random", "seed")
TABLES = {"similarity.csv": SIMILARITY_COLUMNS, "transfer.csv": TRANSFER_COLUMNS, "probes.csv": PROBE_COLUMNS,
          "next_token.csv": NEXT_TOKEN_COLUMNS, "steering.csv": STEERING_COLUMNS}
_INTS = {"layer_a", "layer_b", "seed", "num_samples"}
_STRS = {"model_a", "model_b", "relation", "measure", "preprocess", "source", "target", "method", "task", "concept",
         "readout"}


def write_table(path: str, columns: Sequence[str], rows: Iterable[dict]) -> None:
  """Writes rows (dicts with exactly `columns`) as CSV, atomically."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: (repr(float(v)) if k not in _INTS | _STRS else v) for k, v in row.items()})

  def write(tmp):
    with open(tmp, "w") as f:
      f.write(buffer.getvalue())
  atomic_write(path, write)


def read_table(path: str) -> list[dict]:
  """Reads a table written by write_table, with numbers parsed back to int / float."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  parse = lambda k, v: v if k in _STRS else (int(v) if k in _INTS else float(v))
  return [{k: parse(k, v) for k, v in row.items()} for row in rows]


PREVIOUS = "previous"  # where a rerun moves the outputs that its own config no longer writes


def move_aside(workdir: str, names: Sequence[str]) -> list[str]:
  """Moves the files `names` of an earlier run in workdir (those this run's config does not write) into
  WORKDIR/previous/, so the workdir shows one config's results; -> the names moved."""
  moved = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  for name in moved:
    os.makedirs(os.path.dirname(os.path.join(workdir, PREVIOUS, name)), exist_ok=True)
    os.replace(os.path.join(workdir, name), os.path.join(workdir, PREVIOUS, name))
  return moved


def write_json(path: str, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
  atomic_write(path, write)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def exists(*paths: str) -> bool:
  return all(os.path.exists(p) for p in paths)
