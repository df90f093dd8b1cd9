"""Long texts: xsim `extract_activations` vs transformers' sdpa forward, peak memory and time.

    python -m experiments.benchmarks.long_text                           # 4 texts x 4,096 tokens, tiny Llama, CPU
    python -m experiments.benchmarks.long_text --pooling mean --out long_text.json
    python -m experiments.benchmarks.long_text --platform gpu            # 16 x 8,192 tokens, SmolLM2-135M shape, bf16

Model: a random Llama written with save_pretrained (--shape tiny: 48 wide, 3 layers, 4 heads over 2 key/value
heads, like tests/activations/tiny.py; --shape smollm2: SmolLM2-135M's shape), max_position_embeddings >= the
text length, with a byte-level BPE tokenizer trained on the SOTU corpus. Texts: SOTU passages joined and cut
at a word end to at most --tokens tokens, so xsim's length bucket is --tokens itself.
Each side runs alone in its own subprocess, so its peak memory is its own (ru_maxrss; on GPU also the device's
peak): RSS after loading is printed too, as both sides import transformers and torch (about 0.4 GiB).
  hf:   AutoModelForCausalLM (sdpa attention), one padded batch, output_hidden_states=True, logits for the last
        position only, every hidden state pooled ("last" token or "mean" over real tokens) to NumPy, under
        torch.inference_mode. One warm-up call, then --repeats timed calls.
  xsim: extract_activations(RowSpec(layers="all"), batch_size=--num_texts) into a fresh store each call (never one an
        earlier round wrote: that would load, not extract): one warm-up call, whose XLA compilation is timed
        apart (jax.monitoring), then --repeats timed calls, which reuse the warm-up's compiled forward
        (extraction caches it per model, layers, site and mesh).
The sides alternate for --rounds rounds (hf, xsim, hf, xsim, ...), so a change of load on a shared machine
hits both; figures are medians over all timed calls, peaks the worst round's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from experiments import cli
from experiments.benchmarks import devices

SHAPES = {
    "tiny": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2),
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json) without its vocabulary.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, rms_norm_eps=1e-5, rope_parameters=dict(rope_type="default",
                                                                                   rope_theta=100000.0)),
}
DEFAULTS = {"cpu": dict(num_texts=4, tokens=4096, shape="tiny", dtype="float32"),
            "gpu": dict(num_texts=16, tokens=8192, shape="smollm2", dtype="bfloat16")}
VOCAB_SIZE = 1000


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--platform", choices=sorted(DEFAULTS), default="cpu")
  p.add_argument("--num_texts", type=int, default=None, help="texts, all in one batch (cpu 4, gpu 16)")
  p.add_argument("--tokens", type=int, default=None, help="tokens per text, at most (cpu 4096, gpu 8192)")
  p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (cpu tiny, gpu smollm2)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cpu float32, gpu bfloat16")
  p.add_argument("--pooling", choices=("last", "mean"), default="last")
  p.add_argument("--attention_block_size", type=int, default=None, help="xsim's block (default: its config's)")
  p.add_argument("--attention", choices=("blockwise", "fused"), default="blockwise",
                 help="xsim's attention (ModelConfig.attention; fused: cuDNN's flash kernels on GPUs)")
  p.add_argument("--repeats", type=int, default=2, help="timed calls per side and round, after one warm-up")
  p.add_argument("--rounds", type=int, default=1, help="alternating subprocess runs of each side")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  # Internal: run one side in this process and print its result as JSON (the parent sets these).
  p.add_argument("--child", choices=("hf", "xsim"), default=None, help=argparse.SUPPRESS)
  p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name, value in DEFAULTS[args.platform].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if min(args.num_texts, args.tokens, args.repeats, args.rounds) < 1:
    p.error("--num_texts, --tokens, --repeats and --rounds must be positive.")
  if args.attention_block_size is not None and args.attention_block_size < 1:
    p.error("--attention_block_size must be positive.")
  return args


def memory_mib() -> dict:
  """Peak RSS so far and current RSS of this process, MiB (Linux ru_maxrss is in KiB)."""
  with open("/proc/self/status") as f:
    current = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  return dict(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_mib=current / 1024)


def train_tokenizer(passages: list[str], workdir: str):
  """A byte-level BPE tokenizer of VOCAB_SIZE tokens trained on `passages` and saved to `workdir` (right padding)
  -> (tokenizers.Tokenizer, the transformers tokenizer saved)."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  tok.train_from_iterator(passages[:2000], trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                                   eos_token="<|endoftext|>", padding_side="right")
  tokenizer.save_pretrained(workdir)
  return tok, tokenizer


