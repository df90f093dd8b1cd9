"""Hugging Face tensors -> xsim parameter tree, driven by a family's name table.

A family describes each parameter once as a `TensorSpec`: the HF tensor name (with `{i}` for the layer) and how
to reshape it. This module checks the checkpoint against the architecture before reading any data (every needed
tensor present, none left over, every shape right), then fills the tree one parameter at a time: each stacked
[layers, ...] array is allocated once in the target dtype, filled layer by layer and handed to `place` before the
next parameter is read, so loading holds little beyond the parameters themselves.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np

from xsim.models.config import ModelConfig

Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]
# Buffers some HF checkpoints store that are not parameters (rotary caches, causal-mask tensors).
_IGNORED_TENSORS = re.compile(r"(rotary_emb\.inv_freq|attention\.bias$|attention\.masked_bias$)")
# XLA's CPU client aliases (does not copy) host arrays aligned to 64 bytes; NumPy only guarantees 16.
_ALIGN = 64


def identity(w, c):
  """HF tensor stored as xsim uses it (norm scales, biases, embeddings)."""
  return w


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """Where one parameter comes from: HF tensor `name` ("{i}" = layer index) and its reshaping."""
  name: str
  transform: Transform = identity


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


# The HF shape each transform above turns into a given parameter shape (for error messages).
_HF_SHAPES = {identity: lambda s: s, linear: lambda s: s[::-1], heads_in: lambda s: (s[1] * s[2], s[0]),
              heads_bias: lambda s: (s[0] * s[1],), heads_out: lambda s: (s[2], s[0] * s[1])}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def convert_checkpoint(config: ModelConfig, tensors: Mapping[str, np.ndarray], top: Mapping[tuple, TensorSpec],
                       per_layer: Mapping[tuple, TensorSpec], expected_shapes: Mapping[tuple, tuple], dtype,
                       place: Callable[[np.ndarray], Any] = lambda x: x) -> dict:
  """Builds the parameter tree (what goes under "params") from HF `tensors`, one parameter at a time.

  tensors: HF tensor name -> array, read lazily if the mapping is. If it has `shape(name)` (and `file(name)`)
    methods, as SafetensorsCheckpoint and GGUFTensors do, every shape is checked before any data is read. If its
    `fresh_arrays` is true (GGUFTensors), each access returns a new array nobody else holds, which may be kept.
  top/per_layer: parameter path -> TensorSpec; per-layer parameters get a leading layer axis.
  expected_shapes: path -> shape from `jax.eval_shape` of the module's init, to check every tensor.
  place: called on each finished parameter, a 64-byte-aligned host array in `dtype` (e.g. `jax.device_put`,
    which then aliases it on CPU); the tree holds what it returns. The host copy is dropped before the next
    parameter is built.
  """
  leaves = {path: (spec, False) for path, spec in top.items()}
  leaves.update({("layers", "block") + path: (spec, True) for path, spec in per_layer.items()})
  unmapped = sorted("/".join(p) for p in expected_shapes if p not in leaves)
  unknown = sorted("/".join(p) for p in leaves if p not in expected_shapes)
  if unmapped or unknown:
    problems = ([f"no weights mapped for parameters {unmapped}"] if unmapped else []) + (
        [f"weights mapped to parameters the module does not have: {unknown}"] if unknown else [])
    raise ValueError(f"The {config.family} name table does not match the architecture: {'; '.join(problems)}.")
  sources = {path: [spec.name.format(i=i) for i in range(config.num_layers)] if stacked else [spec.name]
             for path, (spec, stacked) in leaves.items()}
  _check_names(config, tensors, sources)
  _check_shapes(config, tensors, leaves, sources, expected_shapes)

  params: dict = {}
  for path, (spec, stacked) in leaves.items():
    if stacked:
      out = empty_aligned(expected_shapes[path], dtype)
      for i, name in enumerate(sources[path]):
        # Assignment casts to `dtype` as `astype` would, without a full-size temporary of the source dtype.
        out[i] = spec.transform(np.asarray(tensors[name]), config)
    else:
      out = _top_level(tensors, spec, sources[path][0], config, dtype)
    _set(params, path, place(out))
    del out
  return params


def _top_level(tensors: Mapping, spec: TensorSpec, name: str, config: ModelConfig, dtype) -> np.ndarray:
  """A parameter without a layer axis, aligned and in `dtype`: the array read itself when the mapping hands
  out new arrays (`fresh_arrays`) that already are (a large embedding is then never held twice)."""
  w = spec.transform(np.asarray(tensors[name]), config)
  if (getattr(tensors, "fresh_arrays", False) and w.dtype == dtype and w.flags.c_contiguous and w.flags.writeable
      and w.ctypes.data % _ALIGN == 0):
    return w
  out = empty_aligned(w.shape, dtype)
  out[...] = w
  return out


def _check_names(config: ModelConfig, tensors: Mapping, sources: dict[tuple, list[str]]) -> None:
  """Every tensor the parameters need exists, and the checkpoint has none they do not use."""
  needed = {name: path for path, names in sources.items() for name in names}
  missing = [(name, path) for name, path in needed.items() if name not in tensors]
  if missing:
    name, path = missing[0]
    raise ValueError(f"{_where(tensors, None)} has no tensor {name!r} (needed for parameter {'/'.join(path)})"
                     f"{f' nor {len(missing) - 1} more' if len(missing) > 1 else ''}; is it a {config.family} "
                     "checkpoint of this configuration? Re-download or re-convert it, or fix its config.")
  leftover = sorted(n for n in tensors if n not in needed and not _IGNORED_TENSORS.search(n))
  if leftover:
    raise ValueError(f"The checkpoint has tensors the {config.family} port does not use: {leftover[:8]}"
                     f"{' ...' if len(leftover) > 8 else ''}. Refusing to drop them silently; the model "
                     "may have a feature xsim does not implement.")


def _check_shapes(config: ModelConfig, tensors: Mapping, leaves: dict, sources: dict[tuple, list[str]],
                  expected_shapes: Mapping[tuple, tuple]) -> None:
  """Every tensor, after its transform, has its parameter's shape (per layer); from the headers where possible."""
  converted: dict = {}  # (transform, HF shape) -> parameter shape, or None where the transform cannot apply
  for path, (spec, stacked) in leaves.items():
    want = tuple(expected_shapes[path][1:] if stacked else expected_shapes[path])
    for name in sources[path]:
      found = _shape(tensors, name)
      key = (spec.transform, found)
      if key not in converted:
        converted[key] = _converted_shape(spec.transform, found, config)
      if converted[key] != want:
        _raise_shape(config, tensors, name, found, path, want, spec.transform, converted[key])


