"""One process of tests/transfer/test_checkpoint.py's multi-process test: saves and reads back its share of
chunks (index % process_count == process_index) in one shared ChunkStore.

  python -m tests.transfer.checkpoint_worker DIRECTORY NUM_CHUNKS
"""
import sys

import numpy as np

from xsim.distributed import initialize_from_env


def chunk_result(chunk: int) -> dict:
  """The arrays chunk `chunk` saves: distinct per chunk, nested like a fit's result."""
  rng = np.random.default_rng(chunk)
  return {"r2": rng.normal(size=2).astype(np.float32), "best_step": np.array([chunk, 2 * chunk], np.int32),
          "params": {"weight": rng.normal(size=(2, 3, 4)).astype(np.float32)}}


SETTINGS = {"method": "adam", "test": "multi-process"}


def main(directory: str, num_chunks: int) -> None:
  initialize_from_env()
  import jax  # after jax.distributed.initialize
  from xsim.transfer import checkpoint

  store = checkpoint.ChunkStore(directory, SETTINGS)
  mine = range(jax.process_index(), num_chunks, jax.process_count())
  for chunk in mine:
    store.save(chunk, [[chunk, 0]], chunk_result(chunk))
  for chunk in mine:
    back = store.load(chunk, [[chunk, 0]])
    assert back is not None, f"process {jax.process_index()} could not read back chunk {chunk}"
    np.testing.assert_array_equal(back["params"]["weight"], chunk_result(chunk)["params"]["weight"])


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
