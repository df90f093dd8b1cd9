"""Per-chunk checkpoints: a rerun reads finished chunks back, refits missing or damaged ones, and equals a fresh fit."""
import json
import logging
import os
import shutil

import numpy as np
import pytest

from launch.local import launch
from tests.transfer import checkpoint_worker
from xsim import transfer
from xsim.transfer import checkpoint

SOLVER = transfer.Adam(steps=60, batch_size=64, eval_every=20, patience=2, chunk_size=2)
# 2 source layers x (2 + 1) targets = 4 chunks; chunk 2 = source layer 1, targets 0 and 1.
CHUNK2_PAIRS = [[1, 0], [1, 1]]


@pytest.fixture(scope="module", name="data")
def _data():
  rng = np.random.default_rng(0)
  source = rng.normal(size=(2, 300, 5)).astype(np.float32)
  target = (np.einsum("na,tab->tnb", source[1], rng.normal(size=(3, 5, 4))) + rng.normal(size=(3, 300, 4)))
  return source, target.astype(np.float32)


@pytest.fixture(scope="module", name="fresh")
def _fresh(data, tmp_path_factory):
  """A fit from scratch and the checkpoint directory it wrote (copy it before changing it)."""
  directory = tmp_path_factory.mktemp("fresh")
  fit = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert fit.restored_chunks == ()
  return fit, directory


def _assert_same(a, b):
  np.testing.assert_array_equal(a.r2, b.r2)
  np.testing.assert_array_equal(a.best_step, b.best_step)
  np.testing.assert_array_equal(a.penalty, b.penalty)
  assert a.params.keys() == b.params.keys()
  for name in a.params:
    assert a.params[name].dtype == b.params[name].dtype
    np.testing.assert_array_equal(a.params[name], b.params[name])


def _copy(directory, tmp_path):
  return shutil.copytree(directory, tmp_path / "maps")


def test_rerun_resumes_finished_chunks_with_identical_results(data, fresh, tmp_path):
  fit, directory = fresh
  directory = _copy(directory, tmp_path)
  resumed = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert resumed.restored_chunks == (0, 1, 2, 3)
  _assert_same(fit, resumed)

  # An interrupted run: chunk 2 never finished. Chunk 1 is marked so reading it back (not refitting) shows.
  os.remove(directory / "chunk_00002.json")
  store = checkpoint.ChunkStore(str(directory), _stored_settings(directory))
  marked = store.load(1, [[0, 2]])
  marked["r2"] = np.full_like(marked["r2"], -7.0)
  store.save(1, [[0, 2]], marked)
  partial = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert partial.restored_chunks == (0, 1, 3)
  assert partial.r2[0, 2] == -7.0  # chunk 1 = source layer 0, target layer 2
  np.testing.assert_array_equal(partial.r2[1], fit.r2[1])  # chunk 2 refit identically
  np.testing.assert_array_equal(partial.params["weight"][3:], fit.params["weight"][3:])


def _flip(path, where):
  data = bytearray(path.read_bytes())
  position = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
  data[position] ^= 0x5A
  path.write_bytes(bytes(data))


def _chunk_files(d):
  """The files of chunk 2's orbax checkpoint, largest (the array data) first."""
  files = [p for p in (d / "chunk_00002").rglob("*") if p.is_file()]
  return sorted(files, key=lambda p: (-p.stat().st_size, str(p)))


