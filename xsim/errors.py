"""xsim's error classes: problems with a user's input or environment, each named in its message with the fix.

Commands print such an error's message and exit with its code, without a traceback (experiments/cli.py):
  0  done
  1  an unexpected error: a bug, reported with its traceback
  2  a usage or config error (ConfigError)
  3  bad input: a missing, unreadable or impossible model, data or result file, or inputs that give no usable
     rows (InputError; FileNotFoundError too)
  4  the workdir is in use by another run (WorkdirInUse)
  5  the disk: full, over quota, read-only or not permitted (StorageError)
  128 + N  stopped by signal N (SIGTERM: 143; the run's finished work is kept)
"""
from __future__ import annotations


class UserError(Exception):
  """A problem the user can fix, named with the fix in its message."""
  exit_code = 1


class ConfigError(UserError, ValueError):
  """An invalid config or command line."""
  exit_code = 2


class InputError(UserError, ValueError):
  """A model, data or result file that is missing, unreadable or impossible, or inputs that give no usable rows."""
  exit_code = 3


class WorkdirInUse(UserError, RuntimeError):
  """Another run holds the workdir."""
  exit_code = 4


class StorageError(UserError, OSError):
  """A file could not be written: disk full, quota, file-size limit, read-only or not permitted."""
  exit_code = 5
