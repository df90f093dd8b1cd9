"""Forward throughput of xsim's Flax port vs transformers' PyTorch model on the same checkpoint.

    python -m experiments.benchmarks.forward                        # SmolLM2-135M's shape, random weights, CPU
    python -m experiments.benchmarks.forward --model smollm2-135m   # the packaged GGUF (or a HF dir, a .gguf)
    python -m experiments.benchmarks.forward --platform gpu --shape llama-3.2-1b --batch 32 --peak_tflops 989
                                                                    # H100/H200 dense bf16 peak

Both sides do the same work per call, from one checkpoint on disk: logits [B, S, V] and every hidden state
(transformers with `output_hidden_states=True` under `torch.inference_mode()`, sdpa attention, no KV cache).
The warm-up call (XLA compilation, PyTorch's first call) is reported apart; the timed calls alternate between
the two sides and throughput is their median. On a shared machine wall time follows the other tenants' load, so
each call's process CPU time is printed too: it measures the work done and changes far less with load.
The forward's weight matmuls are then timed alone in both backends (`gemm_ceiling`): where they dominate, their
XLA / torch speed is about the best ratio a faithful port can reach on that backend.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import xsim
from experiments import cli
from experiments.benchmarks import devices

# SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json), given random weights.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    rope_parameters=dict(rope_type="default", rope_theta=100000.0), max_position_embeddings=8192)
# Real architectures for random checkpoints: name -> (transformers config class, its arguments), from each hub
# repository's config.json (meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-1.5B).
SHAPES = {
    "smollm2-135m": ("LlamaConfig", SMOLLM2_135M),
    "llama-3.2-1b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
        max_position_embeddings=131072)),
    "qwen2.5-1.5b": ("Qwen2Config", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0), max_position_embeddings=131072)),
}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# jax.monitoring events that together make up a jit cache miss: tracing, lowering to MLIR, XLA compilation.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=None,
                 help="local HF directory, .gguf file or packaged name (e.g. smollm2-135m); default: a random "
                      "--shape model written with save_pretrained to a temporary directory")
  p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                 help="architecture of the random checkpoint (without --model)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5, help="timed calls per side, after one warm-up call each")
  p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                 help="weights and activations of both sides; default float32 on cpu, bfloat16 on gpu")
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                 help="where both models run (gpu: JAX's CUDA backend and torch on cuda)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="the device's peak dense TFLOP/s at --dtype, to print the fraction of peak achieved")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads; default: leave torch's own default (one thread per core)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  args = p.parse_args(argv)
  if min(args.batch, args.seq, args.repeats) < 1:
    p.error("--batch, --seq and --repeats must be positive.")
  if args.torch_threads is not None and args.torch_threads < 1:
    p.error("--torch_threads must be positive (or left out for torch's default).")
  args.dtype = args.dtype or ("bfloat16" if args.platform == "gpu" else "float32")
  return args


def write_random_checkpoint(directory: str, seed: int, shape: str = "smollm2-135m", dtype: str = "float32",
                            device: str = "cpu") -> None:
  """A model of SHAPES[shape] with transformers' random init, saved as `dtype` safetensors in `directory`;
  initialised on `device` (cuda builds a 1B model in seconds)."""
  torch.manual_seed(seed)
  config_class, arguments = SHAPES[shape]
  config = getattr(transformers, config_class)(**arguments)
  with torch.device(device):
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype])
  model.save_pretrained(directory)


def model_location(model: str) -> tuple[str, str | None]:
  """--model -> (HF directory, GGUF file name inside it or None), as transformers' from_pretrained takes them."""
  path = os.path.expanduser(model)
  if not path.endswith(".gguf") and not os.path.isdir(path):
    from xsim.models import assets
    if model not in assets.MODELS:
      raise ValueError(f"--model {model!r} is not a directory, a .gguf file or one of {sorted(assets.MODELS)}.")
    path = str(assets.fetch_model(model))
  if path.endswith(".gguf"):
    if not os.path.isfile(path):
      raise ValueError(f"--model {model!r}: no such GGUF file.")
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
  return path, None


def load_torch(directory: str, gguf_file: str | None, dtype: str, device: str) -> torch.nn.Module:
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=gguf_file, dtype=TORCH_DTYPES[dtype], attn_implementation="sdpa")
  return model.to(device).eval()


def timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
  """(wall seconds, process CPU seconds over all threads, result) of one call, which must block on its result."""
  wall, cpu = time.perf_counter(), time.process_time()
  result = call()
  return time.perf_counter() - wall, time.process_time() - cpu, result


