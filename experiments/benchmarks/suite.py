"""Every benchmark, each side by side with its alternative, in its own subprocess: one JSON and one Markdown table.

    python -m experiments.benchmarks.suite                               # cpu sizes: < 15 min on 2 quiet cores
    python -m experiments.benchmarks.suite --only cka neighbors          # a subset
    python -m experiments.benchmarks.suite --platform gpu --out_dir $OUT # shared/BENCHMARKS.md's sizes, one GPU
    python -m experiments.benchmarks.suite --smoke                       # tiny sizes: does every script run?
    python -m experiments.benchmarks.suite --rehearse                    # the gpu runs' smoke sizes on the CPU

Each run is `python -m experiments.benchmarks.NAME ... --out FILE` at the sizes of RUNS[platform] (--smoke: tiny
sizes whose figures mean nothing); the script measures xsim and its alternative in that one run and writes its
own JSON, from which one small function per benchmark (HEADLINES) picks the headline figures and the issue's
target for them. A run that fails or passes its time limit is recorded with the tail of its output and the
suite goes on; with --budget_s, runs that would start after the budget is spent are recorded as skipped.
Written to --out_dir: benchmarks.json (machine facts, every run's JSON and headlines), benchmarks.md (the table),
and logs/ (each run's output).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import operator
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from experiments import cli
from experiments.benchmarks import devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Run:
  """One subprocess: experiments.benchmarks.`name` with `argv` (plus --out); `size` says what ran."""
  name: str
  size: str
  argv: tuple[str, ...] = ()
  timeout_s: float = 900.0


def _cpu_runs() -> list[Run]:
  """Sizes for 2 quiet cores, the whole suite in under 15 minutes (where a script's default takes longer, the
  reduction is in `size`)."""
  return [
      Run("forward", "SmolLM2-135M shape, fp32, batch 8 x 128, 3 calls a side", ("--repeats", "3")),
      Run("extract", "SmolLM2-135M shape, fp32, 64 texts <= 48 words (default 256 <= 64), batch 16",
          ("--num_texts", "64", "--max_words", "48")),
      Run("cka", "24 x 24 layers, n 2,048 (default 4,096), d 1,024 / 2,048; null x50; loop on 2 pairs",
          ("--n", "2048", "--permutations", "50", "--loop_pairs", "2")),
      Run("neighbors", "the demo's grid: 31 x 19 layers, n 384, d 576 / 640, k 10; null x100"),
      Run("transfer", "6 x 6 layers (default 24), n 4,096, d 576 -> 640 (the demo pair's widths), 100 Adam steps, "
          "batch 512; timed on 2 sources, loops on 3 targets", ("--layers", "6", "--n", "4096", "--d", "576",
                                                              "--d_target", "640", "--steps", "100", "--batch_size",
                                                              "512", "--sources", "2", "--matmul", "1024")),
      Run("transfer", "6 x 6 layers, n 4,096, d 512, 100 Adam steps, batch 1,024 (issue 5's workload, 2.1x then); "
          "timed on 2 sources, loops on 3 targets", ("--layers", "6", "--n", "4096", "--d", "512", "--steps", "100",
                                                     "--sources", "2", "--matmul", "1024")),
      Run("load", "smollm2-135m GGUF and a random SmolLM2-shaped safetensors (default: all four GGUF), fp32",
          ("--models", "smollm2-135m", "safetensors")),
      Run("long_text", "4 x 4,096 tokens, tiny Llama, fp32, last token"),
      Run("store", "30 x 2,048 x 576 (default 4,096 rows), float32 and float16, 2 repeats",
          ("--rows", "2048", "--repeats", "2")),
      Run("sweep", "defaults: 4 models x 13 states, n 512, 1 vs 8 devices, 1 vs 2 processes"),
      Run("steering", "SmolLM2-135M GGUF (a tiny Llama if not cached), fp32, 4 vectors x 3 norms x 3 layers on 4 "
          "prompts of 10 words, xsim batch 16 (defaults)"),
  ]


def _gpu_runs() -> list[Run]:
  """shared/BENCHMARKS.md's sizes on one GPU, most important first (a --budget_s may cut the tail)."""
  cka = ("--platform", "gpu", "--matmul_side", "8192", "--peak_tflops", "67", "--precision_check",
         "--loop_pairs", "16", "--repeats", "3", "--skip_peers")
  extract = ("--platform", "gpu", "--num_texts", "2048", "--tokens", "128", "--batch", "32")
  return [
      Run("cka", "17 x 29 layers, n 5,000, d 2,048 / 1,536, fp32; null x200",
          cka + ("--layers", "17", "--layers_y", "29", "--n", "5000", "--dx", "2048", "--dy", "1536"), 150),
      Run("extract", "Llama-3.2-1B shape, bf16, 2,048 texts <= 128 tokens, batch 32",
          extract + ("--shape", "llama-3.2-1b"), 180),
      Run("sweep", "seed protocol, one 8B-class pair: 9 x 9 depths, n 5,000, d 4,096 / 3,584, 500 permutations, "
          "200 subsamples", ("--platform", "gpu", "--protocol", "seed", "--models", "2", "--layers", "9", "--n",
                             "5000", "--dims", "4096", "3584", "--permutations", "500", "--ci_resamples", "200",
                             "--devices", "1", "--processes", "1"), 240),
      Run("cka", "33 x 29 layers, n 8,192, d 4,096 / 3,584 (8B-class pair), fp32; null x200",
          cka + ("--layers", "33", "--layers_y", "29", "--n", "8192", "--dx", "4096", "--dy", "3584"), 180),
      Run("extract", "Qwen2.5-1.5B shape, bf16, 2,048 texts <= 128 tokens, batch 32",
          extract + ("--shape", "qwen2.5-1.5b"), 180),
      Run("forward", "Llama-3.2-1B shape, bf16, batch 32 x 128",
          ("--platform", "gpu", "--shape", "llama-3.2-1b", "--batch", "32", "--peak_tflops", "989"), 180),
      Run("transfer", "4 x 4 = 16 pairs, n 8,192, d 2,048 -> 1,536, 100 Adam steps, batch 1,024",
          ("--layers", "4", "--n", "8192", "--d", "2048", "--d_target", "1536", "--steps", "100", "--batch_size",
           "1024", "--loop_targets", "4", "--rounds", "2", "--matmul", "8192"), 180),
      Run("long_text", "16 x 8,192 tokens, SmolLM2-135M shape, bf16, fused attention (cuDNN)",
          ("--platform", "gpu", "--attention", "fused"), 180),
      Run("long_text", "16 x 8,192 tokens, SmolLM2-135M shape, bf16, blockwise attention", ("--platform", "gpu"),
          180),
      Run("neighbors", "the demo's grid: 31 x 19 layers, n 384, d 576 / 640, k 10; null x100", (), 120),
      Run("load", "random SmolLM2-shaped safetensors, fp32, to the GPU", ("--models", "safetensors"), 120),
      Run("store", "30 x 4,096 x 576, float32 and float16, 2 repeats", ("--repeats", "2"), 120),
      Run("steering", "SmolLM2-135M shape, random weights, fp32, 4 vectors x 3 norms x 3 layers on 16 prompts, "
          "xsim batch 64", ("--platform", "gpu", "--repeats", "3"), 120),
  ]


