"""A run's workdir: one run at a time (a lock naming its holder), and names that are safe as path components.

The lock is `WORKDIR/.xsim.lock`, created exclusively by process 0 with the holder's host, pid, start time and
run id; the other processes of the same run (same run id, see xsim.distributed.run_id) join it. A second run on
the same workdir stops at once with a message naming the holder, or waits for it with `wait_s`. A lock left by a
killed run on this host (its pid is gone) is taken over with a warning.

Compiled XLA programs are kept in `WORKDIR/cache/xla` (JAX's persistent compilation cache, written by process 0),
so a rerun after a crash or preemption loads them instead of compiling again; a cache folder the user set for JAX
(JAX_COMPILATION_CACHE_DIR) is used instead.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import time

from absl import logging

LOCK_NAME = ".xsim.lock"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def name_error(name, what: str) -> str | None:
  """Why `name` cannot become a file-name component (None if it can): no separators, no '..', no leading dot."""
  if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name or len(name) > 120:
    return (f"{what} {name!r} cannot name files: use letters, digits and . _ + = - only (no '/', no '..', no "
            "leading dot, at most 120 characters)")
  return None


class LockHeld(RuntimeError):
  """Another run holds the workdir."""


def _holder(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')} (run id "
          f"{holder.get('run_id')})")


def _try_create(path: str, info: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  except OSError as e:
    raise OSError(e.errno, f"Cannot write the lock {path} ({e.strerror}): the workdir must be writable; pass a "
                           "writable --workdir (or free space on its disk).") from e
  with os.fdopen(fd, "w") as f:
    json.dump(info, f)
  return True


@contextlib.contextmanager
def lock(workdir: str, run_id: str, process: int, wait_s: float = 0.0, join_s: float = 600.0, poll_s: float = 0.5):
  """Holds WORKDIR's lock for the block. Process 0 creates it; other processes wait (up to join_s) to join it.

  Raises LockHeld naming the holder when another run holds it (after wait_s seconds of waiting).
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"Cannot create the workdir {workdir} ({e.strerror}); pass a writable --workdir.") from e
  path = os.path.join(workdir, LOCK_NAME)
  info = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  deadline = time.time() + max(wait_s, 0.0 if process == 0 else join_s)
  while True:
    holder = _holder(path)
    if process != 0:
      if holder is not None and holder.get("run_id") == run_id:
        break
    elif _try_create(path, info):
      break
    elif holder is not None and holder.get("host") == info["host"] and not _alive(int(holder.get("pid", -1))):
      logging.warning("Taking over the lock of a run that is gone (%s).", _describe(holder))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    if time.time() >= deadline:
      what = _describe(holder) if holder else "unreadable lock file"
      raise LockHeld(f"{workdir} is in use by another xsim run ({what}). Wait for it to finish, use another "
                     f"--workdir, or pass --lock_wait_s to wait; if no such run is alive, delete {path}.")
    time.sleep(poll_s)
  try:
    yield
  finally:
    if process == 0:
      release(workdir)


def release(workdir: str) -> None:
  """Removes WORKDIR's lock if this process holds it (as `lock` does when its block ends)."""
  path = os.path.join(workdir, LOCK_NAME)
  if (_holder(path) or {}).get("pid") == os.getpid():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def compilation_cache(workdir: str, enabled: bool = True):
  """JAX's persistent compilation cache in WORKDIR/cache/xla for the block, unless JAX already has a cache folder
  or not `enabled`. It keeps the programs that took jax_persistent_cache_min_compile_time_secs (1 s by default) or
  more to compile, the model forwards among them. An entry that cannot be read (a run killed while writing it) is
  compiled again, with JAX's warning."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cache
  if not enabled or jax.config.jax_compilation_cache_dir:
    yield
    return
  jax_cache.set_cache_dir(os.path.join(os.path.abspath(workdir), "cache", "xla"))
  jax_cache.reset_cache()  # JAX opens its cache once per process: make it open this folder
  try:
    yield
  finally:
    jax_cache.set_cache_dir(None)
    jax_cache.reset_cache()
