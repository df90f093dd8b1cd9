"""One process of tests/test_linalg.py's multi-process test: decomposes a stack of matrices laid out over this
process's devices, as the probes and Procrustes maps do, and prints the sum of the singular values.

  python -m tests.linalg_worker NUM_PER_DEVICE ROWS COLS (plain|xsim)
"""
import sys

import numpy as np

from xsim.distributed import initialize_from_env


def main(per_device: int, rows: int, cols: int, kind: str) -> None:
  initialize_from_env()
  import jax  # after jax.distributed.initialize
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from xsim import activations, linalg, sharding

  mesh = activations.make_mesh(-1, 1)
  stack = np.random.default_rng(jax.process_index()).normal(size=(mesh.size * per_device, rows, cols))
  stack = jax.device_put(stack.astype(np.float32), NamedSharding(mesh, PartitionSpec(mesh.axis_names)))
  if kind == "plain":  # the batched kernel, as before xsim.linalg
    singular_values = jax.jit(lambda a: jax.vmap(lambda m: jnp.linalg.svd(m, compute_uv=False))(a))
  else:
    singular_values = jax.jit(lambda a: sharding.blockwise(jax.vmap(lambda m: linalg.svd(m, compute_uv=False)),
                                                           mesh, a))
  for _ in range(3):
    total = float(jnp.sum(singular_values(stack)))
  print(f"process {jax.process_index()}: {total:.4f}", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