def _smoke_runs(platform: str) -> list[Run]:
  """Tiny sizes (seconds of work each) that take every code path of --platform; the figures mean nothing."""
  gpu = ("--platform", "gpu") if platform == "gpu" else ()
  return [
      Run("forward", "smoke", gpu + ("--batch", "2", "--seq", "16", "--repeats", "1"), 300),
      Run("extract", "smoke", gpu + ("--num_texts", "8", "--max_words", "8", "--tokens", "16", "--batch", "4"), 300),
      Run("cka", "smoke", gpu + ("--layers", "3", "--layers_y", "2", "--n", "64", "--dx", "96", "--dy", "64",
                                 "--permutations", "4", "--loop_pairs", "2", "--repeats", "1", "--precision_check")
          + (("--skip_peers", "--matmul_side", "256") if gpu else ()), 300),
      Run("neighbors", "smoke", ("--la", "3", "--lb", "2", "--n", "32", "--dx", "16", "--dy", "8", "--k", "3",
                                 "--permutations", "4", "--loop_rows", "1", "--repeats", "1"), 300),
      Run("transfer", "smoke", ("--layers", "2", "--n", "256", "--d", "16", "--d_target", "12", "--steps", "10",
                                "--batch_size", "32", "--eval_every", "5", "--lambdas", "3", "--rounds", "1",
                                "--loop_targets", "1", "--matmul", "64"), 300),
      Run("load", "smoke", ("--models", "safetensors"), 300),
      Run("long_text", "smoke", gpu + ("--num_texts", "2", "--tokens", "64", "--repeats", "1")
          + (("--shape", "smollm2", "--attention", "fused") if gpu else ("--shape", "tiny")), 300),
      Run("store", "smoke", ("--layers", "2", "--rows", "64", "--hidden", "8", "--shard_rows", "32",
                             "--repeats", "1", "--dtypes", "float32"), 300),
      Run("sweep", "smoke", gpu + ("--models", "2", "--layers", "3", "--n", "64", "--dims", "16", "24",
                                   "--permutations", "4", "--ci_resamples", "4")
          + (("--devices", "1", "--processes", "1") if gpu
             else ("--devices", "1", "2", "--processes", "1", "2", "--devices_per_process", "1", "2")),
          300),
      Run("steering", "smoke", gpu + ("--model", "smollm2-shape" if gpu else "tiny", "--prompts", "2", "--vectors",
                                      "2", "--norms", "4", "--depths", "0.5", "--batch", "4"), 300),
  ]


