"""Atomic writes: a write the disk refuses raises WriteError naming the file and the fix, and leaves no partial or
temporary file (a real file-size limit, through the store too, is in tests/activations/test_store.py)."""
import errno
import os

import pytest

from xsim.io import WriteError, atomic_write

FIXES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "ulimit -f",
         errno.EROFS: "writable --workdir", errno.EACCES: "writable --workdir"}


@pytest.mark.parametrize("code", sorted(FIXES))
def test_a_refused_write_names_the_file_and_the_fix(tmp_path, code):
  target = str(tmp_path / "entry.json")

  def write(tmp):
    with open(tmp, "w") as f:
      f.write("partial")
    raise OSError(code, os.strerror(code))

  with pytest.raises(WriteError) as error:
    atomic_write(target, write)
  assert isinstance(error.value, OSError) and error.value.errno == code
  assert target in str(error.value) and FIXES[code] in str(error.value)
  assert os.listdir(tmp_path) == []  # no temporary file left, no partial target


def test_other_write_errors_pass_through(tmp_path):
  def write(tmp):
    raise FileNotFoundError(errno.ENOENT, "gone")
  with pytest.raises(FileNotFoundError):
    atomic_write(str(tmp_path / "x"), write)
  assert os.listdir(tmp_path) == []
