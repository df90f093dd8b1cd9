"""Meshes and parameter shardings for extraction: batch on the "data" axis, weights on the "model" axis."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  """A (data, model) mesh over `devices` (default: this process's devices); data=-1 takes what is left."""
  devices = list(devices if devices is not None else jax.local_devices())
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"model={model} does not divide the {len(devices)} devices.")
    data = len(devices) // model
  if data * model > len(devices) or data < 1 or model < 1:
    raise ValueError(f"A {data} x {model} mesh needs {data * model} devices; {len(devices)} are available.")
  return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


# Which axis of each (layer-stacked) parameter holds heads / features to split over the model axis.
# Megatron-style: q/k/v and gate/up split their outputs, o and down split their inputs, so each block needs
# one all-reduce; XLA's sharding propagation inserts it.
_SPLIT_AXIS = {
    ("attn", "q", "kernel"): 2, ("attn", "k", "kernel"): 2, ("attn", "v", "kernel"): 2,
    ("attn", "q", "bias"): 1, ("attn", "k", "bias"): 1, ("attn", "v", "bias"): 1,
    ("attn", "o", "kernel"): 1,
    ("mlp", "gate", "kernel"): 2, ("mlp", "up", "kernel"): 2, ("mlp", "down", "kernel"): 1,
    ("mlp", "gate", "bias"): 1, ("mlp", "up", "bias"): 1,
}


def _spec(path: tuple[str, ...], shape: tuple[int, ...], model_size: int) -> P:
  if path[:2] == ("layers", "block"):
    axis = _SPLIT_AXIS.get(path[2:])
  else:
    axis = {("embed",): 0, ("lm_head",): 1}.get(path)
  if axis is None or model_size == 1 or shape[axis] % model_size:
    return P()  # replicated: norms, and anything the model axis does not divide (e.g. 2 KV heads on 4 devices)
  spec = [None] * len(shape)
  spec[axis] = MODEL
  return P(*spec)


def param_shardings(params, mesh: Mesh):
  """NamedShardings for a {"params": ...} tree: heads and MLP features over the mesh's model axis."""
  model_size = mesh.shape[MODEL]

  def sharding(path, leaf):
    keys = tuple(k.key for k in path)[1:]  # drop the top-level "params"
    return NamedSharding(mesh, _spec(keys, leaf.shape, model_size))

  return jax.tree_util.tree_map_with_path(sharding, params)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_axis] = DATA
  return NamedSharding(mesh, P(*spec))
