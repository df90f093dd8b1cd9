"""The comparison stage of a model sweep (every model pair, every layer pair, permutation nulls, subsampling CIs,
maps) on 1 vs 8 devices and on 1 vs 2 processes (of --devices_per_process devices each): the same tables, and each
process's and device's share.

    python -m experiments.benchmarks.sweep                        # 4 models x 13 hidden states, n 512, CPU
    python -m experiments.benchmarks.sweep --models 10 --layers 29 --n 5000 --dims 1536 2048 --devices 1 8 \\
        --processes 1 --platform gpu                              # a 10-model sweep on an 8-GPU node
    python -m experiments.benchmarks.sweep --protocol seed --models 2 --layers 9 --n 5000 --dims 4096 3584 \\
        --permutations 500 --ci_resamples 200 --devices 1 --processes 1 --platform gpu   # an 8B pair, one GPU

Activations are synthetic (speed does not depend on values): K models share a low-rank latent, mixed and
noised differently per model and layer, so CKA, maps and nulls have real structure. --protocol demo compares
them with the demo's settings (debiased CKA and mutual k-NN on standardized rows, tuned ridge maps); --protocol seed
with the seed protocol's (debiased CKA on raw rows, untuned ridge maps). Every configuration runs in
its own subprocess (forced host devices on CPU) through the runner's own stages (experiments/stages),
units (experiments.units) and tables step, into its own workdir; the runner's cache is cold each time. Printed:
wall time of the comparison stage, units per process, devices per process, the speedup against one device and
one process, and the largest difference of any table cell from the one-device run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", type=int, default=4, help="synthetic models; every pair is compared")
  p.add_argument("--layers", type=int, default=13, help="hidden states per model (embeddings + blocks)")
  p.add_argument("--n", type=int, default=512, help="samples (texts)")
  p.add_argument("--dims", type=int, nargs="+", default=[128, 192, 256], help="widths, cycled over the models")
  p.add_argument("--permutations", type=int, default=50)
  p.add_argument("--ci_resamples", type=int, default=50)
  p.add_argument("--devices", type=int, nargs="+", default=[1, 8], help="device counts for one process")
  p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts")
  p.add_argument("--devices_per_process", type=int, nargs="+", default=[1],
                 help="device counts of each process in the multi-process runs (a cluster: several hosts, several "
                      "accelerators each)")
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--protocol", choices=("demo", "seed"), default="demo",
                 help="similarity and transfer settings: experiments/configs/demo.py or seed_protocol.py")
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def synthetic_stores(args):
  """(model names, Stores) of K synthetic models: layer l of model m is z A[m, l] + noise, z a shared latent."""
  from experiments import extraction
  from xsim.activations.rows import INDEX_DTYPE
  from xsim.activations.store import Activations
  rng = np.random.default_rng(0)
  latent = rng.normal(size=(args.n, 32)).astype(np.float32)
  names, stores = [], extraction.Stores({}, {}, {}, {})
  index = np.zeros(args.n, INDEX_DTYPE)
  index["text"] = np.arange(args.n)
  for m in range(args.models):
    name, d = f"model{m}", args.dims[m % len(args.dims)]
    acts = np.stack([latent @ rng.normal(size=(32, d)).astype(np.float32)
                     + (0.5 + l / args.layers) * rng.normal(size=(args.n, d)).astype(np.float32)
                     for l in range(args.layers)])
    stats = {"layers": [{"layer": l, "max_abs": float(np.abs(acts[l]).max()), "mean_norm": 1.0,
                         "top_variance_dims": [0], "top_variance_share": [0.0]} for l in range(args.layers)]}
    manifest = {"model": name, "pooling": "last_word", "text_hash": "synthetic", "layers": list(range(args.layers))}
    stores.texts[name] = Activations(acts, index, list(range(args.layers)), manifest, stats, f"synthetic/{name}")
    stores.info[name] = extraction.ModelInfo(name, f"family{m % 2}", args.layers - 1, d)
    names.append(name)
  return names, stores


def config(args, names):
  from experiments.configs import demo, seed_protocol
  c = (seed_protocol if args.protocol == "seed" else demo).get_config()
  c.models = [dict(name=n, path=n, family=f"family{k % 2}") for k, n in enumerate(names)]
  if args.protocol == "seed":
    c.pairs = [list(p) for p in itertools.combinations(names, 2)]  # its own pairs name real models
  else:
    c.similarity.update(measures=["cka_debiased", "mutual_knn"], preprocess=["standardize"])
  c.statistics.update(permutations=args.permutations, ci_resamples=args.ci_resamples)
  c.baselines.random_init = False
  c.next_token.enabled = False
  c.probes.tasks = []
  return c


def child(args) -> dict:
  """One configuration: the comparison stage over this process's devices; process 0 writes the tables."""
  import jax
  from experiments import context, run as runner, study, tables, units
  from experiments.stages import STAGES
  from xsim import activations as xa
  from xsim import distributed
  distributed.initialize_from_env()
  names, stores = synthetic_stores(args)
  s = study.Study.from_config(config(args, names))
  pairs = study.model_pairs(names, {n: stores.info[n].family for n in names}, None, False)
  texts = [f"synthetic text {i}" for i in range(args.n)]  # what the synthetic rows stand for
  ctx = context.Context(s, stores, texts, {}, args.child, xa.make_mesh(-1, 1))
  phases = units.plan(STAGES, ctx, pairs)
  start = time.perf_counter()
  work = units.run_phases(phases, lambda unit: runner.compute(ctx, unit), args.child, jax.process_index(),
                          jax.process_count())
  seconds = time.perf_counter() - start
  if jax.process_index() == 0:
    tables.assemble(ctx, STAGES, pairs, work)
  return {"seconds": seconds, "work": work, "devices": jax.local_device_count(), "processes": jax.process_count(),
          "units": sum(len(phase) for phase in phases), "pairs": len(pairs)}


