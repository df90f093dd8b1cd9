"""The runner's next-token step: patching mapped activations into the target, and the published token probe.

For a pair (source a, target b), texts are split after `max_words` words; the source's activation at the
prefix's last token (every hidden state) is mapped with the frozen map fit on generic text, then
- patching: written into the target's hidden state at the same character boundary at depth-matched layer pairs,
  and scored against mean-ablation (the target's mean activation there) and the shuffled-pair map;
- token probe (STUDY.md's protocol, with labels from the text after the cut): a softmax probe over the target's
  `probe_classes` most frequent next tokens, trained on the target's own activations at the prefixes and
  scored top-1 / top-5 on mapped source activations, at every pair of the depth-matched layers (the published
  study probed its best-CKA pair only; softmax probes on every layer of both models cost minutes on a CPU).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from xsim import activations as xa
from xsim import transfer
from xsim.data.text import text_hash
from xsim.transfer import patching

TOP_K = (1, 5)


def depth_matched_pairs(layers_a: list[int], layers_b: list[int], num_depths: int) -> list[tuple[int, int]]:
  """Positions (i, j) in the two layer lists at `num_depths` equal relative depths, embeddings excluded."""
  depths = np.linspace(0.0, 1.0, num_depths)
  pick = lambda n, d: 1 + int(round(d * (n - 2))) if n > 1 else 0
  return sorted({(pick(len(layers_a), d), pick(len(layers_b), d)) for d in depths})


def _prefix_activations(cfg, model, prefixes, layers, store_dir) -> np.ndarray:
  """[L, n, d] float32 activations at the last token of each prefix (one row per prefix, in order)."""
  acts = xa.extract_activations(model, prefixes, pooling="last", layers=layers, batch_size=cfg.extraction.batch_size,
                                max_tokens=cfg.extraction.max_tokens, on_overflow="error", distribute=False,
                                store_dir=store_dir, progress=False)
  if len(acts.index) != len(prefixes):
    raise ValueError(f"{model.name} gave {len(acts.index)} rows for {len(prefixes)} prefixes; every prefix needs a "
                     "token.")
  return np.asarray(acts.array, np.float32)


class TokenProbes(NamedTuple):
  """The token probe's scores: {k: (ProbeTransfer of the map, of the shuffled-pair map)} between the hidden
  states layers_a of the source and layers_b of the target (positions in the ProbeTransfer grids)."""
  layers_a: list
  layers_b: list
  scores: dict


def next_token_transfer(cfg, seed: int, a: str, b: str, relation: str, source, target, texts, fit, shuffled,
                        layers_a, layers_b, workdir) -> tuple[list[dict], Optional[TokenProbes]]:
  """Next-token transfer from source model a to target model b (both loaded Models).

  fit, shuffled: maps between the layer lists layers_a and layers_b (hidden-state indices) of the generic text.
  Both steps use the layers at `num_depths` matched relative depths; the token probe scores every pair of them.
  Returns (rows of next_token.csv, TokenProbes or None when probe_classes is 0).
  """
  nt = cfg.transfer.next_token  # num_samples and probe_samples are upper bounds: the usable texts may be fewer
  matched = depth_matched_pairs(layers_a, layers_b, nt.num_depths)
  ia, ib = sorted({i for i, _ in matched}), sorted({j for _, j in matched})
  usable = [t for t in texts if len(t.split()) > nt.max_words]
  samples = patching.next_token_samples(target, usable[:max(nt.num_samples, nt.probe_samples)], nt.max_words)
  # Named by the prefixes, which depend on the target's tokenizer, max_words and the sample count.
  tag = os.path.join(workdir, "activations", f"{{}}-prefixes-for-{b}-{text_hash(samples.prefixes)[:12]}")
  x_source = _prefix_activations(cfg, source, samples.prefixes, [layers_a[i] for i in ia], tag.format(a))
  probes = None
  if nt.probe_classes:
    x_target = _prefix_activations(cfg, target, samples.prefixes, [layers_b[j] for j in ib], tag.format(b))
    labels = samples.next_tokens
    fit_probes = lambda x: transfer.fit_token_probes(x, labels, num_classes=nt.probe_classes, seed=seed)
    target_probe, source_probe = fit_probes(x_target), fit_probes(x_source)
    maps = (fit.select(ia, ib), shuffled.select(ia, ib))
    probes = TokenProbes([layers_a[i] for i in ia], [layers_b[j] for j in ib], {
        k: tuple(transfer.probe_transfer(m, target_probe, source_probe, x_source, labels, k=k, seed=seed,
                                         num_resamples=200) for m in maps) for k in TOP_K})
  patch = samples.take(np.flatnonzero(samples.text_index < nt.num_samples))
  rows, clean = [], patching.clean_logits(target, patch)
  x_patch = x_source[:, :len(patch.ids)]  # the patching samples are the first ones
  for i, j in matched:
    x = x_patch[ia.index(i)]
    own = patching.own_activations(target, patch, layers_b[j])
    scores = {name: patching.patching_scores(target, patch, layers_b[j], values, clean=clean) for name, values in (
        ("mapped", np.asarray(fit.predict(i, j, x))), ("shuffled", np.asarray(shuffled.predict(i, j, x))),
        ("mean_ablation", np.broadcast_to(own.mean(0), own.shape)))}
    rows.append(dict(source=a, target=b, relation=relation, layer_a=layers_a[i], layer_b=layers_b[j],
                     num_samples=len(patch.ids), clean_accuracy=float(scores["mapped"]["clean_accuracy"].mean()),
                     **{f"{metric}_{name}": float(scores[name][key].mean())
                        for name in scores for metric, key in (("kl", "kl"), ("top1", "top1_agreement"),
                                                               ("accuracy", "next_token_accuracy"))},
                     seed=seed))
  return rows, probes
