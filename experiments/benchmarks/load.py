"""Peak memory and time of loading a model: `xsim.load_model` vs transformers' `from_pretrained`, same file.

    python -m experiments.benchmarks.load            # the four packaged GGUF models and a safetensors checkpoint
    python -m experiments.benchmarks.load --models smollm2-135m safetensors --out load.json

Each load runs in a fresh subprocess, one at a time (the 1.5B needs ~8 GB a side). The child first imports
everything its loader needs and initialises JAX (xsim side) or reads the config (both), then resets the kernel's
peak-RSS counter (/proc/self/clear_refs), so "baseline" is the process after imports and "peak" the highest RSS
during the load alone. Parameter bytes are counted from the loaded model (each side's own tree; tied weights
once). Wall time on a shared machine follows the other tenants' load, so process CPU time (user + system) is
reported too, and the two sides alternate model by model.

"safetensors" is a random SmolLM2-135M-shaped Llama written with `save_pretrained` to a temporary directory
(transformers' random init; 135M float32 parameters): the safetensors path of both loaders.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from experiments import cli

PACKAGED = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
SAFETENSORS = "safetensors"
SIDES = ("xsim", "transformers")
GIB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=[*PACKAGED, SAFETENSORS],
                 help=f"packaged names ({', '.join(PACKAGED)}), a .gguf file, a HF directory, or '{SAFETENSORS}' "
                      "(a random SmolLM2-135M-shaped safetensors checkpoint)")
  p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--tokenizer", action="store_true", help="load the tokenizer too (both sides); default weights only")
  p.add_argument("--repeats", type=int, default=1, help="rounds over all models and sides")
  p.add_argument("--out", default=None, help="write the rows as JSON here")
  p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # internal: one measured load
  p.add_argument("--path", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error("--repeats must be positive.")
  return args


# ---------------------------------------------------------------------------------------------------------------
# Child: one load in a fresh process


def _status() -> dict[str, int]:
  """VmRSS and VmHWM (peak) of this process in bytes."""
  with open("/proc/self/status") as f:
    fields = dict(line.split(":", 1) for line in f)
  return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _measure(load) -> dict:
  """Resets the peak-RSS counter, runs `load()` -> param bytes, and returns the figures."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
  baseline = _status()["VmRSS"]
  wall, cpu = time.perf_counter(), _cpu_seconds()
  param_bytes = load()
  wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  return {"baseline": baseline, "peak": _status()["VmHWM"], "param_bytes": param_bytes, "wall_s": wall, "cpu_s": cpu}


def child_xsim(path: str, dtype: str, tokenizer: bool) -> dict:
  import jax
  import xsim
  from xsim.models import gguf  # noqa: F401  (imported by load_model for GGUF files; part of the baseline)
  jax.numpy.zeros(1).block_until_ready()  # backend initialised before the baseline
  xsim.models.read_config(path)  # the config classes load_model imports

  def load():
    model = xsim.load_model(path, dtype=dtype, load_tokenizer=tokenizer)
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(model.params))
  return _measure(load)


def child_transformers(path: str, dtype: str, tokenizer: bool) -> dict:
  import torch
  import transformers
  directory, gguf_file = _hf_location(path)
  transformers.AutoConfig.from_pretrained(directory, gguf_file=gguf_file)  # imports, as the xsim side does

  def load():
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file,
                                                              dtype=getattr(torch, dtype))
    if tokenizer:
      transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
  return _measure(load)


def _hf_location(path: str) -> tuple[str, str | None]:
  """A .gguf file or HF directory -> (directory, gguf_file or None), as from_pretrained takes them."""
  if path.endswith(".gguf"):
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
  return path, None


# ---------------------------------------------------------------------------------------------------------------
# Parent: the table


def resolve(model: str, scratch: str) -> str:
  """--models entry -> a path both sides can load (packaged names fetched into the xsim cache)."""
  if model == SAFETENSORS:
    from experiments.benchmarks.forward import write_random_checkpoint
    directory = os.path.join(scratch, "random-smollm2-135m")
    if not os.path.isdir(directory):
      write_random_checkpoint(directory, seed=0)
    return directory
  from xsim.models import assets, model_source
  if model_source(model) == "packaged":
    return str(assets.fetch_model(model))
  return model


def run_child(side: str, path: str, args: argparse.Namespace) -> dict:
  command = [sys.executable, "-m", "experiments.benchmarks.load", "--child", side, "--path", path,
             "--dtype", args.dtype] + (["--tokenizer"] if args.tokenizer else [])
  result = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  if result.returncode != 0:
    raise RuntimeError(f"{side} load of {path} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def row_text(row: dict) -> str:
  p, b, k = row["param_bytes"], row["baseline"], row["peak"]
  return (f"{row['model']:20s} {row['side']:12s} {p / GIB:7.2f} {b / GIB:9.2f} {k / GIB:7.2f} {k / p:8.2f} "
          f"{(k - b) / p:12.2f} {row['wall_s']:7.1f} {row['cpu_s']:7.1f}")


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    child = child_xsim if args.child == "xsim" else child_transformers
    print(json.dumps(child(args.path, args.dtype, args.tokenizer)))
    return
  print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} | dtype {args.dtype} | tokenizer "
        f"{'loaded' if args.tokenizer else 'not loaded'} | sizes in GiB, times in s")
  print(f"{'model':20s} {'side':12s} {'params':>7s} {'baseline':>9s} {'peak':>7s} {'peak/p':>8s} "
        f"{'(peak-base)/p':>12s} {'wall':>7s} {'cpu':>7s}")
  rows = []
  with tempfile.TemporaryDirectory(prefix="xsim-load-bench-") as scratch:
    for _ in range(args.repeats):
      for model in args.models:
        path = resolve(model, scratch)
        for side in args.sides:
          row = {"model": model, "side": side, "path": path, **run_child(side, path, args)}
          print(row_text(row), flush=True)
          rows.append(row)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"dtype": args.dtype, "tokenizer": args.tokenizer, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
