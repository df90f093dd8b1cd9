"""The next-token stage: patching mapped activations into the target.

For a pair (source a, target b), the target's next-word samples (experiments/next_words.py: the prefix's last token
and the true next token) are read by the source at the prefix's last token (every hidden state); each activation is
mapped with the maps stage's frozen map, fit on generic text, written into the target's hidden state at the same
character boundary at depth-matched layer pairs, and the target's next-token logits are scored against
mean-ablation (the target's mean activation there) and the shuffled-pair map. Models run here; the scores are
xsim.transfer's pure functions of arrays. Writes next_token.csv. (The published token probe on the same samples is
the probes stage's.)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from experiments import next_words
from experiments.stages import maps
from experiments.units import make_unit

NAME, SECTION, PHASE = "next_token", "next_token", 2


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `next_token` section: where texts are split (max_words) and how many depth-matched layer pairs
  (num_depths), for patching and the token probe alike; num_samples is an upper bound (the texts long enough for a
  next word may be fewer)."""
  enabled: bool = False
  max_words: int = 12
  num_samples: int = 128
  num_depths: int = 5

  def problems(self) -> list[str]:
    if self.max_words < 2 or self.num_depths < 2 or (self.enabled and self.num_samples < 8):
      return ["next_token needs max_words >= 2, num_depths >= 2 and (enabled) num_samples >= 8"]
    return []


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """One unit per real pair and seed, when enabled."""
  if not settings.enabled or pair.is_random:
    return []
  return [make_unit(ctx.workdir, NAME, pair, seed, (),
                    (maps.identity(ctx.settings(maps.NAME), ctx, pair, seed), settings, next_words.identity(ctx),
                     ctx.study.extraction.identity()))]


def compute(settings: Settings, ctx, unit) -> dict:
  """{"patching": rows of next_token.csv without the pair's columns}."""
  from xsim import transfer
  from xsim.activations import patching
  pair, seed = unit.pair, unit.seed
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  matched, ia, ib = next_words.matched_layers(ctx, data)
  samples = next_words.samples(ctx, pair.b)
  layers_a, layers_b = [data.layers_a[i] for i in ia], [data.layers_b[j] for j in ib]
  x_source = next_words.prefix_activations(ctx, pair.a, pair.b, samples.prefixes, layers_a, data.identity)
  target = ctx.models.get(pair.b)
  patch = samples.take(np.flatnonzero(samples.text_index < settings.num_samples))
  rows, clean = [], patching.clean_logits(target, patch)
  x_patch = x_source[:, :len(patch.ids)]  # the patching samples are the first ones
  own_b = patching.own_activations(target, patch, layers_b)
  for i, j in matched:
    x, own = x_patch[ia.index(i)], own_b[ib.index(j)]
    scores = {name: transfer.patching_scores(clean, patching.patched_logits(target, patch, data.layers_b[j], values),
                                             patch.next_tokens)
              for name, values in (("mapped", np.asarray(fit.predict(i, j, x))),
                                   ("shuffled", np.asarray(shuffled.predict(i, j, x))),
                                   ("mean_ablation", np.broadcast_to(own.mean(0), own.shape)))}
    rows.append(dict(layer_a=data.layers_a[i], layer_b=data.layers_b[j], num_samples=len(patch.ids),
                     clean_accuracy=float(scores["mapped"]["clean_accuracy"].mean()),
                     **{f"{metric}_{name}": float(scores[name][key].mean())
                        for name in scores for metric, key in (("kl", "kl"), ("top1", "top1_agreement"),
                                                               ("accuracy", "next_token_accuracy"))}))
  return {"patching": rows}


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  """next_token.csv rows."""
  (_, result), = entries
  out.add("next_token.csv", [dict(source=pair.a, target=pair.b, relation=pair.relation, **row, seed=seed)
                             for row in result["patching"]])
