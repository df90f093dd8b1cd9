"""Singular value decompositions that never give jaxlib's CPU kernels a batch.

jaxlib 0.10's CPU LAPACK kernels split a batch of decompositions over XLA's intra-op thread pool and block until
it is done. Several such calls at once (one per device of a process with several devices) can hold every thread
of the pool while the work they queued waits behind them, and the program hangs: found under jax.distributed with
2 processes of 2 devices each (tests/test_linalg.py). On CPU `svd` therefore decomposes a batch one matrix at a
time in a loop (jax.lax.map), also when it is vmapped; on other platforms it is jnp.linalg.svd, batched.

A loop over an axis laid out over several devices would make XLA gather it onto each of them, so callers whose
batch is sharded decompose inside shard_map (`xsim.sharding.blockwise`), where each device loops over
its own block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def svd(x, *, full_matrices: bool = False, compute_uv: bool = True):
  """jnp.linalg.svd of x [..., m, n] (u [..., m, k], s [..., k], vt [..., k, n], or s alone), one matrix per
  LAPACK call on CPU."""
  return _decomposition(full_matrices, compute_uv)(x)


@functools.cache
def _decomposition(full_matrices: bool, compute_uv: bool):
  batched = functools.partial(jnp.linalg.svd, full_matrices=full_matrices, compute_uv=compute_uv)

  def one_at_a_time(x):
    """x [B, m, n]: a loop on CPU (each step calls `decompose`, so a vmap around this adds another loop, not a
    batch), the batched kernel elsewhere."""
    return jax.lax.platform_dependent(x, cpu=lambda a: jax.lax.map(decompose, a), default=batched)

  @jax.custom_batching.custom_vmap
  def decompose(x):
    if x.ndim == 2:
      return batched(x)
    lead = x.shape[:-2]
    out = one_at_a_time(x.reshape((-1,) + x.shape[-2:]))
    return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)

  @decompose.def_vmap
  def _vmapped(axis_size, in_batched, x):
    del axis_size
    if not in_batched[0]:  # vmapped over other arguments only
      out = decompose(x)
      return out, jax.tree.map(lambda _: False, out)
    out = one_at_a_time(x)  # custom_vmap moved the batch to axis 0
    return out, jax.tree.map(lambda _: True, out)

  return decompose
