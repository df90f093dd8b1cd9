"""Content-keyed, verified result entries in a run's workdir.

Every expensive result (a similarity grid chunk, a pair's maps, a probe table, a next-token table) is one JSON
entry named by what it depends on (experiments/keys.py): `cache/STAGE/NAME-KEY.json`, KEY a hash of the inputs and the
settings. An entry records a SHA-256 of its payload and what produced it, is written atomically, and is checked
on every read: a truncated or altered entry is named (path and producer) in the log, deleted and recomputed, so
a damaged cache never becomes a published number.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from absl import logging

from xsim.io import atomic_write


class CorruptEntry(ValueError):
  """A cache entry that cannot be trusted: unreadable, truncated, or its payload does not match its checksum."""


def _checksum(payload) -> str:
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write(path: str, payload, producer: str) -> None:
  """Writes payload (JSON-able) with its checksum, its producer and its own name (NAME-KEY: what it was computed
  from), atomically."""
  entry = {"producer": producer, "written_as": os.path.basename(path), "sha256": _checksum(payload),
           "payload": payload}

  def write_file(tmp):
    with open(tmp, "w") as f:
      json.dump(entry, f, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
  atomic_write(path, write_file)


def read(path: str):
  """The payload of a verified entry; raises CorruptEntry naming the file (and its producer) otherwise: unreadable,
  not matching its checksum, or written for another name (an entry moved or copied onto another unit's path)."""
  try:
    with open(path) as f:
      entry = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CorruptEntry(f"cache entry {path} is unreadable ({type(e).__name__}: {e})") from e
  if not isinstance(entry, dict) or set(entry) != {"producer", "written_as", "sha256", "payload"}:
    raise CorruptEntry(f"cache entry {path} is not an xsim cache entry (keys {sorted(entry)[:5]})"
                       if isinstance(entry, dict) else f"cache entry {path} is not an xsim cache entry")
  if _checksum(entry["payload"]) != entry["sha256"]:
    raise CorruptEntry(f"cache entry {path} (written by {entry['producer']}) does not match its checksum")
  if entry["written_as"] != os.path.basename(path):
    raise CorruptEntry(f"cache entry {path} was written as {entry['written_as']} (by {entry['producer']}): it "
                       "belongs to other inputs")
  return entry["payload"]


def valid(path: str) -> bool:
  """Whether path holds a verified entry; a damaged one is reported, deleted and counts as absent."""
  if not os.path.exists(path):
    return False
  try:
    read(path)
    return True
  except CorruptEntry as e:
    logging.warning("%s; deleting it, it will be recomputed.", e)
    _remove(path)
    return False


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def cached(path: str, compute: Callable[[], Any], producer: str):
  """The verified payload at path, or compute() written there first (a damaged entry is recomputed)."""
  if valid(path):
    return read(path)
  payload = compute()
  write(path, payload, producer)
  return payload
