"""Next-word samples of the run's texts and the activations at their prefixes, shared by the stages that read a
target's next token (the next-token stage's patching, the probes stage's token probe).

Texts are split after `next_token.max_words` words; the target's tokenization decides the samples (the prefix's last
token and the true next token, xsim.activations.patching). One sample set per target, sized for every stage that
reads it (`count`), so both stages read the same samples and the same prefix activation stores. Both read the
depth-matched layer pairs (`next_token.num_depths`) of `matched_layers`.
"""
from __future__ import annotations

import os

import numpy as np

from experiments import cache, keys
from experiments.extraction import last_token_activations
from xsim import layer_select


def count(ctx) -> int:
  """How many texts are split into samples: enough for next-token patching and for the token probe (0: neither)."""
  next_token, probes = ctx.settings("next_token"), ctx.settings("probes")
  return max(next_token.num_samples if next_token.enabled else 0,
             probes.token_samples if probes.token_classes else 0)


def identity(ctx) -> tuple:
  """What the samples depend on besides the texts and the target: the split point and the sample count."""
  return ctx.settings("next_token").max_words, count(ctx)


def samples(ctx, target: str):
  """The target's next-token samples of the run's texts (xsim.activations.patching.NextTokenSamples), cached."""
  from xsim.activations import patching
  spec = next(m for m in ctx.study.models if m.name == target)
  max_words, num_texts = identity(ctx)
  path = keys.path(ctx.workdir, os.path.join("cache", "next_token_samples"), target, (spec.path, spec.dtype),
                   keys.texts(ctx.texts), max_words, num_texts, suffix=".json")

  def compute():
    usable = [t for t in ctx.texts if len(t.split()) > max_words]
    s = patching.next_token_samples(ctx.models.get(target), usable[:num_texts], max_words)
    return {"prefixes": s.prefixes, "ids": [np.asarray(i).tolist() for i in s.ids], "positions": s.positions.tolist(),
            "next_tokens": s.next_tokens.tolist(), "text_index": s.text_index.tolist()}
  p = cache.cached(path, compute, producer=f"next-token samples of {target}")
  return patching.NextTokenSamples(p["prefixes"], [np.asarray(i) for i in p["ids"]], np.asarray(p["positions"]),
                                   np.asarray(p["next_tokens"]), np.asarray(p["text_index"]))


def matched_layers(ctx, data) -> tuple:
  """(the depth-matched pairs of layer positions [(i, j)], the source positions they use, the target positions)
  of a pair's data (experiments/extraction.PairData), num_depths of them."""
  matched = layer_select.depth_matched_pairs(data.layers_a, data.num_layers_a, data.layers_b, data.num_layers_b,
                                             ctx.settings("next_token").num_depths)
  return matched, sorted({i for i, _ in matched}), sorted({j for _, j in matched})


def prefix_activations(ctx, model: str, target: str, prefixes, layers, data_identity) -> np.ndarray:
  """[L, n, d] float32 activations of `model` at the last token of each prefix (one row per prefix, in order),
  stored by the prefixes, which depend on the target's tokenizer, max_words and the sample count."""
  return last_token_activations(ctx.workdir, ctx.study.extraction, lambda: ctx.models.get(model), prefixes, layers,
                                f"{model}-prefixes-for-{target}", *data_identity)
