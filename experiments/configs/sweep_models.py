"""Scaling sweep sized for 8 GPUs or a TPU pod slice: every pair of ten 0.4-3B models, all layer pairs.

`--config=experiments/configs/sweep_models.py:N` sets the number of texts (default 10,000). Run it with one process
per host (see README, Launching); the mesh takes every local device on the data axis.
"""

from experiments.configs import aligned

SWEEP_MODELS = [
    dict(name="llama-3.2-1b", path="meta-llama/Llama-3.2-1B", family="llama"),
    dict(name="llama-3.2-3b", path="meta-llama/Llama-3.2-3B", family="llama"),
    dict(name="qwen2.5-0.5b", path="Qwen/Qwen2.5-0.5B", family="qwen"),
    dict(name="qwen2.5-1.5b", path="Qwen/Qwen2.5-1.5B", family="qwen"),
    dict(name="qwen2.5-3b", path="Qwen/Qwen2.5-3B", family="qwen"),
    dict(name="gemma-2-2b", path="google/gemma-2-2b", family="gemma"),
    dict(name="gemma-3-1b", path="google/gemma-3-1b-pt", family="gemma"),
    dict(name="pythia-410m", path="EleutherAI/pythia-410m", family="pythia"),
    dict(name="pythia-1.4b", path="EleutherAI/pythia-1.4b", family="pythia"),
    dict(name="pythia-2.8b", path="EleutherAI/pythia-2.8b", family="pythia"),
]


def get_config(arg=None):
  c = aligned.get_config()
  c.models = [dict(m, dtype="bfloat16") for m in SWEEP_MODELS]
  c.pairs = None  # every pair
  c.data.num_texts = int(arg) if arg else 10000
  c.data.source = "pile10k"
  c.extraction.batch_size = 64
  return c
