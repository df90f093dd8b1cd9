"""The next-token step: patching mapped activations into the target, and the published token probe.

For a pair (source a, target b), texts are split after `max_words` words (the target's tokenization decides the
samples: the prefix's last token and the true next token, xsim.activations.patching); the source's activation at
the prefix's last token (every hidden state) is mapped with the frozen map fit on generic text, then
- patching: written into the target's hidden state at the same character boundary at depth-matched layer pairs,
  and scored against mean-ablation (the target's mean activation there) and the shuffled-pair map;
- token probe (STUDY.md's protocol, with labels from the text after the cut): a softmax probe over the target's
  `probe_classes` most frequent next tokens, trained on the target's own activations at the prefixes and
  scored top-1 / top-5 on mapped source activations, at every pair of the depth-matched layers (the published
  study probed its best-CKA pair only; softmax probes on every layer of both models cost minutes on a CPU).
Models run here; everything after the activations is xsim.transfer's pure functions of arrays.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import cache, transfer_step
from experiments.extraction import ExtractionSettings, PairData, open_or_extract, store_dir
from xsim import layer_select

TOP_K = (1, 5)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `transfer.next_token` section. num_samples (patching) and probe_samples (token probe) are upper
  bounds: the texts long enough for a next word may be fewer."""
  enabled: bool = False
  max_words: int = 12
  num_samples: int = 128
  num_depths: int = 5
  probe_classes: int = 0
  probe_samples: int = 0

  @classmethod
  def from_config(cls, section) -> "Settings":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(section or {}).items() if k in fields})


def samples_path(workdir: str, target: str, texts, settings: Settings, source_key) -> str:
  return os.path.join(workdir, "cache", "next_token_samples",
                      f"{target}-{cache.key(source_key, cache.key(list(texts)), settings.max_words, _count(settings))}"
                      ".json")


def _count(settings: Settings) -> int:
  return max(settings.num_samples, settings.probe_samples)


def compute_samples(model, texts, settings: Settings) -> dict:
  """The target's next-token samples (see xsim.activations.patching.NextTokenSamples) as a cache payload."""
  from xsim.activations import patching
  usable = [t for t in texts if len(t.split()) > settings.max_words]
  s = patching.next_token_samples(model, usable[:_count(settings)], settings.max_words)
  return {"prefixes": s.prefixes, "ids": [np.asarray(i).tolist() for i in s.ids], "positions": s.positions.tolist(),
          "next_tokens": s.next_tokens.tolist(), "text_index": s.text_index.tolist()}


def _samples(payload: dict):
  from xsim.activations import patching
  return patching.NextTokenSamples(payload["prefixes"], [np.asarray(i) for i in payload["ids"]],
                                   np.asarray(payload["positions"]), np.asarray(payload["next_tokens"]),
                                   np.asarray(payload["text_index"]))


def _prefix_activations(path, get_model, prefixes, layers, extraction: ExtractionSettings) -> np.ndarray:
  """[L, n, d] float32 activations at the last token of each prefix (one row per prefix, in order)."""
  settings = dataclasses.replace(extraction, pooling="last", layers=list(layers), keep_bos=False,
                                 truncate_tokens=None, site="residual")
  acts = open_or_extract(path, get_model, prefixes, settings, None, max(layers), distribute=False, progress=False)
  if len(acts.index) != len(prefixes):
    raise ValueError(f"{acts.manifest['model']} gave {len(acts.index)} rows for {len(prefixes)} prefixes; every "
                     "prefix needs a token.")
  return np.asarray(acts.array, np.float32)


def compute(data: PairData, samples_payload: dict, maps_settings: transfer_step.Settings, settings: Settings,
            extraction: ExtractionSettings, seed: int, workdir: str, models, min_layer: int, num_resamples: int,
            mesh=None) -> dict:
  """{"patching": rows of next_token.csv without the pair's columns, "layers_a", "layers_b": the token probe's
  hidden-state indices, "token_probes": {k: transfer_step.probe_scores} (absent when probe_classes is 0), their
  maxima and subsamples over the layers >= min_layer}."""
  from xsim import transfer
  from xsim.activations import patching
  pair = data.pair
  fit, shuffled = transfer_step.fit_maps(data, maps_settings, seed, workdir, mesh)
  matched = layer_select.depth_matched_pairs(data.layers_a, data.num_layers_a, data.layers_b, data.num_layers_b,
                                             settings.num_depths)
  ia, ib = sorted({i for i, _ in matched}), sorted({j for _, j in matched})
  samples = _samples(samples_payload)
  # Named by the prefixes, which depend on the target's tokenizer, max_words and the sample count.
  where = lambda model: store_dir(workdir, f"{model}-prefixes-for-{pair.b}", cache.key(samples.prefixes),
                                  extraction.identity(), *data.identity)
  x_source = _prefix_activations(where(pair.a), lambda: models.get(pair.a), samples.prefixes,
                                 [data.layers_a[i] for i in ia], extraction)
  out = {"layers_a": [data.layers_a[i] for i in ia], "layers_b": [data.layers_b[j] for j in ib]}
  if settings.probe_classes:
    x_target = _prefix_activations(where(pair.b), lambda: models.get(pair.b), samples.prefixes,
                                   [data.layers_b[j] for j in ib], extraction)
    labels = samples.next_tokens
    fit_probes = lambda x: transfer.fit_token_probes(x, labels, num_classes=settings.probe_classes, seed=seed,
                                                     mesh=mesh)
    target_probe, source_probe = fit_probes(x_target), fit_probes(x_source)
    maps = (fit.select(ia, ib), shuffled.select(ia, ib))
    scored = tuple(layer_select.scored_positions(out[f"layers_{m}"], min_layer, name)
                   for m, name in (("a", pair.a), ("b", pair.b)))
    out["token_probes"] = {str(k): transfer_step.probe_scores(*maps, target_probe, source_probe, x_source, labels,
                                                              seed, scored, num_resamples, k=k, mesh=mesh)
                           for k in TOP_K}
  target = models.get(pair.b)
  patch = samples.take(np.flatnonzero(samples.text_index < settings.num_samples))
  rows, clean = [], patching.clean_logits(target, patch)
  x_patch = x_source[:, :len(patch.ids)]  # the patching samples are the first ones
  own_b = patching.own_activations(target, patch, out["layers_b"])
  for i, j in matched:
    x, own = x_patch[ia.index(i)], own_b[ib.index(j)]
    scores = {name: patching.patched_scores(target, patch, data.layers_b[j], values, clean=clean)
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
