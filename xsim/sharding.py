"""Meshes and shardings, for every package: a (data, model) mesh and the parameter and batch shardings of
extraction (batch on the "data" axis, weights on the "model" axis), and array work (Gram tiles, layers,
resamples, decompositions) split over every device of a mesh, one block each.

Split work treats all mesh axes as one: a 4 x 2 mesh splits it 8 ways, as an 8 x 1 one does. Inputs that every
device needs whole are replicated; results come back laid out on the mesh like their split inputs.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


def axes(mesh: Mesh) -> tuple:
  """All axis names of the mesh, for specs and collectives that span every device."""
  return tuple(mesh.axis_names)


def place(x, mesh: Mesh, spec: P):
  """Lays x out as `spec` on the mesh: explicit-axis meshes need jax.reshard, auto ones a constraint."""
  if all(t == AxisType.Explicit for t in mesh.axis_types):
    return jax.reshard(x, NamedSharding(mesh, spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def pad_rows(x, multiple: int):
  """Pads axis 0 to a multiple of `multiple` by repeating the last row: padded work is a copy of real work,
  so it makes no NaN (as zero layers can) and leaves maxima unchanged; callers cut it off."""
  extra = -x.shape[0] % multiple
  return x if not extra else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])


def split_map(fn: Callable, mesh: Mesh, split: Sequence, whole: Sequence = ()):
  """fn(*split_blocks, *whole) on every device: each array of `split` is padded (pad_rows) and divided along
  axis 0 over all devices, `whole` is replicated. -> fn's outputs, blocks stacked along axis 0 and
  replicated (results are small; explicit-axis meshes cannot cut padded rows off a split axis), padded rows
  included: the caller cuts them."""
  spec = P(axes(mesh))
  split = [place(pad_rows(a, mesh.size), mesh, spec) for a in split]
  whole = [place(a, mesh, P()) for a in whole]
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(split) + (P(),) * len(whole), out_specs=spec)
  return jax.tree.map(lambda a: place(a, mesh, P()), mapped(*split, *whole))


def blockwise(fn: Callable, mesh: Mesh, *arrays):
  """fn(*blocks) on every device, each array divided along axis 0 (a multiple of the device count) over all
  devices -> fn's outputs laid out the same way. For work that must stay on the device holding its block (a
  loop over the axis, e.g. xsim.linalg.svd on CPU, would otherwise gather the whole axis onto every device)."""
  spec = P(axes(mesh))
  arrays = [place(a, mesh, spec) for a in arrays]
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec)(*arrays)


def gather(tree, mesh: Mesh):
  """Inside split_map: every device's block of each leaf, stacked along axis 0 (all rows, padding included)."""
  return jax.tree.map(lambda a: jax.lax.all_gather(a, axes(mesh), tiled=True), tree)
