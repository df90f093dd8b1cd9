"""Steering a batch of interventions: xsim's compiled runner vs a transformers forward-hook loop, same model.

    python -m experiments.benchmarks.steering                      # cpu: SmolLM2-135M if its GGUF is cached, 4 prompts
    python -m experiments.benchmarks.steering --model tiny --prompts 16
    python -m experiments.benchmarks.steering --platform gpu       # SmolLM2-135M's shape, random weights, 16 prompts

Workload: --vectors random directions x --norms (the vectors' norms) x --depths (hidden states max(1, round(d L)))
= I interventions, each added at every token of --prompts SOTU passages cut to --words words; the score of each
(intervention, prompt) is log P(next token is the first token of one of WORDS) at the prompt's last token.
  xsim: steering.token_log_mass(model, prompts, layers, vectors, token_ids, batch_size=--batch): every pair is one
        row of a right-padded batch, compiled once; the blocks below each layer run once per prompt, each row only
        the blocks above its layer; only the [B] scores leave the device.
  hf:   per intervention, a forward hook on decoder layer l - 1 adding the vector at the real tokens, one
        left-padded forward of all prompts with logits_to_keep=1 (xsim's positions as position_ids), the score in
        torch, the hook removed: the loop a transformers user writes.
Model (--model, float32 on both sides, one checkpoint read by both): smollm2-135m (the packaged GGUF), smollm2-shape
(SmolLM2-135M's shape, random weights, the gpu default: no GGUF file there), tiny (a tiny random Llama), auto (the
cpu default: smollm2-135m if its GGUF is in xsim's cache, else tiny); the last two with a byte-level BPE trained on
the SOTU corpus. The scores must agree within --tolerance, else the run fails: a ratio of different work means
nothing. Each side's first call (xsim's includes its compilation, timed apart) is reported apart; then --repeats
timed calls alternate between the sides, and the figures are medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from experiments import cli
from experiments.benchmarks import devices

WORDS = (" peace", " war", " people", " nation")
MODELS = ("auto", "smollm2-135m", "smollm2-shape", "tiny")
DEFAULTS = {"cpu": dict(model="auto", prompts=4, batch=16), "gpu": dict(model="smollm2-shape", prompts=16, batch=64)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--platform", choices=sorted(DEFAULTS), default="cpu")
  p.add_argument("--model", choices=MODELS, default=None, help="cpu auto, gpu smollm2-shape")
  p.add_argument("--prompts", type=int, default=None, help="prompts (cpu 4, gpu 16)")
  p.add_argument("--words", type=int, default=10, help="words per prompt")
  p.add_argument("--vectors", type=int, default=4, help="random directions")
  p.add_argument("--norms", type=float, nargs="+", default=[4.0, 8.0, 16.0], help="norms of each direction")
  p.add_argument("--depths", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="relative depths steered")
  p.add_argument("--batch", type=int, default=None, help="xsim's rows per call (cpu 16, gpu 64)")
  p.add_argument("--repeats", type=int, default=1, help="timed calls per side, after each side's first call")
  p.add_argument("--tolerance", type=float, default=1e-3, help="largest |score difference| between the sides")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  args = p.parse_args(argv)
  for name, value in DEFAULTS[args.platform].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if min(args.prompts, args.words, args.vectors, args.batch, args.repeats) < 1:
    p.error("--prompts, --words, --vectors, --batch and --repeats must be positive.")
  if not all(0 <= d <= 1 for d in args.depths) or min(args.norms) <= 0:
    p.error("--depths must lie in [0, 1] and --norms be positive.")
  if args.model == "auto":
    from xsim.models import assets
    cached = assets.default_cache_dir() / assets.MODELS["smollm2-135m"].filename
    args.model = "smollm2-135m" if cached.is_file() else "tiny"
  return args


def checkpoint(args: argparse.Namespace, workdir: str) -> tuple[str, str | None]:
  """(HF directory, GGUF file name or None) of --model; a random checkpoint and its tokenizer go to `workdir`."""
  import torch
  import transformers

  from experiments.benchmarks.forward import write_random_checkpoint
  from experiments.benchmarks.long_text import SHAPES, train_tokenizer
  from xsim import data
  if args.model == "smollm2-135m":
    from xsim.models import assets
    path = assets.fetch_model("smollm2-135m")
    return str(path.parent), path.name
  _, tokenizer = train_tokenizer(data.load_corpus("sotu", seed=args.seed), workdir)
  if args.model == "smollm2-shape":
    write_random_checkpoint(workdir, args.seed, "smollm2-135m", "float32", devices.torch_device(args.platform))
  else:
    torch.manual_seed(args.seed)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), **SHAPES["tiny"])
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(workdir)
  return workdir, None


def interventions(args: argparse.Namespace, num_layers: int, hidden: int):
  """layers [I] and vectors [I, D]: every direction at every norm at every depth (depth-major)."""
  import numpy as np
  directions = np.random.default_rng(args.seed).standard_normal((args.vectors, hidden))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  layers = [max(1, round(d * num_layers)) for d in args.depths]
  per_layer = np.concatenate([norm * directions for norm in args.norms]).astype(np.float32)
  return np.repeat(layers, len(per_layer)).astype(np.int32), np.tile(per_layer, (len(layers), 1))


def hook_loop(torch_model, enc: dict, layers, vectors, token_ids, device: str):
  """transformers' scores [I, n]: per intervention a forward hook on block l - 1 and one forward of every prompt."""
  import numpy as np
  import torch
  ids, mask = (torch.from_numpy(enc[k]).to(device) for k in ("input_ids", "attention_mask"))
  positions = torch.clamp(mask.cumsum(-1) - 1, min=0)  # as xsim counts them, so left padding changes nothing
  real = mask[..., None].float()
  token_ids = torch.from_numpy(token_ids).to(device)
  out = []
  with torch.inference_mode():
    for layer, vector in zip(layers, vectors):
      added = real * torch.from_numpy(vector).to(device)
      # Blocks return a tensor, or a tuple led by one in older transformers.
      add = lambda module, args, output: ((output[0] + added, *output[1:]) if isinstance(output, tuple)
                                          else output + added)
      handle = torch_model.base_model.layers[int(layer) - 1].register_forward_hook(add)
      try:
        logits = torch_model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1,
                             use_cache=False).logits[:, -1].float()
      finally:
        handle.remove()
      out.append(torch.logsumexp(logits[:, token_ids], -1) - torch.logsumexp(logits, -1))
    return np.stack([o.cpu().numpy() for o in out])


