"""Per-chunk orbax checkpoints: a rerun reads finished chunks back and refits only the missing ones."""
import json
import shutil

import numpy as np
import pytest

from xsim import transfer
from xsim.transfer import checkpoint

OPTIONS = dict(method="adam", steps=60, batch_size=64, eval_every=20, patience=2, chunk_size=2)


@pytest.fixture(name="data")
def _data():
  rng = np.random.default_rng(0)
  source = rng.normal(size=(2, 300, 5)).astype(np.float32)
  target = (np.einsum("na,tab->tnb", source[1], rng.normal(size=(3, 5, 4))) + rng.normal(size=(3, 300, 4)))
  return source, target.astype(np.float32)


def _assert_same(a, b):
  np.testing.assert_array_equal(a.r2, b.r2)
  np.testing.assert_array_equal(a.best_step, b.best_step)
  np.testing.assert_array_equal(a.penalty, b.penalty)
  for name in a.params:
    np.testing.assert_array_equal(a.params[name], b.params[name])


def test_rerun_resumes_finished_chunks_with_identical_results(data, tmp_path):
  source, target = data
  fresh = transfer.fit_linear_maps(source, target, checkpoint_dir=str(tmp_path), **OPTIONS)
  assert fresh.restored_chunks == ()  # 2 source layers x (2 + 1) targets = 4 chunks, all fit
  resumed = transfer.fit_linear_maps(source, target, checkpoint_dir=str(tmp_path), **OPTIONS)
  assert resumed.restored_chunks == (0, 1, 2, 3)
  _assert_same(fresh, resumed)

  # An interrupted run: chunk 2 never finished. Chunk 1 is marked so reading it back (not refitting) shows.
  shutil.rmtree(tmp_path / "chunk_00002")
  store = checkpoint.ChunkStore(str(tmp_path), _stored_settings(tmp_path))
  marked = store.load(1)
  marked["r2"] = np.full_like(marked["r2"], -7.0)
  shutil.rmtree(tmp_path / "chunk_00001")
  store.save(1, marked)
  partial = transfer.fit_linear_maps(source, target, checkpoint_dir=str(tmp_path), **OPTIONS)
  assert partial.restored_chunks == (0, 1, 3)
  assert partial.r2[0, 2] == -7.0  # chunk 1 = source layer 0, target layer 2
  np.testing.assert_array_equal(partial.r2[1], fresh.r2[1])  # chunk 2 refit identically
  np.testing.assert_array_equal(partial.params["weight"][3:], fresh.params["weight"][3:])


def test_checkpoint_dir_of_other_settings_is_refused(data, tmp_path):
  source, target = data
  transfer.fit_linear_maps(source, target, method="ridge", checkpoint_dir=str(tmp_path), chunk_size=3)
  with pytest.raises(ValueError, match="other settings .*penalties"):
    transfer.fit_linear_maps(source, target, method="ridge", penalties=(1.0,), checkpoint_dir=str(tmp_path),
                             chunk_size=3)
  with pytest.raises(ValueError, match="other settings .*data"):
    transfer.fit_linear_maps(source, target * 2, method="ridge", checkpoint_dir=str(tmp_path), chunk_size=3)


def _stored_settings(directory):
  with open(directory / "settings.json") as f:
    return json.load(f)
