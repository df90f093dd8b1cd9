"""The workdir lock: released by the kernel when its holder dies, race-free, nothing left behind by a failed start."""
import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from experiments import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HOLD_AND_DIE = """
import os, signal, sys
from experiments import workdir
held = workdir.lock(sys.argv[1], "killed-run", 0)  # kept referenced: a collected generator would release it
held.__enter__()
os.kill(os.getpid(), signal.SIGKILL)
"""

_RACE = """
import json, os, sys, time
from experiments import workdir
folder, me, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
  time.sleep(0.001)
try:
  with workdir.lock(folder, me, 0):
    with open(os.path.join(folder, "holders"), "a") as f:
      f.write(f"{me} {time.time()} in\\n")
    time.sleep(1.0)
    with open(os.path.join(folder, "holders"), "a") as f:
      f.write(f"{me} {time.time()} out\\n")
except workdir.LockHeld:
  pass
"""


def _python(code, *args):
  return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT)


def test_a_run_killed_with_sigkill_is_taken_over(tmp_path):
  holder = _python(_HOLD_AND_DIE, tmp_path)
  assert holder.wait(timeout=120) == -9
  assert json.load(open(tmp_path / workdir_lib.LOCK_NAME))["run_id"] == "killed-run"  # its note stays behind
  with workdir_lib.lock(str(tmp_path), "next-run", process=0):
    assert json.load(open(tmp_path / workdir_lib.LOCK_NAME))["run_id"] == "next-run"
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_a_note_naming_a_live_pid_does_not_hold_the_lock(tmp_path):
  """A container's run is pid 1 of its namespace, and so may be the next run, or the pid may be reused: the note
  is information only; the kernel's lock decides."""
  with open(tmp_path / workdir_lib.LOCK_NAME, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid(), "run_id": "old", "started": "then"}, f)
  with workdir_lib.lock(str(tmp_path), "new", process=0):
    assert json.load(open(tmp_path / workdir_lib.LOCK_NAME))["run_id"] == "new"


def test_runs_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
  with open(tmp_path / workdir_lib.LOCK_NAME, "w") as f:  # a stale note, as a killed run leaves it
    json.dump({"host": "elsewhere", "pid": 1, "run_id": "dead", "started": "then"}, f)
  start = time.time() + 3.0
  runs = [_python(_RACE, tmp_path, f"run-{k}", start) for k in range(6)]
  assert [r.wait(timeout=120) for r in runs] == [0] * 6
  events = sorted((float(t), who, what) for who, t, what in (line.split() for line in open(tmp_path / "holders")))
  held = 0
  for _, _, what in events:
    held += 1 if what == "in" else -1
    assert held <= 1, events
  assert len(events) >= 2


def test_a_failed_start_leaves_no_lock_behind(tmp_path, monkeypatch):
  def full_disk(fd, data):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(workdir_lib.os, "write", full_disk)
  with pytest.raises(OSError, match="writable --workdir"):
    with workdir_lib.lock(str(tmp_path), "run", process=0):
      pass
  monkeypatch.undo()
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)
  with workdir_lib.lock(str(tmp_path), "run", process=0):  # and the next run starts
    pass


def test_a_folder_with_files_xsim_did_not_write_is_refused_untouched(tmp_path):
  model = tmp_path / "model"
  model.mkdir()
  (model / "config.json").write_text('{"model_type": "llama"}')
  (model / "model.safetensors").write_bytes(b"weights")
  before = {p.name: p.read_bytes() for p in model.iterdir()}
  with pytest.raises(workdir_lib.errors.ConfigError, match=r"holds files xsim did not write \(model.safetensors\)"):
    with workdir_lib.lock(str(model), "run", process=0):
      pass
  assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # nothing written, nothing removed


def test_a_workdir_of_an_earlier_run_is_accepted_and_marked(tmp_path):
  (tmp_path / "similarity.csv").write_text("model_a\n")
  (tmp_path / "activations").mkdir()
  with workdir_lib.lock(str(tmp_path), "run", process=0):
    pass
  assert (tmp_path / workdir_lib.MARKER).exists()
  (tmp_path / "notes.txt").write_text("a user's file, added later")
  with workdir_lib.lock(str(tmp_path), "run", process=0):  # a marked workdir is xsim's whatever else is there
    pass
