"""Runs a Python module as N local processes joined by jax.distributed (CPU), as a cluster would.

  python -m launch.local --num_processes 2 -- -m experiments.run --config experiments/configs/demo.py --workdir runs/x

Each process gets XSIM_COORDINATOR / XSIM_NUM_PROCESSES / XSIM_PROCESS_ID (read by xsim.distributed) and its own
share of the CPU devices. The exit code is the first non-zero child's. A SIGTERM to the launcher goes on to every
child (as a scheduler's would), so a run stops cleanly and releases its workdir.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(args: list[str], num_processes: int, devices_per_process: int = 1, timeout_s: float = 1800) -> int:
  """Starts `python *args` num_processes times on localhost and waits; returns the first failing exit code."""
  port = free_port()
  procs = []
  for i in range(num_processes):
    env = dict(os.environ, XSIM_COORDINATOR=f"localhost:{port}", XSIM_NUM_PROCESSES=str(num_processes),
               XSIM_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    procs.append(subprocess.Popen([sys.executable, *args], env=env))
  forward = lambda signum, _frame: [p.send_signal(signum) for p in procs if p.poll() is None]
  previous = signal.signal(signal.SIGTERM, forward)
  codes = []
  try:
    for p in procs:
      try:
        codes.append(p.wait(timeout=timeout_s))
      except subprocess.TimeoutExpired:
        for q in procs:
          q.kill()
        raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  return next((c for c in codes if c), 0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the python arguments, e.g. -m module ...")
  ns = parser.parse_args()
  command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
  sys.exit(launch(command, ns.num_processes, ns.devices_per_process))


if __name__ == "__main__":
  main()
