"""Splitting similarity work over every device of a mesh: Gram tiles, layers or resamples, one block each.

All mesh axes act as one: a 4 x 2 mesh splits work 8 ways, as an 8 x 1 one does. Inputs that every device
needs whole are replicated; results come back laid out on the mesh like their split inputs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


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