def runs(platform: str, smoke: bool = False) -> list[Run]:
  return _smoke_runs(platform) if smoke else (_gpu_runs() if platform == "gpu" else _cpu_runs())


NAMES = ("forward", "extract", "cka", "neighbors", "transfer", "load", "long_text", "store", "sweep", "steering")


# ---------------------------------------------------------------------------------------------------------------
# Headlines: one function per benchmark, from its JSON


@dataclasses.dataclass
class Headline:
  """One table row. ratio: a figure comparing the two sides, as `ratio_label` says; target: (op, value) from the
  issue, checked on `target_on` ("ratio" or "xsim")."""
  workload: str
  size: str
  xsim: Optional[float]
  alternative: Optional[float]
  unit: str
  ratio: Optional[float] = None
  ratio_label: str = ""
  target: Optional[tuple[str, float]] = None
  target_on: str = "ratio"

  @property
  def met(self) -> Optional[bool]:
    if self.target is None:
      return None
    value = getattr(self, self.target_on)
    return None if value is None else OPS[self.target[0]](value, self.target[1])


OPS = {">=": operator.ge, "<=": operator.le}


def _on(platform: str, cpu=None, gpu=None):
  """The target that applies on this platform (None: the issue sets none there)."""
  return cpu if platform == "cpu" else gpu


def forward_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  rows = [Headline("forward: logits + all hidden states", size, d["xsim"]["tokens_per_s"], d["hf"]["tokens_per_s"],
                   "tokens/s", d["xsim_over_hf"]["median_wall"], "xsim / HF", _on(platform, (">=", 1.0)))]
  if "gemm_ceiling" in d:  # the same weight matmuls alone: the ratio the backends' GEMMs allow
    g = d["gemm_ceiling"]
    rows.append(Headline("forward: its weight matmuls alone, XLA vs torch", size, g["xla_s"], g["torch_s"], "s",
                         g["xla_over_torch"], "XLA / torch speed"))
  if d["xsim"].get("fraction_of_peak") is not None:
    rows.append(Headline("forward: fraction of the dense peak", size, d["xsim"]["fraction_of_peak"],
                         d["hf"]["fraction_of_peak"], "of peak"))
  return rows


def extract_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  return [Headline("extraction: last token of every layer, to host", size, d["xsim_tokens_per_s"],
                   d["hf_tokens_per_s"], "tokens/s", d["xsim_over_hf"], "xsim / HF loop",
                   _on(platform, (">=", 1.8), (">=", 1.2)))]


