"""Last-token activations of every layer: xsim `extract_activations` vs the published study's transformers loop.

    python -m experiments.benchmarks.extract                                  # 256 texts, 64 words, batch 16
    python -m experiments.benchmarks.extract --num_texts 64 --max_words 32    # quicker
    python -m experiments.benchmarks.extract --platform gpu --shape llama-3.2-1b --num_texts 2048 --batch 32

Model: --shape (default SmolLM2-135M's) with random weights, saved with save_pretrained to a temporary directory
together with a tokenizer, so both sides read one checkpoint. --tokenizer smollm2 (cpu default): the real SmolLM2
tokenizer from the packaged GGUF, texts = SOTU passages cut to --max_words words; --tokenizer trained (gpu
default, where neither the GGUF files nor the gguf package are): a byte-level BPE trained on the SOTU corpus,
texts = SOTU passages cut at a word end to at most --tokens tokens. Each side runs in its own subprocess, so its
peak RSS (ru_maxrss) is its own:
  hf:   AutoModelForCausalLM in --dtype on the --platform's device, padded batches in corpus order,
        output_hidden_states=True, the last non-pad token of every hidden state copied to NumPy per batch, under
        torch.inference_mode (the study's pattern). One untimed warm-up batch, then one timed pass.
  xsim: extract_activations(RowSpec(pooling="last", layers="all")) including its store writes, run twice into
        fresh store directories: the first call includes XLA compilation, the second is the steady-state figure.
Throughput counts real (non-pad) tokens only; model loading is outside the timings.
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
from experiments.benchmarks import devices
from experiments.benchmarks.forward import SHAPES, write_random_checkpoint

PLATFORM_DEFAULTS = {"cpu": dict(dtype="float32", tokenizer="smollm2"),
                     "gpu": dict(dtype="bfloat16", tokenizer="trained")}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--num_texts", type=int, default=256)
  p.add_argument("--max_words", type=int, default=64, help="words per text (--tokenizer smollm2)")
  p.add_argument("--tokens", type=int, default=128, help="tokens per text, at most (--tokenizer trained)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
  p.add_argument("--platform", choices=sorted(PLATFORM_DEFAULTS), default="cpu")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cpu float32, gpu bfloat16")
  p.add_argument("--tokenizer", choices=("smollm2", "trained"), default=None, help="cpu smollm2, gpu trained")
  p.add_argument("--attention", choices=("blockwise", "fused"), default="blockwise",
                 help="xsim's attention (ModelConfig.attention; fused: cuDNN's flash kernels on GPUs)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  # Internal: run one side in this process and print its result as JSON (the parent sets these).
  p.add_argument("--child", choices=("hf", "xsim"), default=None, help=argparse.SUPPRESS)
  p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name, value in PLATFORM_DEFAULTS[args.platform].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if min(args.num_texts, args.max_words, args.tokens, args.batch) < 1:
    p.error("--num_texts, --max_words, --tokens and --batch must be positive.")
  return args


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prepare(workdir: str, args: argparse.Namespace) -> None:
  """Writes the random checkpoint, the tokenizer and texts.json into `workdir`."""
  from xsim import data
  write_random_checkpoint(workdir, args.seed, args.shape, args.dtype, devices.torch_device(args.platform))
  if args.tokenizer == "smollm2":
    from xsim.models import assets, gguf
    gguf.load_gguf_tokenizer(assets.fetch_model("smollm2-135m")).save_pretrained(workdir)
    texts = [data.cut_text(t, max_words=args.max_words)
             for t in data.load_corpus("sotu", num_passages=args.num_texts)]
  else:
    from experiments.benchmarks.long_text import texts_of_tokens, train_tokenizer
    passages = data.load_corpus("sotu", seed=args.seed)
    tok, _ = train_tokenizer(passages, workdir)
    texts = texts_of_tokens(tok, passages, args.num_texts, args.tokens)
  with open(os.path.join(workdir, "texts.json"), "w") as f:
    json.dump(texts, f)


def run_hf(args: argparse.Namespace, texts: list[str]) -> dict:
  """The study's loop; returns seconds, real tokens and the [layers, texts, hidden] shape it gathered."""
  import numpy as np
  import torch
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.workdir)
  model = transformers.AutoModelForCausalLM.from_pretrained(args.workdir, dtype=getattr(torch, args.dtype))
  model = model.to(devices.torch_device(args.platform)).eval()

  def extract(chunk: list[str]) -> tuple[np.ndarray, int]:
    enc = tokenizer(chunk, padding=True, return_tensors="pt").to(devices.torch_device(args.platform))
    out = model(**enc, output_hidden_states=True)
    mask = enc["attention_mask"]
    # Last non-pad position gathered explicitly, so it holds whichever side the tokenizer pads.
    last = mask.shape[1] - 1 - torch.flip(mask, [1]).argmax(1)
    rows = torch.arange(len(chunk), device=mask.device)
    return np.stack([h[rows, last].float().cpu().numpy() for h in out.hidden_states]), int(mask.sum())

  batch = args.batch
  with torch.inference_mode():
    extract(texts[:batch])  # warm-up: PyTorch's first call allocates and picks kernels
    start = time.perf_counter()
    pieces, tokens = [], 0
    for s in range(0, len(texts), batch):
      acts, n = extract(texts[s:s + batch])
      pieces.append(acts)
      tokens += n
    seconds = time.perf_counter() - start
  return dict(seconds=seconds, tokens=tokens, shape=list(np.concatenate(pieces, axis=1).shape),
              threads=torch.get_num_threads())


