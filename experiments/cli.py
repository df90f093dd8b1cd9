"""What every command shares: a user's error ends with its message, the fix and an exit code, not a traceback.

The exit codes are xsim.errors'. --verbosity=1 (absl's debug level) or XSIM_TRACEBACK=1 in the environment shows
the traceback of a user's error too; an unexpected error always shows it.
"""
from __future__ import annotations

import contextlib
import os
import sys

from absl import logging

from xsim import errors
from xsim.io import WRITE_FIXES


def _exit_code(error: BaseException) -> int | None:
  """The exit code of a user's error; None for anything else (a bug)."""
  if isinstance(error, errors.UserError):
    return error.exit_code
  if isinstance(error, FileNotFoundError):
    return errors.InputError.exit_code
  if isinstance(error, OSError) and error.errno in WRITE_FIXES:  # the write failures a user can fix
    return errors.StorageError.exit_code
  return None


@contextlib.contextmanager
def user_errors():
  """Runs the block; a user's error inside it prints `Error: MESSAGE` on stderr and exits with its code."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    code = _exit_code(e)
    if code is None or os.environ.get("XSIM_TRACEBACK") or logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(f"Error: {e}\n(exit code {code}; XSIM_TRACEBACK=1 or --verbosity=1 shows the traceback)\n")
    sys.stderr.flush()
    raise SystemExit(code) from None
