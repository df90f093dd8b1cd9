"""Worker for the 2-process extraction test: joins jax.distributed, extracts into a shared store (batches split
over this process's devices)."""
import sys

import xsim
from xsim import activations as xa
from xsim.distributed import initialize_from_env
from tests.activations.tiny import TEXTS

if __name__ == "__main__":
  model_dir, store_dir = sys.argv[1:3]
  assert initialize_from_env()
  import jax
  assert jax.process_count() == 2, jax.process_count()
  model = xsim.load_model(model_dir)
  acts = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="words"), shard_size=2, batch_size=2,
                                store_dir=store_dir, progress=False, mesh=xa.make_mesh(-1, 1))
  print("rows", acts.num_rows)
