"""On-disk activation store: every file carries a checksum recorded when it is written and checked when it is read,
each process writes its shards' rows in place, and a rerun resumes by skipping finished shards.

Layout of a store directory:
  manifest.json            what the store holds (model, texts hash, pooling, layers, ...), progress, the SHA-256 of
                           each file below that is not a chunk, the SHA-256 of each shard's rows of each layer (so a
                           chunk is bound to its layer and rows: chunks swapped between layers are found, though
                           each passes its CRC32C), and its own SHA-256
  acts/NNNNN/              zarr v3 array [layers, rows, hidden] (store_dtype) of the rows of shard NNNNN, one chunk
                           per layer and block of rows, each chunk ending in its CRC32C (tensorstore checks it on
                           every read; a missing chunk is an error, never zeros)
  shards/NNNNN.index.npy, shards/NNNNN.stats.npz, shards/NNNNN.json
                           the shard's row index, its streaming statistics and its record (row count, SHA-256s),
                           written last: a shard with a record is finished
  index.npy [rows], stats.json    written once every shard is finished
The store's array is the shards' arrays side by side along rows: nothing is copied when the store completes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Callable, Optional

import ml_dtypes  # noqa: F401  registers bfloat16 with NumPy, so store_dtype="bfloat16" names a NumPy dtype
import numpy as np
import tensorstore as ts

from xsim.activations.rows import INDEX_DTYPE
from xsim.errors import InputError
from xsim.io import WRITE_FIXES, sha256, write_bytes, write_error

# 1: activations.npy without checksums; 2: index with a `valid` field; 3: no per-layer digests (all refused)
MANIFEST_VERSION = 4
# Not part of a store's identity: what it has written so far.
_PROGRESS_KEYS = ("complete", "num_rows", "shard_rows", "files", "layer_sha256", "sha256")
_CHUNK_BYTES = 4 << 20  # rows per chunk: one layer's rows up to ~4 MiB, so one layer or a few rows read little
_CHECK_BYTES = 256 << 20  # read_all reads at most this much at a time


class CorruptStore(InputError):
  """A store that cannot be trusted: a file or chunk that is missing, truncated or does not match its checksum, or
  a store in an older format. The message names the store, the file, the model and the fix."""


class IncompleteStore(ValueError):
  """A store whose extraction has not finished (rerunning the extraction resumes it)."""


def _layer_digests(acts: np.ndarray) -> list[str]:
  """acts: [layers, rows, hidden] -> the SHA-256 of each layer's rows, as stored."""
  return [sha256(np.ascontiguousarray(layer).tobytes()) for layer in acts]


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _manifest_sha256(manifest: dict) -> str:
  return sha256(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, sort_keys=True).encode())


def _corrupt(path: str, what: str, manifest: Optional[dict]) -> CorruptStore:
  model = (manifest or {}).get("model", "an unknown model")
  return CorruptStore(f"Activation store {path} cannot be used: {what}. It holds activations of {model} written by "
                      f"xsim.extract_activations; delete {path} and rerun: it is re-extracted.")


def _read_manifest(path: str) -> dict:
  try:
    with open(os.path.join(path, "manifest.json"), "rb") as f:
      manifest = json.loads(f.read())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _corrupt(path, f"manifest.json is unreadable ({e})", None) from e
  if not isinstance(manifest, dict):
    raise _corrupt(path, "manifest.json is not a store manifest", None)
  if manifest.get("version") != MANIFEST_VERSION:
    raise _corrupt(path, f"it is in store format {manifest.get('version')}, which this xsim no longer reads (it "
                         f"reads format {MANIFEST_VERSION}, arrays with checksums)", manifest)
  if manifest.get("sha256") != _manifest_sha256(manifest):
    raise _corrupt(path, "manifest.json does not match its SHA-256", manifest)
  return manifest


# Tensorstore's status codes for a chunk that does not match its CRC32C, is cut short, or is missing.
_DAMAGE_CODES = ("DATA_LOSS", "FAILED_PRECONDITION", "NOT_FOUND")


def _tensorstore_error(e: Exception) -> str:
  return str(e).split(" [tensorstore_spec=")[0]  # the spec that follows repeats every option


def _array_spec(path: str) -> dict:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}