def texts_of_tokens(tok, passages: list[str], num_texts: int, tokens: int) -> list[str]:
  """`num_texts` texts of consecutive passages, each cut at a word end to at most `tokens` tokens of `tok`."""
  texts, next_passage = [], 0
  for _ in range(num_texts):
    text = ""
    while len(tok.encode(text).ids) <= tokens:
      text = f"{text} {passages[next_passage]}".strip()
      next_passage += 1
    spans = tok.encode(text).offsets
    # Cut after the last whole word within `tokens` tokens: that prefix tokenizes to the same tokens.
    end = max(e for (_, e), (s, _) in zip(spans[:tokens], spans[1:tokens + 1]) if text[e:s].isspace())
    texts.append(text[:end])
  return texts


def prepare(workdir: str, args: argparse.Namespace) -> None:
  """Writes the random checkpoint, its tokenizer and texts.json (each text at most --tokens tokens) to `workdir`."""
  import torch
  import transformers

  from xsim import data
  passages = data.load_corpus("sotu", seed=args.seed)
  tok, tokenizer = train_tokenizer(passages, workdir)
  with open(os.path.join(workdir, "texts.json"), "w") as f:
    json.dump(texts_of_tokens(tok, passages, args.num_texts, args.tokens), f)

  torch.manual_seed(args.seed)
  config = transformers.LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max(4096, args.tokens),
                                    **SHAPES[args.shape])
  transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(workdir)


def run_hf(args: argparse.Namespace, texts: list[str]) -> dict:
  import numpy as np
  import torch
  import transformers
  device = devices.torch_device(args.platform)
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.workdir)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      args.workdir, dtype=getattr(torch, args.dtype), attn_implementation="sdpa").to(device).eval()
  loaded = memory_mib()

  def extract() -> np.ndarray:
    enc = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    out = model(**enc, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    mask = enc["attention_mask"]
    if args.pooling == "last":  # the last real token, whichever side pads
      last = mask.shape[1] - 1 - torch.flip(mask, [1]).argmax(1)
      rows = torch.arange(len(texts), device=device)
      pooled = [h[rows, last] for h in out.hidden_states]
    else:
      weights = (mask / mask.sum(1, keepdim=True)).to(out.hidden_states[0].dtype)
      pooled = [torch.einsum("bsd,bs->bd", h, weights) for h in out.hidden_states]
    return np.stack([p.float().cpu().numpy() for p in pooled]), int(mask.sum())

  with torch.inference_mode():
    result = _timed_calls(extract, args.repeats)
  _, tokens = result.pop("result")
  result.update(tokens=tokens, threads=torch.get_num_threads(), loaded_rss_mib=loaded["rss_mib"])
  if device == "cuda":
    result["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
  return result


def run_xsim(args: argparse.Namespace, texts: list[str]) -> dict:
  import jax
  import xsim
  from experiments.benchmarks.forward import CompileTimer
  from xsim.activations import RowSpec
  from xsim.activations.rows import tokenize
  from xsim.models.layers import default_block_size
  model = xsim.load_model(args.workdir, dtype=args.dtype).with_attention(args.attention, args.attention_block_size)
  loaded = memory_mib()
  compile_seconds = []

  def extract():
    with CompileTimer() as timer:
      acts = xsim.extract_activations(model, texts, RowSpec(pooling=args.pooling, layers="all", max_tokens=args.tokens),
                                      batch_size=len(texts), progress=False,
                                      store_dir=tempfile.mkdtemp(prefix="store", dir=args.workdir))
    compile_seconds.append(timer.seconds)
    return acts.array.shape

  result = _timed_calls(extract, args.repeats)
  result.update(shape=list(result.pop("result")), compile=compile_seconds,
                tokens=sum(len(tokenize(model.tokenizer, t).ids) for t in texts),
                block=(model.config.attention_block_size or default_block_size()) if args.attention == "blockwise"
                else None, attention=args.attention, loaded_rss_mib=loaded["rss_mib"])
  if devices.on_gpu(args.platform):
    result["device_peak_mib"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
  return result


def _timed_calls(call, repeats: int) -> dict:
  """{"first": s, "wall": [s], "cpu": [process CPU s], "result"} for one warm-up call and `repeats` more."""
  start = time.perf_counter()
  result = call()
  stats = {"first": time.perf_counter() - start, "wall": [], "cpu": []}
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    stats["wall"].append(time.perf_counter() - wall)
    stats["cpu"].append(time.process_time() - cpu)
  return dict(stats, result=result)


def child(args: argparse.Namespace) -> None:
  with open(os.path.join(args.workdir, "texts.json")) as f:
    texts = json.load(f)
  result = (run_hf if args.child == "hf" else run_xsim)(args, texts)
  result.update(memory_mib())
  print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, workdir: str, args: argparse.Namespace) -> dict:
  cmd = [sys.executable, "-m", "experiments.benchmarks.long_text", "--child", side, "--workdir", workdir,
         "--platform", args.platform, "--num_texts", str(args.num_texts), "--tokens", str(args.tokens),
         "--shape", args.shape, "--dtype", args.dtype, "--pooling", args.pooling, "--repeats", str(args.repeats),
         "--attention", args.attention]
  if args.attention_block_size:
    cmd += ["--attention_block_size", str(args.attention_block_size)]
  env = dict(os.environ, JAX_PLATFORMS=devices.jax_platform(args.platform))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"The {side} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def summarize(runs: dict[str, list[dict]]) -> dict:
  """Per side: medians over every timed call of every round, worst peak memory, and the xsim / HF ratios.

  xsim's "compute_seconds" leave out any tracing, lowering and compilation inside each timed call (none while its
  cached forward fits); HF's equal its wall seconds.
  """
  sides = {}
  for side, results in runs.items():
    wall = [w for r in results for w in r["wall"]]
    compiling = [c for r in results for c in r.get("compile", [0.0] * (len(r["wall"]) + 1))[1:]]
    sides[side] = dict(seconds=statistics.median(wall),
                       compute_seconds=statistics.median(w - c for w, c in zip(wall, compiling)),
                       cpu_seconds=statistics.median(c for r in results for c in r["cpu"]),
                       first_seconds=statistics.median(r["first"] for r in results),
                       peak_rss_mib=max(r["peak_rss_mib"] for r in results),
                       loaded_rss_mib=statistics.median(r["loaded_rss_mib"] for r in results),
                       tokens=results[0]["tokens"])
    if "device_peak_mib" in results[0]:
      sides[side]["device_peak_mib"] = max(r["device_peak_mib"] for r in results)
  sides["xsim"]["compile_seconds"] = statistics.median(r["compile"][0] for r in runs["xsim"])
  keys = ("peak_rss_mib", "compute_seconds", "seconds", "cpu_seconds", "device_peak_mib")
  ratios = {key: sides["xsim"][key] / sides["hf"][key] for key in keys if key in sides["hf"]}
  return dict(sides=sides, xsim_over_hf=ratios)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    return child(args)
  runs = {"hf": [], "xsim": []}
  with tempfile.TemporaryDirectory(prefix="xsim-bench-long-") as workdir:
    prepare(workdir, args)
    for _ in range(args.rounds):
      for side in runs:
        runs[side].append(spawn(side, workdir, args))
  summary = summarize(runs)
  hf, ours = summary["sides"]["hf"], summary["sides"]["xsim"]
  block = runs["xsim"][0]["block"]
  attention = f"{args.attention} (block {block})" if block else args.attention
  print(f"{args.num_texts} texts x <= {args.tokens} tokens ({hf['tokens']} real), {args.shape} Llama "
        f"({args.dtype}), pooling {args.pooling}, {args.platform}, xsim attention {attention}, "
        f"torch threads {runs['hf'][0]['threads']}, {args.rounds} round(s) x {args.repeats} timed calls")
  device = "device_peak_mib" in hf
  print(f"{'side':<18}{'compute s':>10}{'wall s':>9}{'CPU s':>9}{'1st call s':>12}{'peak RSS MiB':>14}"
        f"{'RSS loaded':>12}" + (f"{'device peak MiB':>17}" if device else ""))
  for name, side in (("hf sdpa forward", hf), ("xsim extract", ours)):
    print(f"{name:<18}{side['compute_seconds']:>10.2f}{side['seconds']:>9.2f}{side['cpu_seconds']:>9.2f}"
          f"{side['first_seconds']:>12.2f}"
          f"{side['peak_rss_mib']:>14.0f}{side['loaded_rss_mib']:>12.0f}"
          + (f"{side['device_peak_mib']:>17.0f}" if device else ""))
  print(f"xsim compile (trace + lower + XLA, in its 1st call): {ours['compile_seconds']:.2f} s")
  print("xsim / hf: " + ", ".join(f"{k} {v:.2f}x" for k, v in summary["xsim_over_hf"].items()))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(args={k: v for k, v in vars(args).items() if k not in ("child", "workdir")}, runs=runs,
                     **summary), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  with cli.user_errors():
    main()