DAMAGE = {
    "array data start flipped": lambda d: _flip(_chunk_files(d)[0], "start"),
    "array data middle flipped": lambda d: _flip(_chunk_files(d)[0], "middle"),
    "array data end flipped": lambda d: _flip(_chunk_files(d)[0], "end"),
    "array data truncated": lambda d: os.truncate(_chunk_files(d)[0], _chunk_files(d)[0].stat().st_size // 2),
    "array header cut short": lambda d: _chunk_files(d)[0].write_bytes(_chunk_files(d)[0].read_bytes()[:12]),
    "chunk deleted": lambda d: shutil.rmtree(d / "chunk_00002"),
    "record flipped": lambda d: _flip(d / "chunk_00002.json", "middle"),
    "record truncated": lambda d: os.truncate(d / "chunk_00002.json", 10),
    "record of other pairs": lambda d: (d / "chunk_00002.json").write_text(
        json.dumps(dict(json.loads((d / "chunk_00002.json").read_text()), pairs=[[1, 2]]))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_chunk_is_named_deleted_and_refit_identically(data, fresh, tmp_path, caplog, damage):
  fit, directory = fresh
  directory = _copy(directory, tmp_path)
  DAMAGE[damage](directory)
  with caplog.at_level(logging.WARNING):
    refit = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert refit.restored_chunks == (0, 1, 3)
  _assert_same(fit, refit)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert str(directory) in warnings[0] and "chunk 2 " in warnings[0]
  assert "method adam" in warnings[0] and str(CHUNK2_PAIRS) in warnings[0]
  # The refit chunk was saved again, verified: a third run reads every chunk back.
  caplog.clear()
  again = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert again.restored_chunks == (0, 1, 2, 3) and not caplog.records
  _assert_same(fit, again)


def test_orbax_metadata_damage_alone_is_harmless(data, fresh, tmp_path, caplog):
  """The arrays are verified by their SHA-256, so a chunk whose orbax metadata files are damaged but whose
  arrays are whole is read back as it is."""
  fit, directory = fresh
  directory = _copy(directory, tmp_path)
  metadata = [p for p in _chunk_files(directory)[1:] if p.stat().st_size]
  assert metadata  # orbax wrote its own files beside the arrays
  for path in metadata:
    _flip(path, "middle")
  with caplog.at_level(logging.WARNING):
    resumed = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert resumed.restored_chunks == (0, 1, 2, 3) and not caplog.records
  _assert_same(fit, resumed)


def test_save_killed_midway_does_not_break_the_next_save(data, fresh, tmp_path, caplog):
  """kill -9 during a save leaves a temporary file, or the arrays without their record; neither is read and
  the next run saves the chunk over them."""
  fit, directory = fresh
  directory = _copy(directory, tmp_path)
  os.remove(directory / "chunk_00002.json")
  _flip(_chunk_files(directory)[0], "middle")  # arrays renamed into place, killed before the record
  partial = directory / "chunk_00002.orbax-checkpoint-tmp-1764000000"  # killed while orbax was writing
  partial.mkdir()
  (partial / "_CHECKPOINT_METADATA").write_text("{")
  with caplog.at_level(logging.WARNING):
    resumed = transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory))
  assert resumed.restored_chunks == (0, 1, 3) and not caplog.records  # an unfinished chunk is no damage
  _assert_same(fit, resumed)
  assert transfer.fit_linear_maps(*data, SOLVER, checkpoint_dir=str(directory)).restored_chunks == (0, 1, 2, 3)


def test_checkpoint_dir_of_other_settings_is_refused(data, tmp_path):
  source, target = data
  transfer.fit_linear_maps(source, target, transfer.Ridge(chunk_size=3), checkpoint_dir=str(tmp_path))
  with pytest.raises(ValueError, match="other settings .*penalties"):
    transfer.fit_linear_maps(source, target, transfer.Ridge((1.0,), chunk_size=3), checkpoint_dir=str(tmp_path))
  with pytest.raises(ValueError, match="other settings .*data"):
    transfer.fit_linear_maps(source, target * 2, transfer.Ridge(chunk_size=3), checkpoint_dir=str(tmp_path))
  (tmp_path / "settings.json").write_text("{\"method\": ")
  with pytest.raises(ValueError, match="settings.json is unreadable.*delete the directory"):
    transfer.fit_linear_maps(source, target, transfer.Ridge(chunk_size=3), checkpoint_dir=str(tmp_path))


@pytest.mark.slow  # 2 processes under jax.distributed
def test_chunks_saved_by_every_process_read_back(tmp_path):
  """Under jax.distributed (2 processes of 2 devices each, as a cluster's hosts) each process checkpoints its own
  chunks into one directory at the same time; every chunk then reads back whole, whichever process wrote it."""
  code = launch(["-m", "tests.transfer.checkpoint_worker", str(tmp_path), "12"], 2, devices_per_process=2,
                timeout_s=300)
  assert code == 0
  store = checkpoint.ChunkStore(str(tmp_path), checkpoint_worker.SETTINGS)
  for chunk in range(12):
    back = store.load(chunk, [[chunk, 0]])
    assert back is not None, chunk
    expected = checkpoint_worker.chunk_result(chunk)
    assert set(back) == set(expected) and set(back["params"]) == {"weight"}
    for got, want in [(back["r2"], expected["r2"]), (back["best_step"], expected["best_step"]),
                      (back["params"]["weight"], expected["params"]["weight"])]:
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)


def _stored_settings(directory):
  with open(directory / "settings.json") as f:
    return json.load(f)
