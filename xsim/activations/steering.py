"""Steering (activation addition): add a vector to a model's residual stream at one layer and read what follows,
for every (intervention, prompt) combination; scoring is the caller's.

An intervention is a hidden-state index (0 = embeddings, i = after block i) and a vector [D] with its scale folded
in. Every combination is one row of a right-padded batch (the last one a power of two, filled with zero-vector
rows), so a sweep over vectors x scales x layers is a few compiled calls of one function, and only the per-row
result leaves the device: never the [V] logits (Gemma's vocabulary is 262k). The blocks below an intervention's
layer are the same for every vector: they run once per prompt, and each row runs only the blocks from its layer up
to what it reads (a Span).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xsim.activations.rows import pad_id, padded_length, tokenize
from xsim.models.model import Model
from xsim.models.transformer import Span, Steer

POSITIONS = ("all", "last")  # every token of the prompt (BOS included, as a hook on the layer adds), or its last


def token_log_mass(model: Model, prompts: Sequence[str], layers, vectors, token_ids, *, positions: str = "all",
                   batch_size: int = 16) -> np.ndarray:
  """log P(next token in `token_ids`) at each prompt's last token under each intervention: [I, n] float32.

  layers: [I] int hidden-state indices; vectors: [I, D]; token_ids: [K] int, the set whose probability mass counts.
  """
  token_ids = np.unique(np.asarray(token_ids, np.int64))  # a set: a repeated id counts once
  vocab = model.config.vocab_size
  if not len(token_ids) or token_ids.min() < 0 or token_ids.max() >= vocab:
    raise ValueError(f"token_ids must be a non-empty set of ids in 0..{vocab - 1}, got {token_ids.tolist()}.")
  return _run(model, prompts, layers, vectors, positions, batch_size, _log_mass_fn(model.module),
              jnp.asarray(token_ids, jnp.int32), min_tokens=1)


def hidden_at_last(model: Model, prompts: Sequence[str], layers, vectors, read_layers: Sequence[int], *,
                   positions: str = "all", batch_size: int = 16) -> np.ndarray:
  """Hidden states `read_layers` at each prompt's last token under each intervention: [I, len(read_layers), n, D]
  float32 (e.g. to read a probe a few blocks after the steered layer)."""
  read_layers = np.asarray(read_layers, np.int64).reshape(-1)
  if not len(read_layers) or read_layers.min() < 0 or read_layers.max() > model.config.num_layers:
    raise ValueError(f"read_layers must be hidden-state indices in 0..{model.config.num_layers}, got "
                     f"{read_layers.tolist()}.")
  if read_layers.min() < np.max(layers):
    raise ValueError(f"read_layers {read_layers.tolist()} must be at or after every intervention's layer (up to "
                     f"{np.max(layers)}): below one, the stream is the unsteered one.")
  out = _run(model, prompts, layers, vectors, positions, batch_size, _hidden_fn(model.module),
             jnp.asarray(read_layers, jnp.int32), min_tokens=1, stop=int(read_layers.max()))  # [I, n, R, D]
  return out.transpose(0, 2, 1, 3)


def mean_nll(model: Model, passages: Sequence[str], layers, vectors, *, batch_size: int = 16) -> np.ndarray:
  """Each passage's mean negative log-likelihood of its tokens after the first (a BOS predicts the first word), with
  the vector added at every position: [I, n] float32 (its exp is the perplexity: steering's side effects)."""
  return _run(model, passages, layers, vectors, "all", batch_size, _nll_fn(model.module), None, min_tokens=2)


def _run(model: Model, prompts: Sequence[str], layers, vectors, positions: str, batch_size: int, fn, extra,
         min_tokens: int, stop: Optional[int] = None) -> np.ndarray:
  """fn's per-row result for every (intervention, prompt) pair -> [I, n, ...] float32, running blocks after each
  intervention's layer up to hidden state `stop` (None: the last) from the prompts' unsteered stream there."""
  layers, vectors = _interventions(model, layers, vectors)
  if positions not in POSITIONS:
    raise ValueError(f"positions={positions!r} is not one of {POSITIONS}.")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive.")
  if isinstance(prompts, str) or not len(prompts):
    raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
  ids = [tokenize(model.tokenizer, p).ids for p in prompts]
  short = [k for k, row in enumerate(ids) if len(row) < min_tokens]
  if short:
    raise ValueError(f"prompt {short[0]} ({prompts[short[0]]!r}) has {len(ids[short[0]])} token(s); each needs at "
                     f"least {min_tokens}.")
  tokens, mask, added = _padded(ids, positions, pad_id(model.tokenizer))
  stop = model.config.num_layers if stop is None else stop
  out = [None] * len(layers)
  for layer in np.unique(layers):
    which = np.flatnonzero(layers == layer)
    stream = _stream_at(model, tokens, mask, int(layer), batch_size)
    results = [fn(model.params, tokens[p], mask[p], Steer(jnp.full(len(p), layer), jnp.asarray(v), added[p]),
                  Span(jnp.int32(layer), stream[p], jnp.int32(stop)), extra)
               for p, v in _batches(len(ids), vectors[which], batch_size)]
    # Rows are prompt-major (row = prompt * I + intervention); the last batch's filler rows are dropped.
    flat = np.concatenate([np.asarray(r, np.float32) for r in results])[:len(ids) * len(which)]
    for k, row in zip(which, flat.reshape(len(ids), len(which), *flat.shape[1:]).swapaxes(0, 1)):
      out[k] = row
  return np.stack(out)


def _interventions(model: Model, layers, vectors) -> tuple[np.ndarray, np.ndarray]:
  """Checked layers [I] int32 and vectors [I, D] float32."""
  layers, vectors = np.asarray(layers), np.asarray(vectors, np.float32)
  c = model.config
  if layers.ndim != 1 or not len(layers) or not np.issubdtype(layers.dtype, np.integer):
    raise ValueError(f"layers must be a non-empty [I] integer array, got {layers.dtype} shape {layers.shape}.")
  outside = layers[(layers < 0) | (layers > c.num_layers)]
  if len(outside):
    raise ValueError(f"layer {outside[0]} is out of range 0..{c.num_layers} (0 = embeddings, i = after block i).")
  if vectors.shape != (len(layers), c.hidden_size):
    raise ValueError(f"vectors must be [{len(layers)}, {c.hidden_size}] (one per layer, the model's hidden size), "
                     f"got {vectors.shape}.")
  return layers.astype(np.int32), vectors


def _padded(ids: list, positions: str, pad: int) -> tuple:
  """Right-padded ids and attention mask [n, S] (S a power of two >= 16) and where the vector is added [n, S]
  float32, on the device."""
  lengths = np.asarray([len(row) for row in ids])
  tokens = np.full((len(ids), padded_length(lengths.max())), pad, np.int32)
  for k, row in enumerate(ids):
    tokens[k, :len(row)] = row
  mask = np.arange(tokens.shape[1]) < lengths[:, None]
  added = mask if positions == "all" else np.arange(tokens.shape[1]) == lengths[:, None] - 1
  return jnp.asarray(tokens), jnp.asarray(mask, jnp.int32), jnp.asarray(added, jnp.float32)


def _stream_at(model: Model, tokens, mask, layer: int, batch_size: int):
  """The unsteered residual stream at hidden state `layer` of every prompt: [n, S, D], on the device (the blocks
  below an intervention are the same for every vector, so they run once per prompt)."""
  fn = _stream_fn(model.module)
  return jnp.concatenate([fn(model.params, tokens[s:s + batch_size], mask[s:s + batch_size], jnp.int32(layer))
                          for s in range(0, len(tokens), batch_size)])


def _batches(num_prompts: int, vectors: np.ndarray, batch_size: int):
  """(prompt index [B], vectors [B, D]) of every batch of (prompt, vector) rows, prompt-major; the last batch is
  the power of two (at most batch_size) that holds the rows left, filled with zero-vector rows (few shapes to
  compile, little computed for nothing)."""
  num_rows = num_prompts * len(vectors)
  for start in range(0, num_rows, batch_size):
    size = min(batch_size, 1 << (num_rows - start - 1).bit_length())
    rows = np.arange(start, start + size)
    real = rows < num_rows
    rows = np.minimum(rows, num_rows - 1)
    yield rows // len(vectors), vectors[rows % len(vectors)] * real[:, None]


# One jitted function per Decoder (it compares and hashes by config, dtype and precision) and per result; each
# compiles once per batch shape.
@functools.lru_cache(maxsize=8)
def _stream_fn(module):
  """jit(params, ids, mask, layer) -> the residual stream at hidden state `layer` [B, S, D] (blocks above skipped)."""

  def fn(params, ids, mask, layer):
    return module.apply(params, ids, mask, span=Span(0, None, layer), compute_logits=False).hidden_states[layer]

  return jax.jit(fn)


def _last(mask):
  """Each right-padded row's last real position [B]."""
  return jnp.sum(mask, axis=-1) - 1


@functools.lru_cache(maxsize=8)
def _log_mass_fn(module):
  """jit(params, ids, mask, steer, span, token_ids [K]) -> log mass [B] float32 at the last real position."""

  def fn(params, ids, mask, steer, span, token_ids):
    logits = module.apply(params, ids, mask, steer=steer, span=span,
                          logit_positions=_last(mask)).logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits[:, token_ids], axis=-1) - jax.nn.logsumexp(logits, axis=-1)

  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def _hidden_fn(module):
  """jit(params, ids, mask, steer, span, read_layers [R]) -> hidden states [B, R, D] float32 at the last real
  position."""

  def fn(params, ids, mask, steer, span, read_layers):
    hidden = module.apply(params, ids, mask, steer=steer, span=span, compute_logits=False).hidden_states
    return hidden[read_layers][:, jnp.arange(len(ids)), _last(mask)].swapaxes(0, 1).astype(jnp.float32)

  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def _nll_fn(module):
  """jit(params, ids, mask, steer, span, None) -> mean next-token NLL [B] float32 over each row's real tokens."""

  def fn(params, ids, mask, steer, span, _):
    logits = module.apply(params, ids, mask, steer=steer, span=span).logits[:, :-1].astype(jnp.float32)
    target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    scored = mask[:, 1:]  # right padding: a real target means its predicting position is real too
    return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target) * scored, axis=-1) / jnp.sum(scored, axis=-1)

  return jax.jit(fn)