def cka_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  rows = []
  for row in d["rows"]:
    target = None
    if row["workload"] == "grid" and row["alternative"].startswith("per-pair loop"):
      target = _on(platform, (">=", 35.0))
    elif row["alternative"].startswith("pytorch-cka"):
      target = _on(platform, (">=", 2.0))
    rows.append(Headline(f"CKA {row['workload']} vs {row['alternative']}", size, row["xsim_s"],
                         row["alternative_s"], "s", row["alternative_s"] / row["xsim_s"], "alt / xsim time", target))
  throughput = d["throughput"]
  if "fraction_of_matmul" in throughput:
    rows.append(Headline("CKA grid: fraction of the fp32 matmul at HIGHEST", size, throughput["flops_per_s"] / 1e12,
                         throughput["matmul_flops_per_s"] / 1e12, "TFLOP/s", throughput["fraction_of_matmul"],
                         "xsim / matmul", _on(platform, None, (">=", 0.8))))
  if d.get("precision"):
    rows.append(Headline("CKA precision: max |CKA - CKA at HIGHEST| (xsim; hand-batched at JAX's default)", size,
                         d["precision"]["xsim_vs_highest"], d["precision"]["default_vs_highest"], "abs"))
  return rows


def neighbors_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  return [Headline(f"{row['workload']} vs {row['alternative']}", size, row["xsim_s"], row["alternative_s"], "s",
                   row["alternative_s"] / row["xsim_s"], "alt / xsim time",
                   (">=", 10.0) if row["workload"].endswith("grid") and row["alternative"] == "per-pair loop"
                   else None)
          for row in d["rows"]]


def transfer_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  return [Headline(f"maps: {row['xsim']} vs {row['alternative']}", size, row["xsim_s"], row["alternative_s"], "s",
                   row["alternative_s"] / row["xsim_s"], "alt / xsim time",
                   _on(platform, (">=", 2.0)) if row["xsim"].startswith("xsim optax")
                   and row["alternative"] == "loop, rows step" else None)
          for row in d["rows"]]


def load_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  by_model = {}
  for row in d["rows"]:  # the last repeat of each model and side
    by_model.setdefault(row["model"], {})[row["side"]] = row
  rows = []
  for model, sides in by_model.items():
    if set(sides) != {"xsim", "transformers"}:
      continue
    growth = {s: (r["peak"] - r["baseline"]) / r["param_bytes"] for s, r in sides.items()}
    rows.append(Headline(f"load {model}: (peak - baseline RSS) / parameter bytes", size, growth["xsim"],
                         growth["transformers"], "x params", growth["xsim"] / growth["transformers"],
                         "xsim / transformers"))
    rows.append(Headline(f"load {model}: wall time", size, sides["xsim"]["wall_s"], sides["transformers"]["wall_s"],
                         "s", sides["transformers"]["wall_s"] / sides["xsim"]["wall_s"], "alt / xsim time"))
  return rows


def long_text_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  hf, ours, ratio = d["sides"]["hf"], d["sides"]["xsim"], d["xsim_over_hf"]
  memory = "device_peak_mib" if "device_peak_mib" in ratio else "peak_rss_mib"
  return [Headline(f"long texts: {'device' if memory == 'device_peak_mib' else 'RSS'} peak memory", size,
                   ours[memory], hf[memory], "MiB", ratio[memory], "xsim / HF sdpa", _on(platform, ("<=", 1.5))),
          Headline("long texts: time per call", size, ours["seconds"], hf["seconds"], "s", ratio["seconds"],
                   "xsim / HF sdpa", _on(platform, ("<=", 1.0)))]


def store_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  return [Headline(f"store {r['dtype']}: {op}", size, r["ops"][op]["xsim"]["mb_per_s"],
                   r["ops"][op]["npy"]["mb_per_s"], "MB/s", r["ops"][op]["ratio"], "xsim / npy")
          for r in d["results"] for op in ("write", "full") if "npy" in r["ops"][op]]


def sweep_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  rows = []
  for row in d["rows"]:
    label = f"{row['devices']} device(s) x {row['processes']} process(es)"
    if d["args"].get("protocol") == "seed" and row is d["rows"][0]:
      rows.append(Headline(f"sweep: comparison stage, {label}", size, row["seconds"], None, "s",
                           target=_on(platform, None, ("<=", 180.0)), target_on="xsim"))
    if row["processes"] > 1:
      shares = list(row["share_of_units"].values())
      rows.append(Headline(f"sweep: largest share of units, {label}", size, max(shares), 1 / row["processes"],
                           "of units", max(shares) * row["processes"], "share x P", ("<=", 1.1)))
    if row is not d["rows"][0]:
      rows.append(Headline(f"sweep: {label} vs the first row", size, row["seconds"], d["rows"][0]["seconds"], "s",
                           row["speedup"], "speedup"))
      rows.append(Headline(f"sweep: tables' max |difference|, {label} vs the first row", size,
                           row["max_abs_difference"], None, "abs", target=("<=", 1e-5), target_on="xsim"))
  return rows


