"""Atomic, synced writes: readers never see a partial file, and a write that fails for lack of space, quota,
file-size limit or permission raises WriteError naming the file and the fix (e.g. on a full disk)."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from typing import Any, Callable, Optional

from xsim.errors import StorageError

# The errno of each write failure a user can fix, and how.
WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free space there or choose a --workdir on another disk",
    errno.EDQUOT: "the disk quota is used up: free space there or choose a --workdir on another disk",
    errno.EFBIG: "the file is over the process's file-size limit: raise it (`ulimit -f unlimited`)",
    errno.EROFS: "the file system is read-only: choose a writable --workdir",
    errno.EACCES: "permission denied: choose a writable --workdir",
    errno.EPERM: "permission denied: choose a writable --workdir",
}


class WriteError(StorageError):
  """A file could not be written (disk full, quota, file-size limit, read-only or not permitted); the message
  names the file and the fix. errno is the original one."""


def write_error(path: str, code: Optional[int], detail: str) -> WriteError:
  """The WriteError for a failed write of `path` with errno `code` (None: unknown) and the system's `detail`."""
  fix = WRITE_FIXES.get(code, "check free space (df), the file-size limit (ulimit -f) and that --workdir is "
                              "writable")
  message = f"Could not write {path}: {detail}; {fix}."
  return WriteError(code, message) if code is not None else WriteError(message)


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
  """Calls write(tmp_path), then renames tmp onto path, so readers never see a partial file. A write that fails
  for lack of space, quota, file-size limit or permission (or an OSError without errno, as NumPy's tofile raises)
  raises WriteError naming `path` and the fix; the temporary file is removed whatever happens."""
  tmp = None
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    write(tmp)
    os.replace(tmp, path)
  except WriteError:
    raise
  except OSError as e:
    if e.errno in WRITE_FIXES or e.errno is None:
      raise write_error(path, e.errno, e.strerror or str(e)) from e
    raise
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def sha256(data: bytes) -> str:
  """The hex SHA-256 of data: the checksum write_bytes returns."""
  return hashlib.sha256(data).hexdigest()


def write_bytes(path: str, data: bytes) -> str:
  """Writes data atomically (synced to disk before the rename) and returns its SHA-256."""
  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  atomic_write(path, write)
  return sha256(data)
