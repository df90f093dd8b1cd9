"""Fault injection: a small study killed at random points, its stored files damaged, run twice at once, on a
read-only or full disk. Each case ends with the tables of an uninterrupted run, or with an error that names the
file; never exit 0 with other numbers. The slow set runs 20 kills, 20 damaged files and the full disk; CI runs
one kill, one SIGTERM, two damaged files, two runs at once and the read-only workdir."""
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLES = ("similarity.csv", "transfer.csv", "probes.csv")
# What a run writes as its outputs (rewritten by every run) rather than reads back.
OUTPUTS = TABLES + ("summary.json", "config.json", "report.md", "report.html")


def command(model_root, workdir, flags=()):
  return [sys.executable, "-m", "experiments.run", f"--config=tests/experiments/fault_config.py:{model_root}",
          f"--workdir={workdir}", *flags]


def start(model_root, workdir, flags=()):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.Popen(command(model_root, workdir, flags), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(process, timeout=900):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out + err


def tables(workdir):
  return {t: open(os.path.join(workdir, t)).read() for t in TABLES}


@pytest.fixture(scope="module")
def reference(model_root, tmp_path_factory):
  """An uninterrupted run: its tables and how long it took."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  begin = time.time()
  code, log = finish(start(model_root, workdir))
  assert code == 0, log[-3000:]
  return workdir, tables(workdir), time.time() - begin


def killed_and_resumed(model_root, workdir, delay):
  process = start(model_root, workdir)
  time.sleep(delay)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  code, log = finish(start(model_root, workdir))
  assert code == 0, log[-3000:]
  return tables(workdir)


def kill_points(count, total, seed=0):
  return sorted(random.Random(seed).uniform(1.0, total) for _ in range(count))


def test_a_killed_run_resumes_to_the_same_tables(reference, model_root, tmp_path):
  _, expected, total = reference
  delay = kill_points(1, 0.9 * total)[0]
  assert killed_and_resumed(model_root, str(tmp_path), delay) == expected


def test_a_terminated_run_releases_its_lock_and_resumes_to_the_same_tables(reference, model_root, tmp_path):
  """SIGTERM, as a scheduler sends before preempting: the run stops naming the fix and leaves no lock behind, so
  a requeued run on another host (where the holder's pid cannot be checked) starts at once."""
  _, expected, _ = reference
  process = start(model_root, str(tmp_path), ["--stop_grace_s=1"])  # unwound, or ended 1 s later (see run.py)
  while not os.path.exists(tmp_path / "activations"):  # extracting: the units take several seconds more
    assert process.poll() is None, finish(process)[1][-2000:]
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  code, log = finish(process)
  assert code != 0 and "stopped by SIGTERM" in log and "rerun the same command to resume" in log, log[-2000:]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)
  code, log = finish(start(model_root, str(tmp_path)))
  assert code == 0 and "Taking over the lock" not in log, log[-2000:]
  assert tables(str(tmp_path)) == expected


@pytest.mark.slow
def test_twenty_kills_resume_to_the_same_tables(reference, model_root, tmp_path):
  _, expected, total = reference
  workdir = str(tmp_path)
  for delay in kill_points(20, 0.9 * total, seed=1):
    shutil.rmtree(workdir, ignore_errors=True)
    assert killed_and_resumed(model_root, workdir, delay) == expected, delay


def stored_files(workdir):
  """Every file a rerun reads back (stores, cache entries, map checkpoints), not the outputs it rewrites."""
  found = []
  for folder, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.relpath(path, workdir) not in OUTPUTS and not os.path.relpath(path, workdir).startswith("figures"):
        found.append(path)
  return sorted(found)


def damage(path, rng):
  """Flips up to 64 bytes in the middle of the file (or truncates an empty-ish one)."""
  data = bytearray(open(path, "rb").read())
  if len(data) < 4:
    open(path, "wb").close()
    return
  start = rng.randrange(len(data) // 4, max(len(data) // 4 + 1, 3 * len(data) // 4))
  for k in range(start, min(start + 64, len(data))):
    data[k] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def damaged_run(reference, model_root, tmp_path, rng):
  """Copies the reference run, damages one random stored file and reruns: the same tables or an error naming it."""
  source, expected, _ = reference
  workdir = str(tmp_path / f"damaged-{rng.random():.6f}")
  shutil.copytree(source, workdir)
  victim = rng.choice(stored_files(workdir))
  damage(victim, rng)
  code, log = finish(start(model_root, workdir))
  relative = os.path.relpath(victim, workdir)
  if code == 0:
    assert tables(workdir) == expected, f"exit 0 with other numbers after damaging {relative}"
  else:
    named = {relative, os.path.dirname(relative), os.path.basename(victim)}
    assert any(part and part in log for part in named), f"error does not name {relative}:\n{log[-2000:]}"
  return relative, code


@pytest.mark.parametrize("case", range(2))
def test_damaged_files_are_recomputed_or_named(reference, model_root, tmp_path, case):
  damaged_run(reference, model_root, tmp_path, random.Random(100 + case))


@pytest.mark.slow
def test_twenty_damaged_files(reference, model_root, tmp_path):
  outcomes = [damaged_run(reference, model_root, tmp_path, random.Random(200 + k)) for k in range(20)]
  print("damaged file -> exit code:", outcomes)


def test_two_runs_on_one_workdir_one_stops_naming_the_holder(reference, model_root, tmp_path):
  _, expected, _ = reference
  first = start(model_root, str(tmp_path))
  while not os.path.exists(tmp_path / workdir_lib.LOCK_NAME):
    assert first.poll() is None, finish(first)[1][-2000:]
    time.sleep(0.2)
  code, log = finish(start(model_root, str(tmp_path)))
  assert code != 0 and "is in use by another xsim run" in log and f"pid {first.pid}" in log
  assert code == 4 and "Traceback" not in log  # the workdir in use: its message, exit code 4
  code, log = finish(first)
  assert code == 0, log[-2000:]
  assert tables(str(tmp_path)) == expected


@contextlib.contextmanager
def tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                    capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); this machine does not allow it")
  try:
    yield str(path)
  finally:
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.slow
def test_a_full_disk_stops_naming_the_file_and_a_rerun_recovers(reference, model_root, tmp_path):
  _, expected, _ = reference
  with tmpfs(tmp_path / "small", "400k") as workdir:  # fills up in the comparison stage
    code, log = finish(start(model_root, workdir))
    assert code != 0 and "No space left" in log and workdir in log, log[-2000:]
    assert not any(n == "similarity.csv" for n in os.listdir(workdir))
    subprocess.run(["mount", "-o", "remount,size=64m", workdir], check=True)
    code, log = finish(start(model_root, workdir))
    assert code == 0, log[-2000:]
    assert tables(workdir) == expected


def test_a_read_only_workdir_is_named(reference, model_root, tmp_path):
  with tmpfs(tmp_path / "ro", "1m") as workdir:
    subprocess.run(["mount", "-o", "remount,ro", workdir], check=True)
    code, log = finish(start(model_root, workdir))
    assert code != 0 and workdir in log and "writable" in log, log[-2000:]
