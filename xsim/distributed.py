"""Multi-process set-up: `jax.distributed` from the environment, so one script runs unchanged everywhere.

Cloud TPU pods and SLURM are detected by `jax.distributed.initialize()` itself. Anything else (a multi-GPU node
with one process per GPU group, or the local CPU launcher in `launch/local.py`) sets XSIM_COORDINATOR
(host:port), XSIM_NUM_PROCESSES and XSIM_PROCESS_ID.
"""
from __future__ import annotations

import logging
import os

import jax


def initialize_from_env() -> bool:
  """Initialises jax.distributed when the environment describes several processes; returns whether it did."""
  if os.environ.get("XSIM_COORDINATOR"):
    jax.distributed.initialize(coordinator_address=os.environ["XSIM_COORDINATOR"],
                               num_processes=int(os.environ["XSIM_NUM_PROCESSES"]),
                               process_id=int(os.environ["XSIM_PROCESS_ID"]))
  elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def run_id() -> str:
  """What the processes of one run share and other runs do not: XSIM_RUN_ID, else the coordinator address (local
  launcher), the SLURM job step, or the TPU pod's worker list; a single process is its own run."""
  for name in ("XSIM_RUN_ID", "XSIM_COORDINATOR"):
    if os.environ.get(name):
      return f"{name}={os.environ[name]}"
  if "SLURM_JOB_ID" in os.environ:
    return f"slurm={os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
  if os.environ.get("TPU_WORKER_HOSTNAMES"):
    return f"tpu={os.environ['TPU_WORKER_HOSTNAMES']}"
  return f"pid={os.getpid()}@{os.uname().nodename}"
