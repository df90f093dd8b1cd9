"""Content keys: every stored result of a run is named by a hash of what it was computed from.

One key function, `key`, and one naming rule, `path`: WORKDIR/FOLDER/NAME-KEY[SUFFIX], the readable NAME for people,
KEY for the inputs (identities of the activations read, the settings used, a code version). A changed input gets
a new name, and an unchanged one is found again. Texts are keyed by xsim.data.text_hash, the stores' own key.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence


def key(*parts) -> str:
  """A short stable hash of JSON-able parts (dict keys sorted; other objects by str)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def path(workdir: str, folder: str, name: str, *inputs, suffix: str = "") -> str:
  """WORKDIR/FOLDER/NAME-KEY[SUFFIX], KEY = key(*inputs); folder may hold '/' (e.g. 'cache/maps')."""
  return os.path.join(workdir, folder, f"{name}-{key(*inputs)}{suffix}")


def texts(items: Sequence[str]) -> str:
  """The key of a list of texts (xsim.data.text_hash: exact strings, in order)."""
  from xsim.data.text import text_hash
  return text_hash(list(items))


def file_digest(file: str, workdir: str) -> str:
  """The SHA-256 of a file's content, computed once per version of the file: kept in WORKDIR/cache/digests under
  the file's full stat signature (device, inode, size, mtime_ns, ctime_ns), which any write, replacement or rename
  onto the path changes (ctime cannot be set back), so a file replaced in place is always hashed again."""
  import hashlib

  from experiments import cache
  st = os.stat(file)
  signature = [os.path.realpath(file), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

  def digest() -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        h.update(block)
    return h.hexdigest()
  return cache.cached(path(workdir, os.path.join("cache", "digests"), os.path.basename(file), signature,
                           suffix=".json"), digest, producer=f"sha256 of {file}")
