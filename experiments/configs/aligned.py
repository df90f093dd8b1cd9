"""The published study's pairs under the corrected protocol (STUDY.md, points 1-7).

The same strings for every tokenizer (texts cut by whole words), one row per text at the last whole word, BOS and
the first word excluded, bfloat16 for Gemma, every layer pair, raw / standardized / clipped CKA side by side,
neighbour alignment, the max over pairs of block outputs (embeddings left out) with its permutation null and a
subsampling CI, random-init baselines, three seeds, maps with standardized inputs and a penalty chosen on
held-out rows, and the token probe on labels from the text after the cut.
"""

from experiments.configs import seed_protocol


def get_config(arg=None):
  c = seed_protocol.get_config()
  c.models = [dict(m, dtype="bfloat16" if m["family"] == "gemma" else "float32") for m in seed_protocol.MODELS]
  c.data = dict(source="pile10k", num_texts=5000, max_words=64, min_chars=1, seed=0)
  c.extraction = dict(pooling="last_word", layers="all", batch_size=32, max_tokens=512, keep_bos=False,
                      site="residual", truncate_tokens=None)
  c.similarity = dict(measures=["cka", "cka_debiased", "mutual_knn"], preprocess=["none", "standardize", "clip"],
                      knn_k=10)
  c.statistics = dict(min_layer=1, permutations=500, ci_resamples=500, ci_level=0.95)
  c.baselines = dict(random_init=True)
  c.seeds = [0, 1, 2]  # splits, random-init copies, nulls and CIs vary with the seed
  c.transfer.standardize = True
  c.transfer.penalties = None  # the default grid, chosen on held-out rows
  return c
