"""Verified per-chunk checkpoints of fitted maps (orbax), so an interrupted sweep resumes with the chunks it
finished.

Layout of `<directory>`:
  settings.json     what was fit, so a resume never mixes runs
  chunk_00012/      the chunk's arrays, an orbax checkpoint (written under a temporary name, renamed when whole)
                    holding one safetensors file
  chunk_00012.json  the SHA-256 of those arrays and what produced them (method, the chunk's pairs), written after

Under jax.distributed every process fits its own chunks and checkpoints them alone: orbax's Checkpointer is told
that this process is the only one taking part, and the arrays are host data written by `ArraysHandler`, not by
orbax's NumPy handler (which writes only on process 0, so chunks saved by other processes would come back
empty).

A chunk counts as finished once its record exists. Each read restores the arrays and checks them against the
record; a damaged or missing chunk (or one orbax cannot read) is reported (directory, chunk, method, pairs),
deleted and counts as not finished, so the sweep fits it again and the result equals that of an undamaged rerun.
A save killed midway leaves an orbax temporary directory, or a chunk without its record: the next save of that
chunk removes both first.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy

from xsim.io import write_bytes

_ARRAYS_FILE = "arrays.safetensors"


class ArraysHandler(ocp.CheckpointHandler):
  """Saves a nested dict of NumPy arrays as one safetensors file in the checkpoint directory orbax prepares, on
  whichever process calls it (keys are joined with '/')."""

  def save(self, directory, args: "ArraysSave") -> None:
    """A full disk raises WriteError naming the file (write_bytes)."""
    write_bytes(os.path.join(os.fspath(directory), _ARRAYS_FILE), safetensors.numpy.save(_flatten(args.arrays)))

  def restore(self, directory, args: Optional["ArraysRestore"] = None) -> dict:
    del args
    return _unflatten(safetensors.numpy.load_file(os.path.join(os.fspath(directory), _ARRAYS_FILE)))


@ocp.args.register_with_handler(ArraysHandler, for_save=True)
@dataclasses.dataclass
class ArraysSave(ocp.args.CheckpointArgs):
  arrays: dict


@ocp.args.register_with_handler(ArraysHandler, for_restore=True)
@dataclasses.dataclass
class ArraysRestore(ocp.args.CheckpointArgs):
  pass


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
      write_bytes(settings_path, json.dumps(encoded, indent=1).encode())
    # Each process fits its own chunks (the runner splits pairs across processes): orbax must not wait for others.
    me = jax.process_index()
    self._checkpointer = ocp.Checkpointer(
        ArraysHandler(), multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"xsim_chunks_process{me}"))

  def _paths(self, chunk: int) -> tuple[str, str]:
    stem = os.path.join(self._directory, f"chunk_{chunk:05d}")
    return stem, stem + ".json"

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
      result = self._checkpointer.restore(data_path, args=ArraysRestore())
      if _tree_sha256(result) != record.get("sha256"):
        raise ValueError(f"the arrays of {os.path.basename(data_path)} do not match their SHA-256")
      return result
    except Exception as e:  # orbax and tensorstore raise many kinds; any of them means the chunk is not usable
      logging.warning("Map checkpoint %s, chunk %d (method %s, pairs %s) is damaged (%s: %s); deleting it, it "
                      "will be fit again.", self._directory, chunk, self._method, np.asarray(pairs).tolist(),
                      type(e).__name__, str(e)[:300])
      self._remove(chunk)
      return None

  def _remove(self, chunk: int) -> None:
    """Deletes a chunk's record, its arrays and any temporary directory a killed save left."""
    data_path, record_path = self._paths(chunk)
    if os.path.exists(record_path):
      os.remove(record_path)
    for path in [data_path] + glob.glob(data_path + ".orbax-checkpoint-tmp*"):
      shutil.rmtree(path, ignore_errors=True)

  def save(self, chunk: int, pairs: np.ndarray, result: dict) -> None:
    """Writes the chunk's arrays, then the record that marks it finished (both atomically).

    Args:
      chunk: the chunk's index in the sweep.
      pairs: [T, 2] (source layer, target layer) of the chunk.
      result: nested dict of NumPy arrays.
    """
    data_path, record_path = self._paths(chunk)
    self._remove(chunk)
    self._checkpointer.save(data_path, args=ArraysSave(result))
    record = {"sha256": _tree_sha256(result), "method": self._method, "pairs": np.asarray(pairs).tolist()}
    write_bytes(record_path, json.dumps(record).encode())


def fingerprint(*arrays: np.ndarray) -> str:
  """A short digest of arrays (here: the standardization statistics), naming the data a fit was made on."""
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def _tree_sha256(tree) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes, in path order."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype.str}|{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"params": {"weight": w}} -> {"params/weight": w} (contiguous, as safetensors writes them)."""
  flat = {}
  for key, value in tree.items():
    if not isinstance(key, str) or "/" in key or not key:
      raise ValueError(f"chunk result key {key!r} must be a non-empty string without '/'.")
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[prefix + key] = np.ascontiguousarray(value)
  return flat


def _unflatten(flat: dict) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree
