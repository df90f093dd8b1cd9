"""Verified per-chunk checkpoints of fitted maps, so an interrupted sweep resumes with the chunks it finished.

Layout of `<directory>`:
  settings.json     what was fit, so a resume never mixes runs
  chunk_00012.npz   the chunk's arrays (NumPy, uncompressed), written under a unique temporary name and renamed
  chunk_00012.json  the SHA-256 of that file and what produced it (method, the chunk's pairs), written after it

A chunk counts as finished once its record exists. Each read checks the file against the record; a damaged or
missing chunk is reported (directory, chunk, method, pairs), deleted and counts as not finished, so the sweep fits
it again and the result equals that of an undamaged rerun. A save killed midway leaves only a `.tmp-*` file,
which no later save or read touches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from typing import Optional

import numpy as np

from xsim.activations.store import atomic_write

_SEPARATOR = "/"  # joins nested dict keys into one npz member name: "params/weight"


class ChunkStore:
  """Saves and restores chunk results (nested dicts of NumPy arrays) under one directory."""

  def __init__(self, directory: str, settings: dict):
    """Opens (or creates) the store; refuses a directory written with other settings.

    Args:
      directory: where the chunks live.
      settings: JSON-serializable description of the fit (method, options, pairs, data fingerprint).

    Raises:
      ValueError: the directory holds chunks of a fit with different settings, or unreadable settings.
    """
    self._directory = os.path.abspath(directory)
    os.makedirs(self._directory, exist_ok=True)
    self._method = settings.get("method")
    settings_path = os.path.join(self._directory, "settings.json")
    encoded = json.loads(json.dumps(settings))  # normalizes tuples to lists, as they read back
    if os.path.exists(settings_path):
      try:
        with open(settings_path) as f:
          stored = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint_dir={directory!r}: {settings_path} is unreadable ({e}); delete the "
                         "directory (its maps are refit) or pass a fresh one.") from e
      if stored != encoded:
        changed = sorted(k for k in set(stored) | set(encoded) if stored.get(k) != encoded.get(k))
        raise ValueError(f"checkpoint_dir={directory!r} holds maps fit with other settings (differing: "
                         f"{', '.join(changed)}); pass a fresh directory or delete this one.")
    else:
      atomic_write(settings_path, lambda tmp: _write_text(tmp, json.dumps(encoded, indent=1)))

  def _paths(self, chunk: int) -> tuple[str, str]:
    stem = os.path.join(self._directory, f"chunk_{chunk:05d}")
    return stem + ".npz", stem + ".json"

  def load(self, chunk: int, pairs: np.ndarray) -> Optional[dict]:
    """The verified result of a finished chunk, or None if it is not finished or damaged (then it is logged and
    deleted, to be fit again).

    Args:
      chunk: the chunk's index in the sweep.
      pairs: [T, 2] (source layer, target layer) of the chunk, as given to `save`.
    """
    data_path, record_path = self._paths(chunk)
    if not os.path.exists(record_path):
      return None
    try:
      with open(record_path) as f:
        record = json.load(f)
      if not isinstance(record, dict):
        raise ValueError(f"{os.path.basename(record_path)} is not a chunk record")
      if record.get("pairs") != np.asarray(pairs).tolist():
        raise ValueError(f"its record lists pairs {record.get('pairs')}")
      if _file_sha256(data_path) != record.get("sha256"):
        raise ValueError(f"{os.path.basename(data_path)} does not match its SHA-256")
      with np.load(data_path, allow_pickle=False) as arrays:
        return _unflatten({name: arrays[name] for name in arrays.files})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("Map checkpoint %s, chunk %d (method %s, pairs %s) is damaged (%s: %s); deleting it, it "
                      "will be fit again.", self._directory, chunk, self._method, np.asarray(pairs).tolist(),
                      type(e).__name__, e)
      for path in (record_path, data_path):
        _remove(path)
      return None

  def save(self, chunk: int, pairs: np.ndarray, result: dict) -> None:
    """Writes the chunk's arrays, then the record that marks it finished (both atomically).

    Args:
      chunk: the chunk's index in the sweep.
      pairs: [T, 2] (source layer, target layer) of the chunk.
      result: nested dict of NumPy arrays.
    """
    data_path, record_path = self._paths(chunk)
    digest = []

    def write_arrays(tmp):
      with open(tmp, "wb") as f:
        np.savez(f, **_flatten(result))
        f.flush()
        os.fsync(f.fileno())
      digest.append(_file_sha256(tmp))
    atomic_write(data_path, write_arrays)
    record = {"sha256": digest[0], "method": self._method, "pairs": np.asarray(pairs).tolist()}
    atomic_write(record_path, lambda tmp: _write_text(tmp, json.dumps(record)))


def fingerprint(*arrays: np.ndarray) -> str:
  """A short digest of arrays (here: the standardization statistics), naming the data a fit was made on."""
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"params": {"weight": w}, "r2": r} -> {"params/weight": w, "r2": r}."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, prefix + name + _SEPARATOR))
    else:
      flat[prefix + name] = np.asarray(value)
  return flat


def _unflatten(flat: dict) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split(_SEPARATOR)
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def _write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass
