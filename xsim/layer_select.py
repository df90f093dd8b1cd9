"""Which layers a study reads and scores: layer specs, relative depths, the scored region and depth matching.

Every stage decides "which layers" here: extraction resolves a spec to hidden-state indices, similarity and
transfer summaries score the layer pairs at or above `min_layer`, next-token transfer matches relative depths,
and tables label every layer with its depth. Hidden-state index i of a model with L blocks: 0 = embeddings,
i = residual stream after block i, L = last block; its relative depth is i / L.

Layer specs: "all" (every hidden state, 0..L), "depths:K" (K relative depths 0..1 over the block outputs,
embeddings excluded, as the published study picks them: 1 + round(d (L - 1))), or a list of hidden-state indices.
"""
from __future__ import annotations

import re
from typing import Sequence, Union

import numpy as np

Spec = Union[str, Sequence[int]]


def parse(spec):
  """A layer spec as given on a command line ("[1, 4, 8]" or "1,4,8" -> [1, 4, 8]); anything else unchanged."""
  if isinstance(spec, str) and re.fullmatch(r"\[?\s*\d+(\s*,\s*\d+)*\s*,?\s*\]?", spec):
    return [int(i) for i in re.findall(r"\d+", spec)]
  return list(spec) if isinstance(spec, tuple) else spec


def spec_error(spec) -> str | None:
  """Why `spec` is not a layer spec (None if it is one); the model's depth is not needed for this check."""
  if isinstance(spec, str):
    if spec == "all":
      return None
    count = spec.partition(":")[2] if spec.startswith("depths:") else ""
    if count.isdigit() and int(count) >= 2:
      return None
    return f"layer spec {spec!r} must be 'all', 'depths:K' with K >= 2, or a list of hidden-state indices"
  try:
    values = list(spec)
  except TypeError:
    return f"layer spec {spec!r} must be 'all', 'depths:K' or a list of hidden-state indices"
  if not values or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0
                           for i in values):
    return f"layer list {values!r} must be a non-empty list of hidden-state indices >= 0"
  if len(set(values)) != len(values):
    return f"layer list {values!r} repeats an index"
  return None


def depth_error(spec, num_layers: int, model: str = "the model") -> str | None:
  """Why `spec` does not fit a model with `num_layers` blocks (None if it does)."""
  error = spec_error(spec)
  if error:
    return error
  if isinstance(spec, str) and spec.startswith("depths:"):
    count = int(spec.partition(":")[2])
    if count > num_layers:
      return (f"layer spec {spec!r} asks for {count} depths but {model} has only {num_layers} blocks; use "
              f"depths:{num_layers} or fewer")
    return None
  if not isinstance(spec, str):
    bad = [int(i) for i in spec if int(i) > num_layers]
    if bad:
      return f"layers {bad} are beyond {model}'s hidden states 0..{num_layers}"
  return None


def resolve(spec: Spec, num_layers: int) -> list[int]:
  """A layer spec -> the sorted hidden-state indices it names for a model with `num_layers` blocks."""
  error = depth_error(spec, num_layers)
  if error:
    raise ValueError(error + ".")
  if spec == "all":
    return list(range(num_layers + 1))
  if isinstance(spec, str):
    count = int(spec.partition(":")[2])
    return sorted({1 + int(round(d * (num_layers - 1))) for d in np.linspace(0.0, 1.0, count)})
  return sorted(int(i) for i in spec)


def relative_depth(layer: int, num_layers: int) -> float:
  """Hidden-state index / number of blocks: 0 = embeddings, 1 = last block."""
  return layer / num_layers


def scored_positions(layers: Sequence[int], min_layer: int, model: str = "the model") -> np.ndarray:
  """Positions in `layers` (hidden-state indices) that maxima, means and best pairs are taken over: >= min_layer."""
  where = np.flatnonzero(np.asarray(layers) >= min_layer)
  if not len(where):
    raise ValueError(f"{model} has no layer >= statistics.min_layer={min_layer} among {list(layers)}; lower it.")
  return where


def is_scored(layer_a: int, layer_b: int, min_layer: int) -> bool:
  """Whether a layer pair counts for maxima, means and best pairs (both hidden-state indices >= min_layer)."""
  return layer_a >= min_layer and layer_b >= min_layer


def scored_mask(layers_a: Sequence[int], layers_b: Sequence[int], min_layer: int) -> np.ndarray:
  """[La, Lb] bool: which layer pairs of a grid are scored (see is_scored)."""
  return (np.asarray(layers_a) >= min_layer)[:, None] & (np.asarray(layers_b) >= min_layer)[None, :]


def nearest_by_depth(depths_a: Sequence[float], depths_b: Sequence[float]) -> np.ndarray:
  """For each relative depth of a, the position in depths_b of the nearest one (the first on ties): [len(a)]."""
  return np.abs(np.asarray(depths_a)[:, None] - np.asarray(depths_b)[None, :]).argmin(axis=1)


def depth_matched_pairs(layers_a: Sequence[int], num_layers_a: int, layers_b: Sequence[int], num_layers_b: int,
                        num_depths: int) -> list[tuple[int, int]]:
  """Positions (i, j) in two layer lists at `num_depths` equal relative depths d = 0, ..., 1 over block outputs.

  For each d the target block is 1 + round(d (L - 1)) (the rule of "depths:K"); each list contributes its block
  output (index >= 1) whose relative depth is closest to that block's (the shallower on a tie). Lists resolved
  from "all" or from "depths:K" with K = num_depths therefore give exactly num_depths distinct pairs.
  """
  if num_depths < 2:
    raise ValueError(f"num_depths={num_depths} must be >= 2 (depth 0 and depth 1 at least).")
  return depth_pairs(layers_a, num_layers_a, layers_b, num_layers_b, np.linspace(0.0, 1.0, num_depths))


def depth_pairs(layers_a: Sequence[int], num_layers_a: int, layers_b: Sequence[int], num_layers_b: int,
                depths: Sequence[float]) -> list[tuple[int, int]]:
  """Positions (i, j) in two layer lists at the given relative depths d in [0, 1] over block outputs (distinct,
  sorted): each list contributes its block output (index >= 1) whose relative depth is closest to that of block
  1 + round(d (L - 1)) (the shallower on a tie)."""

  def pick(layers, num_layers, d):
    blocks = [(k, l) for k, l in enumerate(layers) if l >= 1]
    if not blocks:
      raise ValueError(f"depth matching needs block outputs (hidden-state index >= 1); got layers {list(layers)}.")
    target = relative_depth(1 + int(round(d * (num_layers - 1))), num_layers)
    return min(blocks, key=lambda kl: (abs(relative_depth(kl[1], num_layers) - target), kl[1]))[0]

  return sorted({(pick(layers_a, num_layers_a, d), pick(layers_b, num_layers_b, d)) for d in depths})
