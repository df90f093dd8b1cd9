"""A 2-process jax.distributed extraction on localhost writes the same store as one process."""
import numpy as np
import pytest

import xsim
from launch.local import launch
from tests.activations.tiny import TEXTS, make_model_dir
from xsim import activations as xa


@pytest.mark.slow
@pytest.mark.parametrize("devices_per_process", [1, 2])  # 2 x 2: several hosts of several devices, as a cluster
def test_two_processes_equal_one(tmp_path, devices_per_process):
  model_dir = str(make_model_dir(tmp_path / "model", "bytelevel"))
  one = xa.extract_activations(xsim.load_model(model_dir), TEXTS, xa.RowSpec(pooling="words"), shard_size=2,
                               batch_size=2, store_dir=str(tmp_path / "one"), progress=False)
  code = launch(["-m", "tests.activations.multiprocess_worker", model_dir, str(tmp_path / "two")], 2,
                devices_per_process, timeout_s=600)
  assert code == 0
  two = xa.load_store(str(tmp_path / "two"), read_all=True)
  np.testing.assert_allclose(np.asarray(two.array), np.asarray(one.array), atol=1e-6)
  np.testing.assert_array_equal(two.index, one.index)
  assert two.stats.keys() == one.stats.keys() and len(two.stats["layers"]) == len(one.stats["layers"])
  for a, b in zip(two.stats["layers"], one.stats["layers"]):  # batches split over 2 devices round differently
    assert a.keys() == b.keys()
    for key in b:
      floats = isinstance(b[key], float) or (isinstance(b[key], list) and all(isinstance(v, float) for v in b[key]))
      assert a[key] == (pytest.approx(b[key], rel=1e-6) if floats else b[key]), key
  assert {k: v for k, v in two.stats.items() if k != "layers"} == {k: v for k, v in one.stats.items() if k != "layers"}