def steering_headlines(d: dict, size: str, platform: str) -> list[Headline]:
  xsim, hf = d["sides"]["xsim"], d["sides"]["hf"]
  return [Headline(f"steering: token log mass, {d['interventions']} interventions x {d['prompts']} prompts", size,
                   xsim["seconds"], hf["seconds"], "s", d["hf_over_xsim"], "alt / xsim time"),
          Headline("steering: max |score difference|, xsim vs the hook loop", size, d["max_abs_difference"], None,
                   "abs", target=("<=", d["args"]["tolerance"]), target_on="xsim")]


HEADLINES: dict[str, Callable[[dict, str, str], list[Headline]]] = {
    "forward": forward_headlines, "extract": extract_headlines, "cka": cka_headlines,
    "neighbors": neighbors_headlines, "transfer": transfer_headlines, "load": load_headlines,
    "long_text": long_text_headlines, "store": store_headlines, "sweep": sweep_headlines,
    "steering": steering_headlines}


# ---------------------------------------------------------------------------------------------------------------
# Running


def child_env(platform: str, rehearse: bool = False) -> dict:
  """The benchmarks' environment; `rehearse`: the gpu platform's code paths on the CPU (see devices.py)."""
  env = dict(os.environ)
  if rehearse:
    env.update({devices.REHEARSAL: "1", "JAX_PLATFORMS": "cpu"})
  elif platform == "gpu":
    # Scripts that hold JAX and PyTorch on one GPU (forward, cka) need room beside JAX's preallocated pool.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  else:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def run_one(run: Run, index: int, out_dir: str, platform: str, timeout_s: float, rehearse: bool = False) -> dict:
  """Runs one benchmark in its own process group (so a timeout ends its children too) -> its record."""
  raw = os.path.join(out_dir, "raw", f"{index:02d}-{run.name}.json")
  log = os.path.join(out_dir, "logs", f"{index:02d}-{run.name}.log")
  argv = [sys.executable, "-m", f"experiments.benchmarks.{run.name}", *run.argv, "--out", raw]
  record = dict(name=run.name, size=run.size, argv=argv[1:], log=os.path.relpath(log, out_dir))
  start = time.perf_counter()
  with open(log, "w") as out:
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(platform, rehearse), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      code = None
  record["seconds"] = time.perf_counter() - start
  with open(log) as f:
    tail = f.read()[-3000:]
  if code != 0 or not os.path.exists(raw):
    reason = f"timed out after {timeout_s:.0f} s" if code is None else f"exit code {code}"
    return dict(record, status="failed", error=reason, output_tail=tail)
  with open(raw) as f:
    figures = json.load(f)
  try:
    headlines = [dataclasses.asdict(h) | {"met": h.met} for h in HEADLINES[run.name](figures, run.size, platform)]
  except (KeyError, TypeError, ZeroDivisionError) as e:  # a figure missing from the JSON: say which
    return dict(record, status="failed", error=f"picking headlines: {type(e).__name__}: {e}", figures=figures,
                output_tail=tail)
  return dict(record, status="ok", figures=figures, headlines=headlines)