class StoredArray:
  """A lazy [layers, rows, hidden] view of a store's shard arrays. Indexing (ints, slices, and at most one 1-D int
  or boolean array, with NumPy's semantics) reads only the chunks it touches, checks each against its CRC32C and
  returns a NumPy array; np.asarray(array, dtype) reads it all. A damaged chunk raises CorruptStore."""

  ndim = 3

  def __init__(self, parts: list, empty_shape: tuple[int, int, int], dtype: np.dtype,
               corrupt: Callable[[str], Exception]):
    """parts: the shards' tensorstores [layers, rows_k, hidden] (none: an empty array of empty_shape, dtype);
    corrupt(message) -> the exception for a failed read."""
    self._parts = parts
    self._corrupt = corrupt
    if not parts:
      self._data = ts.array(np.zeros(empty_shape, dtype))
    else:
      self._data = parts[0] if len(parts) == 1 else ts.concat(parts, axis=1)
    self.shape = tuple(int(n) for n in self._data.shape)
    self.dtype = np.dtype(self._data.dtype.numpy_dtype)

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"StoredArray(shape={self.shape}, dtype={self.dtype})"

  def _read(self, view) -> np.ndarray:
    try:
      return view.read().result()
    except ValueError as e:
      if str(e).startswith(_DAMAGE_CODES):
        raise self._corrupt(_tensorstore_error(e)) from e
      raise

  def __getitem__(self, key) -> np.ndarray:
    key = key if isinstance(key, tuple) else (key,)
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    if ellipsis:
      i = ellipsis[0]
      key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
    if len(key) > self.ndim:
      raise IndexError(f"too many indices for a stored array of shape {self.shape}")
    keys = tuple(_axis_key(k, n) for k, n in zip(key + (slice(None),) * (self.ndim - len(key)), self.shape))
    if sum(isinstance(k, np.ndarray) for k in keys) > 1:
      raise IndexError("Index a stored array with one index array at a time (e.g. array[:, rows]); NumPy would "
                       "pair several index arrays elementwise.")
    if not any(isinstance(k, np.ndarray) for k in keys):
      return self._read(self._data[keys])
    # Ints as one-element ranges, so the outer read keeps every axis; NumPy then drops and orders axes as it would.
    out = self._read(self._data.oindex[tuple(slice(k, k + 1) if isinstance(k, int) else k for k in keys)])
    if not any(isinstance(k, int) for k in keys):
      return out
    return out[tuple(0 if isinstance(k, int) else np.arange(len(k)) if isinstance(k, np.ndarray) else slice(None)
                     for k in keys)]

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    if dtype is None or np.dtype(dtype) == self.dtype:
      return self[...]
    return self._read(ts.cast(self._data, np.dtype(dtype)))  # converted chunk by chunk, no stored-dtype copy

  def check(self, layer_sha256: list) -> None:
    """Reads every chunk once (each checked against its CRC32C), a few layers of one shard at a time, and each
    shard's rows of each layer against their SHA-256. layer_sha256: per part, (its array's name, the SHA-256 of
    each layer's rows as _layer_digests wrote them)."""
    for part, (name, digests) in zip(self._parts, layer_sha256):
      step = max(1, _CHECK_BYTES // max(1, part.shape[1] * part.shape[2] * self.dtype.itemsize))
      for start in range(0, part.shape[0], step):
        block = self._read(part[start:min(start + step, part.shape[0])])  # tensorstore refuses slices past the end
        for offset, found in enumerate(_layer_digests(block)):
          if found != digests[start + offset]:
            raise self._corrupt(f"{name}: the rows of layer position {start + offset} do not match their SHA-256 "
                                "(its chunks hold other layers' or rows' values)")


def _axis_key(key, n: int):
  """One axis of a NumPy index -> an int, a unit-step slice or a 1-D int64 array, all within [0, n)."""
  if isinstance(key, slice):
    r = range(n)[key]
    return slice(r.start, r.start + len(r)) if r.step == 1 else np.asarray(r, np.int64)
  if isinstance(key, (int, np.integer)):
    return range(n)[key]  # IndexError past either end, negative from the end, like NumPy
  index = np.arange(n)[np.asarray(key)]  # int or boolean arrays
  if index.ndim != 1:
    raise IndexError(f"Index a stored array with 1-D index arrays (got {index.ndim}-D).")
  return index


@dataclasses.dataclass
class Activations:
  """Extracted activations. array: [num_layers, num_rows, hidden], read lazily from the store (a StoredArray:
  `array[:, rows]` and `np.asarray(array, np.float32)` give NumPy arrays); index: [num_rows] records (text, word,
  token, char_start, char_end) saying what each row is; layers: hidden-state index of each array layer;
  stats: per-layer activation statistics."""
  array: StoredArray
  index: np.ndarray
  layers: list[int]
  manifest: dict
  stats: dict
  path: str

  @property
  def num_rows(self) -> int:
    return len(self.index)


class ActivationStore:
  """A store directory for one (model, texts, extraction settings) identity."""

  def __init__(self, path: str, identity: dict):
    self.path = path
    self.identity = dict(identity, version=MANIFEST_VERSION)
    if os.path.exists(os.path.join(path, "manifest.json")):
      existing = _read_manifest(path)
      differing = sorted(k for k in set(existing) | set(self.identity)
                         if k not in _PROGRESS_KEYS and existing.get(k) != self.identity.get(k))
      if differing:
        details = "; ".join(f"{k}: stored {existing.get(k)!r}, now {self.identity.get(k)!r}" for k in differing)
        raise ValueError(f"The activation store {path} was made for other inputs ({details}). Refusing to mix "
                         "data: use another store directory or delete this one.")
      self.manifest = existing
    else:
      self.manifest = dict(self.identity, complete=False)
      self._save_manifest()

  @property
  def complete(self) -> bool:
    return bool(self.manifest.get("complete"))

  def reload(self) -> None:
    """Rereads the manifest (another process may have completed the store)."""
    self.manifest = _read_manifest(self.path)

  def _save_manifest(self) -> None:
    self.manifest = dict(self.manifest, sha256=_manifest_sha256(self.manifest))
    write_bytes(os.path.join(self.path, "manifest.json"), json.dumps(self.manifest, indent=1, sort_keys=True).encode())

  def _corrupt(self, what: str) -> CorruptStore:
    return _corrupt(self.path, what, self.manifest)

  def _read_checked(self, name: str, expected: str) -> bytes:
    """The bytes of file `name` (relative to the store), whose SHA-256 must be `expected`."""
    try:
      with open(os.path.join(self.path, name), "rb") as f:
        data = f.read()
    except FileNotFoundError as e:
      raise self._corrupt(f"{name} is missing") from e
    if sha256(data) != expected:
      raise self._corrupt(f"{name} does not match its SHA-256 ({len(data)} bytes)")
    return data

  @staticmethod
  def _shard(k: int, kind: str) -> str:
    return f"shards/{k:05d}.{kind}"

  @staticmethod
  def _array(k: int) -> str:
    return f"acts/{k:05d}"

  def has_shard(self, k: int) -> bool:
    return os.path.exists(os.path.join(self.path, self._shard(k, "json")))

  def write_shard(self, k: int, acts: np.ndarray, index: np.ndarray, stats: dict[str, np.ndarray]) -> None:
    """acts: [layers, rows, hidden], stored in its dtype; index: [rows] INDEX_DTYPE; stats: streaming sums (see
    `shard_stats`). The shard's record is written last, after its array, index and statistics."""
    files = {}
    if acts.shape[1]:
      files["zarr.json"] = self._write_array(self._array(k), acts)
    files["index.npy"] = write_bytes(os.path.join(self.path, self._shard(k, "index.npy")), _npy_bytes(index))
    files["stats.npz"] = write_bytes(os.path.join(self.path, self._shard(k, "stats.npz")), _npz_bytes(stats))
    record = {"rows": int(acts.shape[1]), "files": files, "layer_sha256": _layer_digests(acts)}
    write_bytes(os.path.join(self.path, self._shard(k, "json")), json.dumps(record, sort_keys=True).encode())

  def _write_array(self, name: str, acts: np.ndarray) -> str:
    """Writes acts as a zarr v3 array with a CRC32C per chunk; returns the SHA-256 of its metadata (zarr.json)."""
    path = os.path.join(self.path, name)
    layers, rows, hidden = acts.shape
    chunk = [1, int(np.clip(_CHUNK_BYTES // (hidden * acts.dtype.itemsize), 1, rows)), hidden]
    metadata = {"shape": list(acts.shape), "data_type": acts.dtype.name, "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
                "chunk_key_encoding": {"name": "default"},
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}
    # Chunks of zeros are written too: a read treats a missing chunk as damage, not as zeros.
    spec = dict(_array_spec(path), metadata=metadata, store_data_equal_to_fill_value=True)
    try:
      try:  # an existing array (an interrupted write, or another process writing the same shard) is opened and
        # every chunk rewritten, each atomically, so a reader never sees a partial chunk
        array = ts.open(dict(spec, create=True, open=True)).result()
      except ValueError as e:
        if not str(e).startswith("FAILED_PRECONDITION"):
          raise
        array = ts.open(dict(spec, create=True, delete_existing=True)).result()  # a leftover of another shape
      array.write(acts).result()
    except ValueError as e:
      code = re.search(r"os_error_code='(\d+)'", str(e))
      if code and int(code.group(1)) in WRITE_FIXES:
        raise write_error(path, int(code.group(1)), _tensorstore_error(e)) from e
      raise
    with open(os.path.join(path, "zarr.json"), "rb") as f:
      return sha256(f.read())

  def _shard_record(self, k: int) -> dict:
    try:
      with open(os.path.join(self.path, self._shard(k, "json")), "rb") as f:
        return json.loads(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise self._corrupt(f"{self._shard(k, 'json')} is unreadable ({e})") from e

  def finish(self, num_shards: int) -> None:
    """Writes the store's index and statistics from the finished shards and marks it complete."""
    records = [self._shard_record(k) for k in range(num_shards)]
    indices, stats = [], []
    for k, record in enumerate(records):
      index = np.load(io.BytesIO(self._read_checked(self._shard(k, "index.npy"), record["files"]["index.npy"])))
      if len(index) != record["rows"]:
        raise self._corrupt(f"{self._shard(k, 'json')} records {record['rows']} rows but its index has {len(index)}")
      indices.append(index)
      stats.append(dict(np.load(io.BytesIO(self._read_checked(self._shard(k, "stats.npz"),
                                                               record["files"]["stats.npz"])))))
    index = np.concatenate(indices) if indices else np.zeros(0, INDEX_DTYPE)
    summary = json.dumps(summarize_stats(stats, self.identity["layers"]), indent=1, sort_keys=True).encode()
    files = {f"{self._array(k)}/zarr.json": r["files"]["zarr.json"] for k, r in enumerate(records) if r["rows"]}
    files["index.npy"] = write_bytes(os.path.join(self.path, "index.npy"), _npy_bytes(index))
    files["stats.json"] = write_bytes(os.path.join(self.path, "stats.json"), summary)
    self.manifest = dict(self.manifest, complete=True, num_rows=len(index), shard_rows=[r["rows"] for r in records],
                         files=files, layer_sha256=[r["layer_sha256"] for r in records])
    self._save_manifest()

  def load(self, read_all: bool = False) -> Activations:
    """The store's activations, its metadata, index and statistics checked against their SHA-256s; every chunk
    is checked (CRC32C) when it is read, and read_all=True reads every chunk now, so damage anywhere is found
    here rather than at first use. Raises CorruptStore naming what is damaged."""
    if not self.complete:
      raise IncompleteStore(f"The activation store {self.path} is not complete; rerun the extraction to finish it.")
    files = self.manifest["files"]
    index = np.load(io.BytesIO(self._read_checked("index.npy", files["index.npy"])))
    stats = json.loads(self._read_checked("stats.json", files["stats.json"]))
    parts = []
    for k, rows in enumerate(self.manifest["shard_rows"]):
      if rows:
        name = self._array(k)
        self._read_checked(f"{name}/zarr.json", files[f"{name}/zarr.json"])
        try:
          parts.append(ts.open(dict(_array_spec(os.path.join(self.path, name)), open=True,
                                    fill_missing_data_reads=False)).result())
        except ValueError as e:
          if str(e).startswith(_DAMAGE_CODES):
            raise self._corrupt(_tensorstore_error(e)) from e
          raise
    layers = list(self.identity["layers"])
    empty = (len(layers), 0, self.identity.get("hidden_size", 0))
    array = StoredArray(parts, empty, np.dtype(self.identity.get("store_dtype", "float32")), self._corrupt)
    if array.shape[1] != len(index):
      raise self._corrupt(f"its arrays hold {array.shape[1]} rows but index.npy has {len(index)}")
    if read_all:
      array.check([(self._array(k), digests) for k, (digests, rows) in
                   enumerate(zip(self.manifest["layer_sha256"], self.manifest["shard_rows"])) if rows])
    return Activations(array=array, index=index, layers=layers, manifest=self.manifest, stats=stats, path=self.path)


def load_store(path: str, read_all: bool = False) -> Activations:
  """Opens a complete store directory written by extract_activations (see ActivationStore.load for read_all)."""
  if not os.path.exists(os.path.join(path, "manifest.json")):
    raise FileNotFoundError(f"{path} is not an activation store (no manifest.json).")
  manifest = _read_manifest(path)
  return ActivationStore(path, {k: v for k, v in manifest.items() if k not in _PROGRESS_KEYS}).load(read_all)


def shard_stats(acts: np.ndarray) -> dict[str, np.ndarray]:
  """Streaming statistics of acts [layers, rows, hidden]: per-dim sums, squares and max |x|, and row norms."""
  x = acts.astype(np.float64)
  return {"count": np.asarray(acts.shape[1]), "sum": x.sum(1), "sumsq": (x**2).sum(1),
          "maxabs": np.abs(x).max(1) if acts.shape[1] else np.zeros(x.shape[::2]),
          "norm_sum": np.linalg.norm(x, axis=-1).sum(1)}


def summarize_stats(shards: list[dict], layers: list[int], top_k: int = 5) -> dict:
  """Per-layer summary: max |x|, mean row norm, and the outlier dimensions (largest variance share, max |x|)."""
  count = sum(float(s["count"]) for s in shards)
  total = {k: sum(s[k] for s in shards) for k in ("sum", "sumsq", "norm_sum")}
  maxabs = np.max([s["maxabs"] for s in shards], axis=0)
  mean = total["sum"] / max(count, 1)
  var = np.maximum(total["sumsq"] / max(count, 1) - mean**2, 0)
  share = var / np.maximum(var.sum(-1, keepdims=True), 1e-30)
  out = {"num_rows": int(count), "layers": []}
  for i, layer in enumerate(layers):
    top = np.argsort(-share[i])[:top_k]
    out["layers"].append({
        "layer": int(layer), "max_abs": float(maxabs[i].max()), "mean_norm": float(total["norm_sum"][i] / max(count, 1)),
        "top_variance_dims": [int(d) for d in top], "top_variance_share": [float(share[i, d]) for d in top],
        "top_maxabs_dims": [int(d) for d in np.argsort(-maxabs[i])[:top_k]]})
  return out


def paired_rows(a: Activations, b: Activations) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (ia, ib) of the samples both stores hold, matched on (text, word, char span), in a's order.

  Rows of the same text and word cover the same characters whatever the tokenizer; texts one model skipped
  (over its token budget) drop out of both.
  """
  if a.manifest["pooling"] != b.manifest["pooling"] or a.manifest["text_hash"] != b.manifest["text_hash"]:
    raise ValueError("Paired rows need the same texts and pooling in both stores "
                     f"({a.manifest['pooling']}/{a.manifest['text_hash'][:8]} vs "
                     f"{b.manifest['pooling']}/{b.manifest['text_hash'][:8]}).")
  if a.manifest["pooling"] == "tokens":
    raise ValueError("pooling='tokens' rows are tokenizer-specific and do not pair across models; use 'words'.")
  key = lambda ix: list(zip(ix["text"].tolist(), ix["word"].tolist()))
  where_b = {k: i for i, k in enumerate(key(b.index))}
  ia = [i for i, k in enumerate(key(a.index)) if k in where_b]
  ib = [where_b[k] for k in key(a.index) if k in where_b]
  return np.asarray(ia, np.int64), np.asarray(ib, np.int64)
