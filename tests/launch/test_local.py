"""launch.local: N local processes as a cluster would start them."""
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = """
import os, signal, sys, time
me = os.environ["XSIM_PROCESS_ID"]
def stop(signum, frame):
  open(os.path.join(sys.argv[1], "stopped-" + me), "w").close()
  sys.exit(3)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(sys.argv[1], "ready-" + me), "w").close()
time.sleep(120)
"""


def test_a_sigterm_to_the_launcher_reaches_every_process(tmp_path):
  """As a scheduler's would: each process gets the SIGTERM (and can stop cleanly); the launcher returns their code."""
  launcher = subprocess.Popen([sys.executable, "-m", "launch.local", "--num_processes", "2", "--", "-c", CHILD,
                               str(tmp_path)], cwd=ROOT)
  deadline = time.time() + 60
  while not all(os.path.exists(tmp_path / f"ready-{i}") for i in range(2)):
    assert time.time() < deadline and launcher.poll() is None
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=60) == 3
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stopped")) == ["stopped-0", "stopped-1"]