def main(argv=None) -> None:
  args = parse_args(argv)
  import jax
  jax.config.update("jax_platforms", devices.jax_platform(args.platform))
  import numpy as np
  import torch

  import xsim
  from experiments.benchmarks.forward import CompileTimer, load_torch, time_calls
  from xsim import data
  from xsim.activations import steering
  device = devices.torch_device(args.platform)
  with tempfile.TemporaryDirectory(prefix="xsim-bench-steering-") as workdir:
    directory, gguf_file = checkpoint(args, workdir)
    model = xsim.load_model(os.path.join(directory, gguf_file) if gguf_file else directory, dtype="float32")
    torch_model = load_torch(directory, gguf_file, "float32", device)
  prompts = [data.cut_text(t, max_words=args.words) for t in data.load_corpus("sotu", num_passages=args.prompts,
                                                                               seed=args.seed)]
  token_ids = np.unique([model.tokenizer.encode(w, add_special_tokens=False)[0] for w in WORDS])
  layers, vectors = interventions(args, model.config.num_layers, model.config.hidden_size)
  enc = model.tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
  tokens = int(enc["attention_mask"].sum())

  def run_hf():
    scores = hook_loop(torch_model, enc, layers, vectors, token_ids, device)
    if device == "cuda":
      torch.cuda.synchronize()
    return scores

  calls = {"xsim": lambda: steering.token_log_mass(model, prompts, layers, vectors, token_ids,
                                                   batch_size=args.batch), "hf": run_hf}
  with CompileTimer() as compile_timer:
    stats = time_calls(calls, args.repeats)
  diff = float(np.abs(stats["xsim"]["result"] - stats["hf"]["result"]).max())
  if not diff <= args.tolerance:
    raise RuntimeError(f"xsim's and transformers' scores differ by up to {diff:.2e} > --tolerance "
                       f"{args.tolerance:g}: the sides do not compute the same thing.")
  seconds = {side: statistics.median(s["wall"]) for side, s in stats.items()}
  rows = len(layers) * len(prompts)
  print(f"model {args.model} ({model.config.num_layers} layers, d={model.config.hidden_size}), float32, "
        f"{args.platform}; {len(layers)} interventions ({args.vectors} vectors x {len(args.norms)} norms x "
        f"{len(args.depths)} layers {sorted(set(layers.tolist()))}) x {len(prompts)} prompts ({tokens} tokens) = "
        f"{rows} rows; xsim batch {args.batch}, torch threads {torch.get_num_threads()}")
  print(f"{'side':<36}{'first s':>9}{'median s':>10}{'rows/s':>9}")
  for side, label in (("xsim", "xsim token_log_mass"), ("hf", "hf forward-hook loop")):
    print(f"{label:<36}{stats[side]['first']:>9.2f}{seconds[side]:>10.2f}{rows / seconds[side]:>9.1f}")
  print(f"xsim compile (trace + lower + XLA, in its first call): {compile_timer.seconds:.2f} s")
  print(f"max |score xsim - hf| = {diff:.2e}; hf / xsim time: {seconds['hf'] / seconds['xsim']:.2f}x")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(args=vars(args), device=jax.devices()[0].device_kind, interventions=len(layers),
                     prompts=len(prompts), rows=rows, tokens=tokens, max_abs_difference=diff,
                     compile_s=compile_timer.seconds,
                     sides={side: dict(first_s=s["first"], wall_s=s["wall"], cpu_s=s["cpu"], seconds=seconds[side])
                            for side, s in stats.items()},
                     hf_over_xsim=seconds["hf"] / seconds["xsim"]), f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
