"""A run's workdir: one run at a time (a lock naming its holder), and names that are safe as path components.

The lock is an exclusive flock(2) on `WORKDIR/.xsim.lock`, taken by process 0; the file names the holder's host, pid,
start time and run id, as information only. The kernel releases the lock when its holder dies, however it dies
(kill -9, a container's pid 1, a lost node), so a rerun takes over a dead run's workdir at once and two runs started
together never both hold it. The other processes of the same run (same run id, see xsim.distributed.run_id) join
it by reading the holder's run id. A second run stops at once with a message naming the holder, or waits for it
with `wait_s`. flock works on local disks and on the shared filesystems clusters use where they support it (NFS
maps it to byte-range locks; Lustre needs its `flock` mount option; without lock support, a mount refuses flock and
the run stops naming the workdir).

Compiled XLA programs are kept in `WORKDIR/cache/xla` (JAX's persistent compilation cache, written by process 0),
so a rerun after a crash or preemption loads them instead of compiling again; a cache folder the user set for JAX
(JAX_COMPILATION_CACHE_DIR) is used instead.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import socket
import time

from absl import logging

from experiments import outputs
from xsim import errors

LOCK_NAME = ".xsim.lock"
MARKER = ".xsim-workdir"  # written into every workdir a run uses: the folder is xsim's
# What xsim writes into a workdir: the stores, cache and figures folders, tables, summary, config, report, the ladder.
LAYOUT = re.compile(r"(activations|cache|figures|previous|step-\d+|\.xsim-workdir|\.xsim\.lock|config\.json|"
                    r"summary\.json|report\.(md|html)|ladder\.(md|json)|"
                    + "|".join(re.escape(name) for name in outputs.TABLES) + ")")
# Names become parts of file names that join two of them with a content key (cache/STAGE/A__B__...-KEY.json);
# 80 characters keep those within the 255 that file systems allow.
MAX_NAME = 80
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def name_error(name, what: str) -> str | None:
  """Why `name` cannot become a file-name component (None if it can): no separators, no '..', no leading dot."""
  if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name or len(name) > MAX_NAME:
    return (f"{what} {name!r} cannot name files: use letters, digits and . _ + = - only (no '/', no '..', no "
            f"leading dot, at most {MAX_NAME} characters)")
  return None


def foreign_files(workdir: str) -> list[str]:
  """The entries of an existing workdir that xsim did not write ([] for a workdir a run has marked as xsim's)."""
  if not os.path.isdir(workdir) or os.path.exists(os.path.join(workdir, MARKER)):
    return []
  return sorted(n for n in os.listdir(workdir) if not LAYOUT.fullmatch(n))


class LockHeld(errors.WorkdirInUse):
  """Another run holds the workdir."""


def _holder(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')} (run id "
          f"{holder.get('run_id')})")


_HELD: dict = {}  # workdir -> the open, flock-ed lock file of this process


def _writable_error(path: str, e: OSError) -> OSError:
  return OSError(e.errno, f"Cannot write the lock {path} ({e.strerror}): the workdir must be writable; pass a "
                          "writable --workdir (or free space on its disk).")


def _try_lock(path: str, info: dict) -> bool:
  """Takes the flock on `path`, writes `info` into it and marks the folder as a workdir (MARKER); False when another
  process holds it. A lock file removed or replaced by its releasing holder while we waited is opened again, so two
  holders never share a path."""
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
      raise _writable_error(path, e) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    except OSError as e:
      os.close(fd)
      raise OSError(e.errno, f"Cannot lock {path} ({e.strerror}): the workdir's filesystem does not support "
                             "flock; use a --workdir on a local disk or a filesystem with lock support.") from e
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  previous = _holder(path)
  try:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    with open(os.path.join(os.path.dirname(path), MARKER), "w") as f:
      f.write("This folder is an xsim run's workdir: xsim writes and removes files here.\n")
  except OSError as e:
    _unlock(path, fd)
    raise _writable_error(path, e) from e
  if previous:
    logging.warning("Taking over the lock of a run that is gone (%s).", _describe(previous))
  _HELD[os.path.normpath(os.path.dirname(path))] = fd
  return True


def _unlock(path: str, fd: int) -> None:
  """Removes the lock file, then releases the flock (waiters reopen the path, see _try_lock)."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)
  os.close(fd)


@contextlib.contextmanager
def lock(workdir: str, run_id: str, process: int, wait_s: float = 0.0, join_s: float = 600.0, poll_s: float = 0.5):
  """Holds WORKDIR's lock for the block. Process 0 takes it; other processes wait (up to join_s) to join it.

  Raises LockHeld naming the holder when another run holds it (after wait_s seconds of waiting), and ConfigError
  for a folder that holds files xsim did not write (a model's directory, a home folder), before writing anything.
  """
  foreign = foreign_files(workdir)
  if foreign:
    raise errors.ConfigError(
        f"--workdir {workdir} holds files xsim did not write ({', '.join(foreign[:5])}"
        f"{', ...' if len(foreign) > 5 else ''}); a run writes config.json, tables and caches there and could "
        "overwrite them. Pass a new or empty folder as --workdir (an earlier run's workdir is fine).")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"Cannot create the workdir {workdir} ({e.strerror}); pass a writable --workdir.") from e
  path = os.path.join(workdir, LOCK_NAME)
  info = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  deadline = time.time() + max(wait_s, 0.0 if process == 0 else join_s)
  while True:
    if process == 0:
      if _try_lock(path, info):
        break
    elif (_holder(path) or {}).get("run_id") == run_id:
      break
    if time.time() >= deadline:
      holder = _holder(path)
      what = _describe(holder) if holder else "its holder has not named itself yet"
      raise LockHeld(f"{workdir} is in use by another xsim run ({what}). Wait for it to finish, use another "
                     "--workdir, or pass --lock_wait_s to wait.")
    time.sleep(poll_s)
  try:
    yield
  finally:
    if process == 0:
      release(workdir)


def release(workdir: str) -> None:
  """Releases WORKDIR's lock if this process holds it (as `lock` does when its block ends)."""
  fd = _HELD.pop(os.path.normpath(workdir), None)
  if fd is not None:
    _unlock(os.path.join(workdir, LOCK_NAME), fd)


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