def time_calls(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
  """name -> {"first": wall s of its first call, "wall"/"cpu": s of each of `repeats` more calls, "result"}.

  The timed calls alternate between the entries round by round, so a change of load on a shared machine hits
  every entry alike. Each call must block until its result is computed (else only the dispatch is timed).
  """
  stats = {}
  for name, call in calls.items():
    first, _, result = timed(call)
    stats[name] = {"first": first, "wall": [], "cpu": [], "result": result}
  for _ in range(repeats):
    for name, call in calls.items():
      wall, cpu, stats[name]["result"] = timed(call)
      stats[name]["wall"].append(wall)
      stats[name]["cpu"].append(cpu)
  return stats


class CompileTimer:
  """Sums the tracing, lowering and XLA compilation JAX reports (jax.monitoring) while the block runs."""

  def __enter__(self) -> "CompileTimer":
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def _listen(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)


def numpy_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` GFLOP/s of an n x n float32 matmul in NumPy's BLAS: this machine's reference speed."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
  best = min(time_calls({"matmul": lambda: a @ b}, repeats)["matmul"]["wall"])
  return 2 * n**3 / best / 1e9


def projection_gemms(config) -> list[tuple[int, int, int]]:
  """(count, k, n) of each weight matmul [tokens, k] x [k, n] in one forward with logits: the projections of
  every block and the output head."""
  heads, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  width, inner, layers = config.hidden_size, config.intermediate_size, config.num_layers
  mlp_in = 2 if config.mlp == "gated" else 1
  return [(layers, width, heads), (2 * layers, width, kv), (layers, heads, width),
          (mlp_in * layers, width, inner), (layers, inner, width), (1, width, config.vocab_size)]


def gemm_ceiling(config, tokens: int, dtype: str, device: str, repeats: int = 3) -> dict[str, float]:
  """Seconds one forward's weight matmuls take in XLA (jit) and in torch, each shape timed alone (best of
  `repeats`, alternating) and summed over its count: what the two backends' GEMMs allow, attention and
  elementwise work aside. Their ratio bounds the forward's ratio when the matmuls dominate."""
  rng = np.random.default_rng(0)
  totals = {"xla": 0.0, "torch": 0.0}
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))  # fp32: no TF32
  for count, k, n in projection_gemms(config):
    a, b = rng.standard_normal((tokens, k), np.float32), rng.standard_normal((k, n), np.float32)
    a_jax, b_jax = (jax.device_put(jnp.asarray(x, dtype)) for x in (a, b))
    a_torch, b_torch = (torch.from_numpy(x).to(device, TORCH_DTYPES[dtype]) for x in (a, b))

    def run_torch():
      out = a_torch @ b_torch
      if device == "cuda":
        torch.cuda.synchronize()
      return out

    stats = time_calls({"xla": lambda: jax.block_until_ready(matmul(a_jax, b_jax)), "torch": run_torch}, repeats)
    for side in totals:
      totals[side] += count * min(stats[side]["wall"])
  return dict(xla_s=totals["xla"], torch_s=totals["torch"], xla_over_torch=totals["torch"] / totals["xla"])


def report(name: str, stats: dict[str, Any], tokens: int, flops_per_token: float,
           peak_tflops: float | None) -> dict[str, float]:
  """Prints one side's figures; returns them (tokens/s at the median wall time, FLOP/s, fraction of peak)."""
  wall, cpu = statistics.median(stats["wall"]), statistics.median(stats["cpu"])
  rate = tokens / wall
  flops = rate * flops_per_token
  peak = f" = {flops / (peak_tflops * 1e12):.1%} of peak" if peak_tflops else ""
  print(f"{name:12s} warm-up {stats['first']:6.2f} s | wall median {wall:7.3f} s (min {min(stats['wall']):.3f}, "
        f"max {max(stats['wall']):.3f}) | CPU {cpu:6.2f} s/call | {rate:8.0f} tokens/s | "
        f"{flops / 1e9:7.1f} GFLOP/s{peak}")
  return dict(tokens_per_s=rate, flops_per_s=flops, fraction_of_peak=flops / (peak_tflops * 1e12) if peak_tflops
              else None, first_s=stats["first"], wall_s=stats["wall"], cpu_s=stats["cpu"])


def main(argv=None) -> None:
  args = parse_args(argv)
  jax.config.update("jax_platforms", devices.jax_platform(args.platform))
  device = devices.torch_device(args.platform)
  if args.torch_threads is not None:
    torch.set_num_threads(args.torch_threads)
  with tempfile.TemporaryDirectory(prefix="xsim-forward-bench-") as scratch:
    if args.model is None:
      write_random_checkpoint(scratch, args.seed, args.shape, args.dtype, device)
      directory, gguf_file, source = scratch, None, f"random {args.shape}-shaped model"
    else:
      (directory, gguf_file), source = model_location(args.model), args.model
    path = os.path.join(directory, gguf_file) if gguf_file else directory
    ours = xsim.load_model(path, dtype=args.dtype, load_tokenizer=False)
    theirs = load_torch(directory, gguf_file, args.dtype, device)

  config = ours.config
  ids = np.random.default_rng(args.seed).integers(0, config.vocab_size, (args.batch, args.seq), dtype=np.int64)
  mask = np.ones_like(ids)
  ids_jax, mask_jax = jax.device_put(ids.astype(np.int32)), jax.device_put(mask.astype(np.int32))
  ids_torch, mask_torch = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

  def run_xsim():
    return jax.block_until_ready(ours.forward(ids_jax, mask_jax, compute_logits=True))

  def run_torch():
    with torch.inference_mode():
      out = theirs(input_ids=ids_torch, attention_mask=mask_torch, output_hidden_states=True, use_cache=False)
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  tokens = args.batch * args.seq
  flops_per_token = config.flops_per_token(args.seq, with_logits=True)
  threads = f"{torch.get_num_threads()} threads ({'--torch_threads' if args.torch_threads else 'default'})"
  print(f"model: {source} ({config.family}, {config.num_layers} layers, d={config.hidden_size}, "
        f"{config.num_params / 1e6:.0f}M params) | batch {args.batch} x seq {args.seq} | {args.dtype} | "
        f"{flops_per_token / 1e6:.0f} MFLOP/token")
  print(f"platform: {args.platform}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} | jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind} | torch {torch.__version__}, {threads}, "
        f"attn={theirs.config._attn_implementation}")

  with CompileTimer() as compile_timer:
    stats = time_calls({"xsim": run_xsim, "torch": run_torch}, args.repeats)
  # The ratio means something only if both sides loaded the same weights and compute the same function.
  xsim_logits = np.asarray(stats["xsim"]["result"].logits, np.float32)
  diff = np.max(np.abs(xsim_logits - stats["torch"]["result"].logits.float().cpu().numpy()))
  print(f"max |logits xsim - HF| = {diff:.2e}")

  xsim_side = report("xsim (JAX)", stats["xsim"], tokens, flops_per_token, args.peak_tflops)
  torch_side = report("HF (torch)", stats["torch"], tokens, flops_per_token, args.peak_tflops)
  print(f"xsim compile (trace + lower + XLA, within its warm-up): {compile_timer.seconds:.2f} s")
  ratios = dict(median_wall=xsim_side["tokens_per_s"] / torch_side["tokens_per_s"],
                best_wall=min(stats["torch"]["wall"]) / min(stats["xsim"]["wall"]),
                cpu=statistics.median(stats["torch"]["cpu"]) / statistics.median(stats["xsim"]["cpu"]))
  print(f"ratio xsim / HF tokens/s: {ratios['median_wall']:.2f} (median wall) | {ratios['best_wall']:.2f} (best "
        f"wall) | {ratios['cpu']:.2f} (CPU time per call)")
  gemms = gemm_ceiling(config, tokens, args.dtype, device)
  print(f"the forward's weight matmuls alone ({tokens} x k x n, best of 3): XLA {gemms['xla_s']:.3f} s, torch "
        f"{gemms['torch_s']:.3f} s: XLA / torch speed {gemms['xla_over_torch']:.2f}")
  matmul = numpy_matmul_gflops() if args.platform == "cpu" else None
  if matmul is not None:
    print(f"reference: NumPy float32 2048^3 matmul, best of 5: {matmul:.1f} GFLOP/s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(model=source, shape=args.shape if args.model is None else None, family=config.family,
                     params=config.num_params, batch=args.batch, seq=args.seq, dtype=args.dtype,
                     platform=args.platform, device=jax.devices()[0].device_kind, torch_threads=torch.get_num_threads(),
                     flops_per_token=flops_per_token, max_abs_logit_difference=float(diff),
                     compile_s=compile_timer.seconds, xsim=xsim_side, hf=torch_side, xsim_over_hf=ratios,
                     gemm_ceiling=gemms, numpy_matmul_gflops=matmul), f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
