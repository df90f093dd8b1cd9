"""Next-token transfer by patching: write a (mapped) vector into the target's residual stream at one layer and
position, run the target's remaining layers, and return its next-token logits; scoring them is the caller's.

Samples are texts split after a whole word (`xsim.data.next_word_split`): the sample position is the last token of
the prefix, the label is the first token of the continuation, so the label always comes from the text after the
sample position (never the current token, STUDY.md point 2).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from xsim.activations.rows import pad_id, padded_length, tokenize
from xsim.data.text import next_word_split
from xsim.models.model import Model
from xsim.models.transformer import Patch


@dataclasses.dataclass(frozen=True)
class NextTokenSamples:
  """Texts tokenized for one model. prefixes[k] is what the source side reads; ids[k] the full token ids;
  positions[k] the prefix's last token in ids[k]; next_tokens[k] the first token after the prefix;
  text_index[k] which input text it came from (texts whose boundary a token crosses are dropped)."""
  prefixes: list
  ids: list
  positions: np.ndarray
  next_tokens: np.ndarray
  text_index: np.ndarray

  def take(self, rows) -> "NextTokenSamples":
    """The samples at positions `rows` (an integer array), in that order."""
    rows = np.asarray(rows, np.int64)
    return NextTokenSamples([self.prefixes[r] for r in rows], [self.ids[r] for r in rows], self.positions[rows],
                            self.next_tokens[rows], self.text_index[rows])


def next_token_samples(model: Model, texts: Sequence[str], max_words: int) -> NextTokenSamples:
  """Splits each text after `max_words` words and finds the prefix's last token and the true next token."""
  prefixes, ids, positions, labels, index = [], [], [], [], []
  for i, text in enumerate(texts):
    prefix, continuation = next_word_split(text, max_words)
    full, alone = tokenize(model.tokenizer, prefix + continuation), tokenize(model.tokenizer, prefix)
    real = np.flatnonzero(~alone.special)
    if not len(real):
      continue
    p = int(real[-1])
    # The prefix must tokenize the same inside the full text, and the next token must start after it.
    if (len(full.ids) <= p + 1 or not np.array_equal(full.ids[:p + 1], alone.ids[:p + 1])
        or full.special[p + 1] or full.spans[p + 1, 1] <= len(prefix)):
      continue
    prefixes.append(prefix)
    ids.append(full.ids[:p + 2])  # causal: nothing after the label matters
    positions.append(p)
    labels.append(int(full.ids[p + 1]))
    index.append(i)
  if not ids:
    raise ValueError(f"No text of {len(texts)} has a clean token boundary after {max_words} words for "
                     f"{model.name}; use longer texts or another max_words.")
  return NextTokenSamples(prefixes, ids, np.asarray(positions), np.asarray(labels), np.asarray(index))


def _batches(samples: NextTokenSamples, batch_size: int, pad: int):
  """Right-padded ids/mask [B, S] (S a power of two), positions [B], labels [B] and the valid rows."""
  for start in range(0, len(samples.ids), batch_size):
    rows = list(range(start, min(start + batch_size, len(samples.ids))))
    seq = padded_length(max(len(samples.ids[r]) for r in rows))
    ids = np.full((batch_size, seq), pad, np.int32)
    mask = np.zeros((batch_size, seq), np.int32)
    positions = np.zeros(batch_size, np.int32)
    for b, r in enumerate(rows):
      ids[b, :len(samples.ids[r])] = samples.ids[r]
      mask[b, :len(samples.ids[r])] = 1
      positions[b] = samples.positions[r]
    yield rows, ids, mask, positions


def clean_logits(model: Model, samples: NextTokenSamples, batch_size: int = 16) -> np.ndarray:
  """The unpatched float32 logits [n, V] at every sample position."""
  out = []
  for rows, ids, mask, positions in _batches(samples, batch_size, pad_id(model.tokenizer)):
    out.append(np.asarray(_logits_at(model, ids, mask, positions, None))[:len(rows)])
  return np.concatenate(out)


def patched_logits(model: Model, samples: NextTokenSamples, layer: int, values, batch_size: int = 16) -> np.ndarray:
  """The float32 logits [n, V] at every sample position after writing values [n, D] into hidden state `layer`
  (0 = embeddings) at that position."""
  values = np.asarray(values, np.float32)
  if values.shape != (len(samples.ids), model.config.hidden_size):
    raise ValueError(f"values must be [{len(samples.ids)}, {model.config.hidden_size}], got {values.shape}.")
  if not 0 <= layer <= model.config.num_layers:
    raise ValueError(f"layer {layer} is out of range 0..{model.config.num_layers}.")
  out = []
  for rows, ids, mask, positions in _batches(samples, batch_size, pad_id(model.tokenizer)):
    batch_values = np.zeros((batch_size, values.shape[1]), np.float32)
    batch_values[:len(rows)] = values[rows]
    row_positions = np.where(np.arange(batch_size) < len(rows), positions, -1)
    patch = Patch(jnp.int32(layer), jnp.asarray(row_positions), jnp.asarray(batch_values))
    out.append(np.asarray(_logits_at(model, ids, mask, positions, patch))[:len(rows)])
  return np.concatenate(out)


def _logits_at(model: Model, ids, mask, positions, patch) -> jnp.ndarray:
  """Float32 logits [B, V] at each row's sample position."""
  return model.forward(ids, mask, patch=patch, logit_positions=positions).logits.astype(jnp.float32)


def own_activations(model: Model, samples: NextTokenSamples, layers: Sequence[int],
                    batch_size: int = 16) -> np.ndarray:
  """The model's own hidden states `layers` at each sample position, from one pass: [len(layers), n, D] (the
  identity-map reference)."""
  out = np.zeros((len(layers), len(samples.ids), model.config.hidden_size), np.float32)
  for rows, ids, mask, positions in _batches(samples, batch_size, pad_id(model.tokenizer)):
    hidden = model.forward(ids, mask, compute_logits=False).hidden_states
    at = (jnp.arange(len(ids)), jnp.asarray(positions))
    out[:, rows] = np.stack([np.asarray(hidden[layer][at], np.float32)[:len(rows)] for layer in layers])
  return out