def machine_facts(platform: str, rehearse: bool = False) -> dict:
  """Platform, devices (from a short child process, so this one never holds an accelerator), versions, date."""
  probe = ("import json, jax; d = jax.devices(); "
           "print(json.dumps(dict(device_kind=d[0].device_kind, device_count=len(d), backend=d[0].platform)))")
  try:
    out = subprocess.run([sys.executable, "-c", probe], env=child_env(platform, rehearse), capture_output=True,
                         text=True, timeout=300, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
  except (subprocess.SubprocessError, ValueError, IndexError) as e:
    found = dict(device_error=f"{type(e).__name__}: {e}")
  versions = {}
  for package in ("jax", "jaxlib", "flax", "torch", "transformers"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = None
  return dict(platform=platform, rehearsal=rehearse, **found, cpu_count=os.cpu_count(), versions=versions,
              commit=commit, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# ---------------------------------------------------------------------------------------------------------------
# The table


def _number(value: Optional[float], unit: str = "") -> str:
  if value is None:
    return "—"
  text = f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
  return f"{text} {unit}".strip()


def markdown(result: dict) -> str:
  facts = result["machine"]
  load = result["load_average"]
  kind = ", rehearsed on the CPU" if facts.get("rehearsal") else (", smoke sizes" if result["smoke"] else "")
  lines = [f"# xsim benchmarks ({facts['platform']}{kind})", "",
           f"{facts.get('device_count', '?')} x {facts.get('device_kind', '?')}, {facts['cpu_count']} CPUs; "
           f"jax {facts['versions']['jax']}, torch {facts['versions']['torch']}, transformers "
           f"{facts['versions']['transformers']}; {facts['date']}, commit {facts['commit']}; load average "
           f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after; {result['seconds']:.0f} s in all.", "",
           "| benchmark | workload / size | xsim | alternative | ratio | target | met? |",
           "|---|---|---|---|---|---|---|"]
  for record in result["runs"]:
    if record["status"] != "ok":
      error = f"{record['status']}: {record.get('error', '')} (see {record.get('log', 'logs')})".replace("|", "\\|")
      lines.append(f"| {record['name']} | {record['size']} | {error} | | | | {record['status']} |")
      continue
    for h in record["headlines"]:
      ratio = f"{_number(h['ratio'])} ({h['ratio_label']})" if h["ratio"] is not None else "—"
      target, met = "—", "—"
      if h["target"] and not result["smoke"]:  # smoke figures are not measurements
        target = f"{h['target_on'].replace('ratio', h['ratio_label'] or 'ratio')} {h['target'][0]} {h['target'][1]:g}"
        met = {True: "yes", False: "**no**", None: "—"}[h["met"]]
      cells = [record["name"], f"{h['workload']}; {h['size']}", _number(h["xsim"], h["unit"]),
               _number(h["alternative"], h["unit"]), ratio, target, met]
      lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--only", nargs="+", choices=NAMES, default=None, help="run these benchmarks only")
  p.add_argument("--smoke", action="store_true", help="tiny sizes: every code path runs, figures mean nothing")
  p.add_argument("--rehearse", action="store_true",
                 help="the gpu platform's smoke runs on the CPU (implies --platform gpu --smoke): a dry run of "
                      "launch/gpu_benchmarks.sh where no GPU is")
  p.add_argument("--out_dir", default=os.path.join("runs", "benchmarks"))
  p.add_argument("--budget_s", type=float, default=None,
                 help="skip runs once this many seconds have passed (each run's limit shrinks to what is left)")
  args = p.parse_args(argv)
  if args.rehearse:
    args.platform, args.smoke = "gpu", True
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  out_dir = os.path.abspath(args.out_dir)
  for sub in ("raw", "logs"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  selected = [r for r in runs(args.platform, args.smoke) if args.only is None or r.name in args.only]
  before = os.getloadavg()
  start = time.perf_counter()
  facts = machine_facts(args.platform, args.rehearse)
  records = []
  for index, run in enumerate(selected):
    left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
    if left is not None and left < 30:
      records.append(dict(name=run.name, size=run.size, status="skipped", error=f"--budget_s {args.budget_s:g} spent"))
      continue
    print(f"[{time.perf_counter() - start:6.0f} s] {run.name}: {run.size}", flush=True)
    record = run_one(run, index, out_dir, args.platform, run.timeout_s if left is None else min(run.timeout_s, left),
                     args.rehearse)
    print(f"[{time.perf_counter() - start:6.0f} s] {run.name}: {record['status']} in {record['seconds']:.0f} s"
          + (f" ({record['error']})" if record["status"] != "ok" else ""), flush=True)
    records.append(record)
  result = dict(machine=facts, smoke=args.smoke, seconds=time.perf_counter() - start,
                load_average=dict(before=before, after=os.getloadavg()), runs=records)
  with open(os.path.join(out_dir, "benchmarks.json"), "w") as f:
    json.dump(result, f, indent=1)
  table = markdown(result)
  with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
    f.write(table)
  print(table)
  return result


if __name__ == "__main__":
  with cli.user_errors():
    main()
