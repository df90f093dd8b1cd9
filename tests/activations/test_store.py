"""Activation stores: round trips with NumPy indexing, checksums that turn every kind of damage into one named
error, resumable shards, and atomic writes that name the file and the fix when the disk refuses them."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xsim.activations.rows import INDEX_DTYPE
from xsim.activations.store import ActivationStore, CorruptStore, IncompleteStore, load_store, shard_stats

LAYERS = [0, 2, 5]
HIDDEN = 32
SHARD_ROWS = (40, 0, 30, 9)  # a shard may give no rows (every text skipped)


def _identity(dtype="float32"):
  return {"model": "tiny-model", "layers": LAYERS, "hidden_size": HIDDEN, "store_dtype": dtype, "pooling": "words",
          "text_hash": "0" * 16}


def _data(seed=0):
  """[layers, rows, hidden] float32 with one outlier dimension, and its row index."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(LAYERS), sum(SHARD_ROWS), HIDDEN)).astype(np.float32)
  x[..., 3] *= 20
  index = np.zeros(x.shape[1], INDEX_DTYPE)
  index["text"] = np.arange(x.shape[1])
  return x, index


def _write(path, x, index, dtype="float32"):
  store = ActivationStore(str(path), _identity(dtype))
  starts = np.cumsum((0,) + SHARD_ROWS)
  for k in range(len(SHARD_ROWS)):
    acts = x[:, starts[k]:starts[k + 1]].astype(dtype)
    store.write_shard(k, acts, index[starts[k]:starts[k + 1]], shard_stats(acts))
  store.finish(len(SHARD_ROWS))
  return store


@pytest.fixture
def written(tmp_path):
  x, index = _data()
  _write(tmp_path / "store", x, index)
  return str(tmp_path / "store"), x, index


def test_round_trip_with_numpy_indexing(written):
  path, x, index = written
  acts = load_store(path, read_all=True)
  array = acts.array
  assert array.shape == x.shape and array.dtype == np.float32 and len(array) == len(LAYERS) and array.ndim == 3
  np.testing.assert_array_equal(acts.index, index)
  rows = np.random.default_rng(1).integers(0, x.shape[1], 25)  # unsorted, repeated, across shards
  keys = [(slice(None), rows), 1, (-1, 45), (slice(None), slice(5, 70, 7)), (slice(1, 3), rows, 2),
          (0, slice(None), np.array([3, 1])), (Ellipsis, 4), (slice(None), x[0, :, 0] > 0), (slice(None), slice(60, 9)),
          (slice(None), np.array([], np.int64)), (2, rows), (np.array([2, 0]),), (slice(None), slice(70, 500))]
  for key in keys:
    np.testing.assert_array_equal(array[key], x[key], err_msg=str(key))
  np.testing.assert_array_equal(np.asarray(array, np.float64), x.astype(np.float64))
  assert np.asarray(array, np.float64).dtype == np.float64
  with pytest.raises(IndexError, match="one index array"):
    array[np.array([0, 1]), rows[:2]]
  with pytest.raises(IndexError):
    array[3]


def test_stats_describe_the_stored_values(written):
  path, x, _ = written
  stats = load_store(path).stats
  reference = x.astype(np.float64)
  assert stats["num_rows"] == x.shape[1]
  for i, s in enumerate(stats["layers"]):
    var = reference[i].var(0)
    assert s["layer"] == LAYERS[i]
    assert s["max_abs"] == pytest.approx(np.abs(reference[i]).max(), rel=1e-12)
    assert s["mean_norm"] == pytest.approx(np.linalg.norm(reference[i], axis=-1).mean(), rel=1e-12)
    assert s["top_variance_dims"][0] == 3 == int(np.argmax(var))
    assert s["top_variance_share"][0] == pytest.approx(var.max() / var.sum(), rel=1e-9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stores(tmp_path, dtype):
  x, index = _data()
  _write(tmp_path, x, index, dtype)
  array = load_store(str(tmp_path), read_all=True).array
  assert array.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(np.asarray(array, np.float32), x.astype(dtype).astype(np.float32))
  chunk = os.path.join(tmp_path, "acts", "00000", "c", "0", "0", "0")
  assert os.path.getsize(chunk) == SHARD_ROWS[0] * HIDDEN * 2 + 4  # 2 bytes a value, then the CRC32C


def _damage(path, how):
  with open(path, "rb") as f:
    data = f.read()
  if how == "flip":  # 256 bytes in the middle, as a bad disk or a stray write would
    middle = len(data) // 2 - 128
    data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 256]) + data[middle + 256:]
  elif how == "truncate":
    data = data[:len(data) // 2]
  if how == "delete":
    os.remove(path)
  else:
    with open(path, "wb") as f:
      f.write(data)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_a_damaged_chunk_is_named_never_read(written, how):
  path, x, _ = written
  chunk = os.path.join("acts", "00002", "c", "1", "0", "0")  # layer 1 of the third shard
  assert os.path.getsize(os.path.join(path, chunk)) > 1024
  _damage(os.path.join(path, chunk), how)
  acts = load_store(path)  # metadata is intact: opening is cheap and reads no chunk
  np.testing.assert_array_equal(acts.array[0], x[0])  # chunks of other layers still read
  for read in (lambda: acts.array[:, [45]], lambda: np.asarray(acts.array, np.float32),
               lambda: load_store(path, read_all=True)):
    with pytest.raises(CorruptStore) as error:
      read()
    message = str(error.value)
    assert chunk in message and "tiny-model" in message and f"delete {path} and rerun: it is re-extracted" in message


@pytest.mark.parametrize("name", ["index.npy", "stats.json", "acts/00003/zarr.json", "manifest.json",
                                  "acts/00000"])
def test_damaged_metadata_is_named(written, name):
  path, _, _ = written
  target = os.path.join(path, name)
  if os.path.isdir(target):  # a whole shard array gone
    import shutil
    shutil.rmtree(target)
  else:
    with open(target, "rb") as f:
      data = bytearray(f.read())
    i = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit())  # a changed digit: still valid
    data[i] = ord(str((int(chr(data[i])) + 1) % 10))
    with open(target, "wb") as f:
      f.write(bytes(data))
  with pytest.raises(CorruptStore, match="re-extracted") as error:
    load_store(path)
  assert name.split("/")[0] in str(error.value) and path in str(error.value)