def run_xsim(args: argparse.Namespace, texts: list[str]) -> dict:
  """Two full extract_activations calls into fresh stores: (first incl. compile, second steady state)."""
  import xsim
  from xsim import activations as xa
  from xsim.activations.rows import tokenize
  model = xsim.load_model(args.workdir, dtype=args.dtype).with_attention(args.attention)
  tokens = sum(len(tokenize(model.tokenizer, t).ids) for t in texts)
  seconds = []
  for run in range(2):
    start = time.perf_counter()
    acts = xa.extract_activations(model, texts, xa.RowSpec(pooling="last", layers="all"), batch_size=args.batch,
                                  store_dir=os.path.join(args.workdir, f"store{run}"), progress=False)
    seconds.append(time.perf_counter() - start)
  return dict(first_seconds=seconds[0], seconds=seconds[1], tokens=tokens, shape=list(acts.array.shape))


def child(args: argparse.Namespace) -> None:
  with open(os.path.join(args.workdir, "texts.json")) as f:
    texts = json.load(f)
  result = (run_hf if args.child == "hf" else run_xsim)(args, texts)
  result["peak_rss_mib"] = peak_rss_mib()
  print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, workdir: str, args: argparse.Namespace) -> dict:
  cmd = [sys.executable, "-m", "experiments.benchmarks.extract", "--child", side, "--workdir", workdir,
         "--batch", str(args.batch), "--platform", args.platform, "--dtype", args.dtype, "--attention", args.attention]
  env = dict(os.environ, JAX_PLATFORMS=devices.jax_platform(args.platform))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"The {side} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    return child(args)
  with tempfile.TemporaryDirectory(prefix="xsim-bench-extract-") as workdir:
    prepare(workdir, args)
    hf = spawn("hf", workdir, args)
    ours = spawn("xsim", workdir, args)
  if hf["tokens"] != ours["tokens"]:
    print(f"note: token counts differ (hf {hf['tokens']}, xsim {ours['tokens']}); each rate uses its own count.")
  hf_rate, xsim_rate = hf["tokens"] / hf["seconds"], ours["tokens"] / ours["seconds"]
  size = f"<= {args.max_words} words" if args.tokenizer == "smollm2" else f"<= {args.tokens} tokens"
  print(f"{args.num_texts} texts {size} ({args.tokenizer} tokenizer), batch {args.batch}, {hf['tokens']} real "
        f"tokens; {args.shape} shape, random {args.dtype} weights, {args.platform}; torch threads {hf['threads']}")
  print(f"{'side':<34}{'seconds':>10}{'tokens/s':>11}{'peak RSS MiB':>14}  output shape")
  print(f"{'hf loop (study pattern)':<34}{hf['seconds']:>10.2f}{hf_rate:>11.0f}{hf['peak_rss_mib']:>14.0f}  "
        f"{hf['shape']}")
  print(f"{'xsim extract (2nd call)':<34}{ours['seconds']:>10.2f}{xsim_rate:>11.0f}{ours['peak_rss_mib']:>14.0f}  "
        f"{ours['shape']}")
  print(f"{'xsim extract (1st call, +compile)':<34}{ours['first_seconds']:>10.2f}"
        f"{ours['tokens'] / ours['first_seconds']:>11.0f}")
  print(f"xsim compile (1st - 2nd call): {ours['first_seconds'] - ours['seconds']:.2f} s")
  print(f"ratio xsim/hf tokens/s: {xsim_rate / hf_rate:.2f}x (2nd call), "
        f"{ours['tokens'] / ours['first_seconds'] / hf_rate:.2f}x (1st call)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(args={k: v for k, v in vars(args).items() if k not in ("child", "workdir")}, hf=hf, xsim=ours,
                     hf_tokens_per_s=hf_rate, xsim_tokens_per_s=xsim_rate, xsim_over_hf=xsim_rate / hf_rate), f,
                indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
