"""Hugging Face tensors -> xsim parameter tree, driven by a family's name table.

A family describes each parameter once as a `TensorSpec`: the HF tensor name (with `{i}` for the layer) and how
to reshape it. This module fills the tree, stacks layers for `nn.scan`, and checks shapes and leftovers so a
checkpoint that does not match the architecture fails loudly instead of computing another model.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import numpy as np

from xsim.models.config import ModelConfig

Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]
# Buffers some HF checkpoints store that are not parameters (rotary caches, causal-mask tensors).
_IGNORED_TENSORS = re.compile(r"(rotary_emb\.inv_freq|attention\.bias$|attention\.masked_bias$)")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """Where one parameter comes from: HF tensor `name` ("{i}" = layer index) and its reshaping."""
  name: str
  transform: Transform = lambda w, c: w


def linear(w, c):
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return w.T


def heads_in(w, c):
  """q/k/v weight [heads * E, D] -> kernel [D, heads, E]."""
  return w.T.reshape(w.shape[1], -1, c.head_dim)


def heads_bias(b, c):
  """q/k/v bias [heads * E] -> [heads, E]."""
  return b.reshape(-1, c.head_dim)


def heads_out(w, c):
  """o weight [D, H * E] -> kernel [H, E, D]."""
  return w.T.reshape(-1, c.head_dim, w.shape[0])


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def convert_checkpoint(config: ModelConfig, tensors: Mapping[str, np.ndarray], top: Mapping[tuple, TensorSpec],
                       per_layer: Mapping[tuple, TensorSpec], expected_shapes: Mapping[tuple, tuple],
                       dtype) -> dict:
  """Builds {"params": ...} from HF `tensors` (a mapping name -> array, read lazily if the mapping is).

  top/per_layer map a parameter path to its TensorSpec; per-layer parameters are stacked on a leading layer axis.
  expected_shapes: path -> shape from `jax.eval_shape` of the module's init, to check every tensor.
  """
  params: dict = {}
  used: set[str] = set()

  def fetch(name: str, spec: TensorSpec, path: tuple) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"The checkpoint has no tensor {name!r} (needed for parameter {'/'.join(path)}); "
                       f"is it a {config.family} checkpoint of this configuration?")
    used.add(name)
    return np.asarray(spec.transform(np.asarray(tensors[name]), config))

  for path, spec in top.items():
    _set(params, path, fetch(spec.name, spec, path).astype(dtype))
  for path, spec in per_layer.items():
    layers = [fetch(spec.name.format(i=i), spec, path) for i in range(config.num_layers)]
    _set(params, ("layers", "block") + path, np.stack(layers).astype(dtype))

  flat = _flatten(params)
  missing = sorted("/".join(p) for p in expected_shapes if p not in flat)
  if missing:
    raise ValueError(f"No weights mapped for parameters {missing}: the {config.family} name table is incomplete.")
  for path, shape in expected_shapes.items():
    if tuple(flat[path].shape) != tuple(shape):
      raise ValueError(f"Parameter {'/'.join(path)} has shape {flat[path].shape} in the checkpoint but the "
                       f"config implies {tuple(shape)}; config.json and the weights disagree.")
  leftover = sorted(n for n in tensors if n not in used and not _IGNORED_TENSORS.search(n))
  if leftover:
    raise ValueError(f"The checkpoint has tensors the {config.family} port does not use: {leftover[:8]}"
                     f"{' ...' if len(leftover) > 8 else ''}. Refusing to drop them silently; the model "
                     "may have a feature xsim does not implement.")
  return params


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out