def test_old_stores_are_refused_with_the_fix(tmp_path):
  with open(tmp_path / "manifest.json", "w") as f:
    json.dump(dict(_identity(), version=1, complete=True, num_rows=3), f)
  for open_store in (lambda: load_store(str(tmp_path)), lambda: ActivationStore(str(tmp_path), _identity())):
    with pytest.raises(CorruptStore, match=f"store format 1.*delete {tmp_path} and rerun"):
      open_store()


def test_an_unfinished_shard_is_written_again(tmp_path):
  """A process killed after writing a shard's array but before its record: the rerun redoes that shard only."""
  x, index = _data()
  store = ActivationStore(str(tmp_path), _identity())
  acts = x[:, :SHARD_ROWS[0]]
  store.write_shard(0, acts, index[:SHARD_ROWS[0]], shard_stats(acts))
  for k, rows in ((2, 5), (3, SHARD_ROWS[3])):  # killed before their records, one with another row count
    store._write_array(store._array(k), np.full((len(LAYERS), rows, HIDDEN), 7, np.float32))
  with pytest.raises(IncompleteStore, match="not complete"):
    load_store(str(tmp_path))
  resumed = ActivationStore(str(tmp_path), _identity())
  assert [resumed.has_shard(k) for k in range(4)] == [True, False, False, False]
  _write(tmp_path, x, index)
  np.testing.assert_array_equal(np.asarray(load_store(str(tmp_path), read_all=True).array), x)


def test_a_store_of_no_rows(tmp_path):
  store = ActivationStore(str(tmp_path), _identity())
  empty = np.zeros((len(LAYERS), 0, HIDDEN), np.float32)
  store.write_shard(0, empty, np.zeros(0, INDEX_DTYPE), shard_stats(empty))
  store.finish(1)
  acts = load_store(str(tmp_path), read_all=True)
  assert acts.array.shape == (len(LAYERS), 0, HIDDEN) and acts.num_rows == 0
  assert np.asarray(acts.array).shape == (len(LAYERS), 0, HIDDEN)


_FILE_SIZE_LIMIT = """
import json, os, resource, signal, sys
import numpy as np
from xsim.activations.store import ActivationStore, shard_stats
from xsim.io import atomic_write
from xsim.activations.rows import INDEX_DTYPE
directory = sys.argv[1]
store = ActivationStore(os.path.join(directory, "store"), {"model": "m", "layers": [0, 1]})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel's default for a write past the limit is to kill
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
results = {}

def dump(tmp):
  with open(tmp, "w") as f:
    json.dump(list(range(100000)), f)

acts = np.ones((2, 100, 1024), np.float32)
attempts = {"json": lambda: atomic_write(os.path.join(directory, "entry.json"), dump),
            "npy": lambda: atomic_write(os.path.join(directory, "big.npy"), lambda tmp: np.save(tmp, acts)),
            "store": lambda: store.write_shard(0, acts, np.zeros(100, INDEX_DTYPE), shard_stats(acts))}
for name, attempt in attempts.items():
  try:
    attempt()
    results[name] = None
  except OSError as e:
    results[name] = [type(e).__name__, e.errno, str(e)]
print("RESULT " + json.dumps(results))
"""


def test_a_real_file_size_limit(tmp_path):
  proc = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, str(tmp_path)], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  results = json.loads(lines[0][len("RESULT "):])
  assert results["json"][:2] == ["WriteError", errno.EFBIG]
  assert str(tmp_path / "entry.json") in results["json"][2] and "ulimit -f" in results["json"][2]
  assert results["npy"][0] == "WriteError" and str(tmp_path / "big.npy") in results["npy"][2]  # NumPy sets no errno
  assert results["store"][:2] == ["WriteError", errno.EFBIG]
  assert os.path.join(str(tmp_path), "store", "acts", "00000") in results["store"][2]
  assert "ulimit -f" in results["store"][2]
  leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith(".tmp-") or "__lock" in f]
  assert leftovers == []
  assert not os.path.exists(tmp_path / "entry.json") and not os.path.exists(tmp_path / "big.npy")


def test_chunks_swapped_between_layers_are_found_though_each_passes_its_crc(written):
  """A chunk is intact on its own (its CRC32C holds wherever it lies); the per-layer SHA-256s bind it to its layer."""
  path, x, _ = written
  first, second = (os.path.join(path, "acts", "00002", "c", str(layer), "0", "0") for layer in (0, 2))
  a, b = open(first, "rb").read(), open(second, "rb").read()
  with open(first, "wb") as f:
    f.write(b)
  with open(second, "wb") as f:
    f.write(a)
  np.testing.assert_array_equal(load_store(path).array[0, 40:70], x[2, 40:70])  # swapped: reads pass, rows exchanged
  with pytest.raises(CorruptStore, match="acts/00002: the rows of layer position 0 do not match their SHA-256"):
    load_store(path, read_all=True)
