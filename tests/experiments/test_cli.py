"""A user's error ends a command with its message and exit code (xsim.errors), not a traceback; a bug keeps it."""
import errno

import pytest

from experiments import cli, workdir
from xsim import errors
from xsim.io import WriteError


@pytest.mark.parametrize("error, code", [
    (errors.ConfigError("Invalid config: x"), 2), (errors.InputError("no rows"), 3),
    (FileNotFoundError(errno.ENOENT, "No model directory"), 3), (workdir.LockHeld("in use"), 4),
    (WriteError(errno.ENOSPC, "Could not write f: disk full"), 5), (OSError(errno.EROFS, "read-only"), 5)])
def test_user_errors_print_their_message_and_exit_with_their_code(error, code, capsys, monkeypatch):
  monkeypatch.delenv("XSIM_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as exit_:
    with cli.user_errors():
      raise error
  assert exit_.value.code == code
  err = capsys.readouterr().err
  assert err.startswith(f"Error: {error}") and "Traceback" not in err


def test_a_bug_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    with cli.user_errors():
      1 / 0  # pylint: disable=pointless-statement


def test_xsim_traceback_shows_a_user_error_whole(monkeypatch):
  monkeypatch.setenv("XSIM_TRACEBACK", "1")
  with pytest.raises(errors.ConfigError):
    with cli.user_errors():
      raise errors.ConfigError("Invalid config: x")
