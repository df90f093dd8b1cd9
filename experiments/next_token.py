"""The runner's next-token step: patch mapped source activations into the target at depth-matched layer pairs.

For a pair (source a, target b), texts are split after `max_words` words; the source's activation at the
prefix's last token (every hidden state) is mapped with the frozen map fit on generic text and written into the
target's hidden state at the same character boundary. Each layer pair is scored against two baselines at the
same target layer: mean-ablation (the target's mean activation there) and the shuffled-pair map.
"""
from __future__ import annotations

import os

import numpy as np

from xsim import activations as xa
from xsim.transfer import patching


def depth_matched_pairs(layers_a: list[int], layers_b: list[int], num_depths: int) -> list[tuple[int, int]]:
  """Positions (i, j) in the two layer lists at `num_depths` equal relative depths, embeddings excluded."""
  depths = np.linspace(0.0, 1.0, num_depths)
  pick = lambda n, d: 1 + int(round(d * (n - 2))) if n > 1 else 0
  return sorted({(pick(len(layers_a), d), pick(len(layers_b), d)) for d in depths})


def next_token_rows(cfg, a: str, b: str, relation: str, source, target, texts, fit, shuffled, layers_a, layers_b,
                    workdir) -> list[dict]:
  """Rows of next_token.csv for source model a -> target model b (both loaded Models).

  fit, shuffled: maps between the layer lists layers_a and layers_b (hidden-state indices) of the generic text.
  """
  nt = cfg.transfer.next_token
  usable = [t for t in texts if len(t.split()) > nt.max_words][: nt.num_samples]
  samples = patching.next_token_samples(target, usable, nt.max_words)
  prefixes = samples.prefixes
  acts = xa.extract_activations(source, prefixes, pooling="last", layers=layers_a,
                                batch_size=cfg.extraction.batch_size,
                                max_tokens=cfg.extraction.max_tokens, on_overflow="error", distribute=False,
                                store_dir=os.path.join(workdir, "activations", f"{a}-prefixes-for-{b}"),
                                progress=False)
  if len(acts.index) != len(prefixes):
    raise ValueError(f"{a} gave {len(acts.index)} rows for {len(prefixes)} prefixes; every prefix needs a token.")
  rows, clean = [], patching.clean_logits(target, samples)
  for i, j in depth_matched_pairs(layers_a, layers_b, nt.num_depths):
    x = np.asarray(acts.array[i], np.float32)
    own = patching.own_activations(target, samples, layers_b[j])
    scores = {name: patching.patching_scores(target, samples, layers_b[j], values, clean=clean) for name, values in (
        ("mapped", np.asarray(fit.predict(i, j, x))), ("shuffled", np.asarray(shuffled.predict(i, j, x))),
        ("mean_ablation", np.broadcast_to(own.mean(0), own.shape)))}
    rows.append(dict(source=a, target=b, relation=relation, layer_a=layers_a[i], layer_b=layers_b[j],
                     num_samples=len(samples.ids), clean_accuracy=float(scores["mapped"]["clean_accuracy"].mean()),
                     **{f"{metric}_{name}": float(scores[name][key].mean())
                        for name in scores for metric, key in (("kl", "kl"), ("top1", "top1_agreement"),
                                                               ("accuracy", "next_token_accuracy"))},
                     seed=cfg.seed))
  return rows
