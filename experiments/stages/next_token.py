"""The next-token stage: patching mapped activations into the target, and the published token probe.

For a pair (source a, target b), texts are split after `max_words` words (the target's tokenization decides the
samples: the prefix's last token and the true next token, xsim.activations.patching); the source's activation at
the prefix's last token (every hidden state) is mapped with the maps stage's frozen map, fit on generic text, then
- patching: written into the target's hidden state at the same character boundary at depth-matched layer pairs,
  and scored against mean-ablation (the target's mean activation there) and the shuffled-pair map;
- token probe (STUDY.md's protocol, with labels from the text after the cut): a softmax probe over the target's
  `probe_classes` most frequent next tokens, trained on the target's own activations at the prefixes and
  scored top-1 / top-5 on mapped source activations, at every pair of the depth-matched layers, as the probes
  stage scores its tasks (the published study probed its best-CKA pair only).
Models run here; everything after the activations is xsim.transfer's pure functions of arrays. Writes
next_token.csv and the token probe's rows of probes.csv (tasks next_token_top1 / next_token_top5).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import cache, keys
from experiments.extraction import open_or_extract, store_dir
from experiments.stages import maps, probes
from experiments.units import make_unit
from xsim import layer_select

NAME, SECTION, PHASE = "next_token", "next_token", 2
TOP_K = (1, 5)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `next_token` section. num_samples (patching) and probe_samples (token probe) are upper bounds:
  the texts long enough for a next word may be fewer; probe_classes 0: no token probe."""
  enabled: bool = False
  max_words: int = 12
  num_samples: int = 128
  num_depths: int = 5
  probe_classes: int = 0
  probe_samples: int = 0

  def problems(self) -> list[str]:
    if not self.enabled:
      return []
    out = []
    if self.max_words < 2 or self.num_samples < 8 or self.num_depths < 2:
      out.append("next_token needs max_words >= 2, num_samples >= 8 and num_depths >= 2")
    return out

  @property
  def num_texts(self) -> int:
    """How many texts are split into samples."""
    return max(self.num_samples, self.probe_samples)


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """One unit per real pair and seed, when enabled."""
  if not settings.enabled or pair.is_random:
    return []
  stats = ctx.stats
  return [make_unit(ctx.workdir, NAME, pair, seed, (),
                    (maps.identity(ctx.settings(maps.NAME), ctx, pair, seed), settings, ctx.study.extraction.identity(),
                     stats.min_layer, stats.ci_resamples, probes.PROBES_VERSION))]


def _samples(settings: Settings, ctx, target: str):
  """The target's next-token samples of the run's texts (xsim.activations.patching.NextTokenSamples), cached."""
  from xsim.activations import patching
  spec = next(m for m in ctx.study.models if m.name == target)
  path = keys.path(ctx.workdir, os.path.join("cache", "next_token_samples"), target, (spec.path, spec.dtype),
                   keys.texts(ctx.texts), settings.max_words, settings.num_texts, suffix=".json")

  def compute():
    usable = [t for t in ctx.texts if len(t.split()) > settings.max_words]
    s = patching.next_token_samples(ctx.models.get(target), usable[:settings.num_texts], settings.max_words)
    return {"prefixes": s.prefixes, "ids": [np.asarray(i).tolist() for i in s.ids], "positions": s.positions.tolist(),
            "next_tokens": s.next_tokens.tolist(), "text_index": s.text_index.tolist()}
  p = cache.cached(path, compute, producer=f"next-token samples of {target}")
  return patching.NextTokenSamples(p["prefixes"], [np.asarray(i) for i in p["ids"]], np.asarray(p["positions"]),
                                   np.asarray(p["next_tokens"]), np.asarray(p["text_index"]))


def _prefix_activations(ctx, model: str, target: str, prefixes, layers, data_identity) -> np.ndarray:
  """[L, n, d] float32 activations of `model` at the last token of each prefix (one row per prefix, in order),
  stored by the prefixes, which depend on the target's tokenizer, max_words and the sample count."""
  extraction = ctx.study.extraction
  settings = dataclasses.replace(extraction, pooling="last", layers=list(layers), keep_bos=False,
                                 truncate_tokens=None, site="residual")
  path = store_dir(ctx.workdir, f"{model}-prefixes-for-{target}", keys.texts(prefixes), extraction.identity(),
                   *data_identity)
  acts = open_or_extract(path, lambda: ctx.models.get(model), prefixes, settings, None, distribute=False,
                         progress=False)
  if len(acts.index) != len(prefixes):
    raise ValueError(f"{acts.manifest['model']} gave {len(acts.index)} rows for {len(prefixes)} prefixes; every "
                     "prefix needs a token.")
  return np.asarray(acts.array, np.float32)


def compute(settings: Settings, ctx, unit) -> dict:
  """{"patching": rows of next_token.csv without the pair's columns, "layers_a", "layers_b": the token probe's
  hidden-state indices, "token_probes": {k: probes.scores} (absent when probe_classes is 0)}."""
  from xsim import transfer
  from xsim.activations import patching
  pair, seed = unit.pair, unit.seed
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  matched = layer_select.depth_matched_pairs(data.layers_a, data.num_layers_a, data.layers_b, data.num_layers_b,
                                             settings.num_depths)
  ia, ib = sorted({i for i, _ in matched}), sorted({j for _, j in matched})
  samples = _samples(settings, ctx, pair.b)
  layers_a, layers_b = [data.layers_a[i] for i in ia], [data.layers_b[j] for j in ib]
  x_source = _prefix_activations(ctx, pair.a, pair.b, samples.prefixes, layers_a, data.identity)
  out = {"layers_a": layers_a, "layers_b": layers_b}
  if settings.probe_classes:
    x_target = _prefix_activations(ctx, pair.b, pair.b, samples.prefixes, layers_b, data.identity)
    labels = samples.next_tokens
    fit_probes = lambda x: transfer.fit_token_probes(x, labels, num_classes=settings.probe_classes, seed=seed,
                                                     mesh=ctx.mesh)
    target_probe, source_probe = fit_probes(x_target), fit_probes(x_source)
    scored = (layer_select.scored_positions(layers_a, ctx.stats.min_layer, pair.a),
              layer_select.scored_positions(layers_b, ctx.stats.min_layer, pair.b))
    out["token_probes"] = {str(k): probes.scores((fit.select(ia, ib), shuffled.select(ia, ib)),
                                                 (target_probe, source_probe), x_source, labels, seed, scored,
                                                 ctx.stats, k=k, mesh=ctx.mesh)
                           for k in TOP_K}
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
  out["patching"] = rows
  return out


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  """next_token.csv rows, and the token probe's rows of probes.csv."""
  (_, result), = entries
  out.add("next_token.csv", [dict(source=pair.a, target=pair.b, relation=pair.relation, **row, seed=seed)
                             for row in result["patching"]])
  layout = ctx.layout(pair, seed)
  for k, scores in result.get("token_probes", {}).items():
    probes.add_rows(f"next_token_top{k}", pair, seed, scores, result["layers_a"], result["layers_b"], layout, ctx,
                    out)