def _converted_shape(transform: Transform, shape: tuple, config: ModelConfig):
  """Shape of `transform` applied to an array of `shape`, without any data; None if it cannot apply."""
  try:
    return tuple(jax.eval_shape(lambda w: transform(w, config), jax.ShapeDtypeStruct(shape, np.float32)).shape)
  except (TypeError, ValueError, IndexError):  # reshape to an impossible shape, too few dimensions
    return None


def _raise_shape(config, tensors, name, found, path, want, transform, got):
  hf_shape = _HF_SHAPES.get(transform)
  expected = f"{hf_shape(want)}" if hf_shape else f"one that {transform.__name__} turns into {want}"
  gives = f"gives {got}" if got is not None else "cannot be converted"
  raise ValueError(
      f"{_where(tensors, name)}: tensor {name!r} has shape {found}, but the config implies {expected} (parameter "
      f"{'/'.join(path)} of shape {want}{' per layer' if path[0] == 'layers' else ''}; {found} {gives}). The config "
      "and the weights disagree: a transposed or otherwise mis-exported tensor, or an edited config. Re-download "
      "the checkpoint or re-convert it from the original model (e.g. with save_pretrained).")


def _shape(tensors: Mapping, name: str) -> tuple[int, ...]:
  return tuple(tensors.shape(name)) if hasattr(tensors, "shape") else tuple(np.shape(tensors[name]))


def _where(tensors: Mapping, name) -> str:
  """The file holding tensor `name` (or the checkpoint's files), for error messages."""
  if not hasattr(tensors, "file"):
    return "The checkpoint"
  if name is None:
    return ", ".join(sorted({tensors.file(n) for n in tensors}))
  return tensors.file(name)


def empty_aligned(shape: tuple, dtype) -> np.ndarray:
  """np.empty(shape, dtype) whose data starts at a multiple of _ALIGN bytes."""
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  start = -raw.ctypes.data % _ALIGN
  return raw[start:start + nbytes].view(dtype).reshape(shape)
