"""Steering (activation addition): add a vector to a model's residual stream at one layer and read what follows,
for every (intervention, prompt) combination; scoring is the caller's.

An intervention is a hidden-state index (0 = embeddings, i = after block i) and a vector [D] with its scale folded
in. Every combination is one row of a right-padded batch (the last batch filled with zero-vector rows), so a
sweep over vectors x scales x layers is a few compiled calls of one function per length bucket, and only the
per-row result leaves the device: never the [V] logits (Gemma's vocabulary is 262k).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xsim.activations.rows import pad_id, padded_length, tokenize
from xsim.models.model import Model
from xsim.models.transformer import Steer

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
  out = _run(model, prompts, layers, vectors, positions, batch_size, _hidden_fn(model.module),
             jnp.asarray(read_layers, jnp.int32), min_tokens=1)  # [I, n, R, D]
  return out.transpose(0, 2, 1, 3)


def mean_nll(model: Model, passages: Sequence[str], layers, vectors, *, batch_size: int = 16) -> np.ndarray:
  """Each passage's mean negative log-likelihood of its tokens after the first (a BOS predicts the first word), with
  the vector added at every position: [I, n] float32 (its exp is the perplexity: steering's side effects)."""
  return _run(model, passages, layers, vectors, "all", batch_size, _nll_fn(model.module), None, min_tokens=2)


def _run(model: Model, prompts: Sequence[str], layers, vectors, positions: str, batch_size: int, fn, extra,
         min_tokens: int) -> np.ndarray:
  """fn's per-row result for every (intervention, prompt) pair -> [I, n, ...] float32."""
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
  out = [fn(model.params, *batch, extra)
         for batch in _batches(ids, layers, vectors, positions, batch_size, pad_id(model.tokenizer))]
  # Rows are prompt-major (row = prompt * I + intervention); the last batch's filler rows are dropped.
  flat = np.concatenate([np.asarray(o, np.float32) for o in out])[:len(ids) * len(layers)]
  return flat.reshape(len(ids), len(layers), *flat.shape[1:]).swapaxes(0, 1)


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


def _batches(ids: list, layers: np.ndarray, vectors: np.ndarray, positions: str, batch_size: int, pad: int):
  """Right-padded ids and attention mask [B, S] (S a power of two >= 16), last real position [B] and the Steer
  of every batch of rows; prompt-major, so a batch holds few prompts and pads little."""
  num_rows = len(ids) * len(layers)
  for start in range(0, num_rows, batch_size):
    rows = np.arange(start, start + batch_size)
    real = rows < num_rows
    prompt, which = np.minimum(rows, num_rows - 1) // len(layers), rows % len(layers)
    lengths = np.asarray([len(ids[p]) for p in prompt])
    seq = padded_length(lengths.max())
    batch = np.full((batch_size, seq), pad, np.int32)
    for b, p in enumerate(prompt):
      batch[b, :lengths[b]] = ids[p]
    mask = np.arange(seq) < lengths[:, None]
    added = mask if positions == "all" else np.arange(seq) == lengths[:, None] - 1
    steer = Steer(jnp.asarray(layers[which]), jnp.asarray(vectors[which] * real[:, None]),
                  jnp.asarray(added, jnp.float32))
    yield jnp.asarray(batch), jnp.asarray(mask, jnp.int32), jnp.asarray(lengths - 1, jnp.int32), steer


# One jitted function per Decoder (it compares and hashes by config, dtype and precision) and per result; each
# compiles once per batch shape.
@functools.lru_cache(maxsize=8)
def _log_mass_fn(module):
  """jit(params, ids, mask, last, steer, token_ids [K]) -> log mass [B] float32."""

  def fn(params, ids, mask, last, steer, token_ids):
    logits = module.apply(params, ids, mask, steer=steer, logit_positions=last).logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits[:, token_ids], axis=-1) - jax.nn.logsumexp(logits, axis=-1)

  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def _hidden_fn(module):
  """jit(params, ids, mask, last, steer, read_layers [R]) -> hidden states [B, R, D] float32 at `last`."""

  def fn(params, ids, mask, last, steer, read_layers):
    hidden = module.apply(params, ids, mask, steer=steer, compute_logits=False).hidden_states
    return hidden[read_layers][:, jnp.arange(len(ids)), last].swapaxes(0, 1).astype(jnp.float32)

  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def _nll_fn(module):
  """jit(params, ids, mask, last, steer, None) -> mean next-token NLL [B] float32 over each row's real tokens."""

  def fn(params, ids, mask, last, steer, _):
    logits = module.apply(params, ids, mask, steer=steer).logits[:, :-1].astype(jnp.float32)
    target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    scored = mask[:, 1:]  # right padding: a real target means its predicting position is real too
    return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target) * scored, axis=-1) / jnp.sum(scored, axis=-1)

  return jax.jit(fn)
