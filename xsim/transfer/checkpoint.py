"""Per-chunk checkpoints of fitted maps (orbax), so an interrupted sweep resumes with the chunks it finished.

Layout: `<directory>/settings.json` (what was fit, so a resume never mixes runs) and one orbax checkpoint per
finished chunk, `<directory>/chunk_00012`. Orbax writes a checkpoint under a temporary name and renames it when
complete, so a chunk directory exists only once its contents are whole.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class ChunkStore:
  """Saves and restores chunk results (pytrees of NumPy arrays) under one directory."""

  def __init__(self, directory: str, settings: dict):
    """Opens (or creates) the store; refuses a directory written with other settings.

    Args:
      directory: where the chunks live.
      settings: JSON-serializable description of the fit (method, options, pairs, data fingerprint).

    Raises:
      ValueError: the directory holds chunks of a fit with different settings.
    """
    self._directory = os.path.abspath(directory)
    os.makedirs(self._directory, exist_ok=True)
    settings_path = os.path.join(self._directory, "settings.json")
    encoded = json.loads(json.dumps(settings))  # normalizes tuples to lists, as they read back
    if os.path.exists(settings_path):
      with open(settings_path) as f:
        stored = json.load(f)
      if stored != encoded:
        changed = sorted(k for k in set(stored) | set(encoded) if stored.get(k) != encoded.get(k))
        raise ValueError(f"checkpoint_dir={directory!r} holds maps fit with other settings (differing: "
                         f"{', '.join(changed)}); pass a fresh directory or delete this one.")
    else:
      with open(settings_path, "w") as f:
        json.dump(encoded, f, indent=1)
    # Maps are fit by one process (process 0 of a multi-host run): orbax must not wait for the others.
    me = jax.process_index()
    self._checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))

  def _path(self, chunk: int) -> str:
    return os.path.join(self._directory, f"chunk_{chunk:05d}")

  def has(self, chunk: int) -> bool:
    return os.path.isdir(self._path(chunk))

  def load(self, chunk: int) -> dict:
    return self._checkpointer.restore(self._path(chunk))

  def save(self, chunk: int, result: dict) -> None:
    self._checkpointer.save(self._path(chunk), result)
    self._checkpointer.wait_until_finished()


def fingerprint(*arrays: np.ndarray) -> str:
  """A short digest of arrays (here: the standardization statistics), naming the data a fit was made on."""
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]