def _run(args, workdir: str, devices: int, processes: int) -> dict:
  argv = [sys.executable, "-m", "experiments.benchmarks.sweep", f"--child={workdir}", f"--models={args.models}",
          f"--layers={args.layers}", f"--n={args.n}", f"--permutations={args.permutations}",
          f"--ci_resamples={args.ci_resamples}", f"--protocol={args.protocol}", "--dims", *map(str, args.dims)]
  env = dict(os.environ)
  if args.platform == "cpu":
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  elif devices == 1:
    env["CUDA_VISIBLE_DEVICES"] = "0"
  if processes > 1:
    from launch.local import launch
    out = os.path.join(workdir, "result.json")
    code = launch(argv[1:] + [f"--out={out}"], processes, devices_per_process=devices)
    if code:
      raise RuntimeError(f"{processes}-process sweep failed with exit code {code}")
    return json.load(open(out))
  done = subprocess.run(argv, env=env, capture_output=True, text=True)
  line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
  if done.returncode or line is None:
    raise RuntimeError(f"sweep child failed:\n{done.stderr[-3000:]}")
  return json.loads(line[len("RESULT "):])


def _table_difference(a: str, b: str) -> float:
  from experiments import outputs
  worst = 0.0
  for name in ("similarity.csv", "transfer.csv"):
    ra, rb = outputs.read_table(os.path.join(a, name)), outputs.read_table(os.path.join(b, name))
    if len(ra) != len(rb):
      return float("inf")
    for x, y in zip(ra, rb):
      for k, v in x.items():
        if isinstance(v, float) and np.isfinite(v):
          worst = max(worst, abs(v - y[k]))
  return worst


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    result = child(args)
    print("RESULT " + json.dumps(result), flush=True)
    if args.out and result["work"]:
      with open(args.out, "w") as f:
        json.dump(result, f)
    return
  rows = []
  with tempfile.TemporaryDirectory(prefix="xsim-sweep-") as root:
    configs = [(d, 1) for d in args.devices] + [(d, p) for p in args.processes if p > 1
                                                for d in args.devices_per_process]
    for devices, processes in configs:
      workdir = os.path.join(root, f"d{devices}-p{processes}")
      result = _run(args, workdir, devices, processes)
      rows.append(dict(devices=devices, processes=processes, seconds=result["seconds"], units=result["units"],
                       per_process={p: w["computed"] for p, w in result["work"]["computed"].items()},
                       workdir=workdir))
    base = rows[0]
    for row in rows:
      row["speedup"] = base["seconds"] / row["seconds"]
      row["max_abs_difference"] = _table_difference(base["workdir"], row["workdir"])
      row["share_of_units"] = {p: c / row["units"] for p, c in row["per_process"].items()}
    for row in rows:
      del row["workdir"]
  print(f"{args.models} models ({len(rows) and rows[0]['units']} units), {args.layers} hidden states, n {args.n}, "
        f"dims {args.dims}, {args.permutations} permutations, {args.ci_resamples} subsamples, {args.protocol} "
        f"protocol, {args.platform}")
  print(f"{'devices':>8} {'processes':>9} {'seconds':>9} {'speedup':>8} {'units per process':>24} {'max |diff|':>11}")
  for r in rows:
    per = ", ".join(f"{c}" for c in r["per_process"].values())
    print(f"{r['devices']:>8} {r['processes']:>9} {r['seconds']:>9.1f} {r['speedup']:>8.2f} {per:>24} "
          f"{r['max_abs_difference']:>11.2e}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
