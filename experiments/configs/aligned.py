"""The published study's pairs under the corrected protocol (STUDY.md, points 1-7).

The same strings for every tokenizer (texts cut by whole words), one row per text at the last whole word, BOS and
the first word excluded, bfloat16 for Gemma, every layer pair, raw / standardized / clipped CKA side by side,
neighbour alignment, permutation null of the max over layer pairs, bootstrap CIs, random-init baselines, maps
with standardized inputs and a penalty chosen on held-out rows.
"""

from experiments.configs import seed_protocol


def get_config(arg=None):
  c = seed_protocol.get_config()
  c.models = [dict(m, dtype="bfloat16" if m["family"] == "gemma" else "float32") for m in seed_protocol.MODELS]
  c.data = dict(source="pile10k", num_texts=5000, max_words=64, min_chars=1, seed=0)
  c.extraction = dict(pooling="last_word", layers="all", batch_size=32, max_tokens=512, keep_bos=False,
                      site="residual", truncate_tokens=None)
  c.similarity = dict(measures=["cka", "cka_debiased", "mutual_knn"], preprocess=["none", "standardize", "clip"],
                      knn_k=10, permutations=500, bootstrap=1000)
  c.baselines = dict(random_init=True)
  c.transfer.standardize = True
  c.transfer.penalties = None  # the default grid, chosen on held-out rows
  return c
