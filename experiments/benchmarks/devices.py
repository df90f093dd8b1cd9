"""Where a benchmark's two sides run for its --platform: JAX's backend and torch's device.

A rehearsal (environment XSIM_BENCHMARK_REHEARSAL=1, set by `suite --rehearse`) runs the gpu platform's
arguments, dtypes and code paths on the CPU: a dry run of launch/gpu_benchmarks.sh on a machine without a GPU, so
that a lent device's first try is not spent on a mistake a CPU could have shown. A rehearsal's figures mean
nothing.
"""
from __future__ import annotations

import os

REHEARSAL = "XSIM_BENCHMARK_REHEARSAL"


def rehearsal() -> bool:
  return os.environ.get(REHEARSAL) == "1"


def on_gpu(platform: str) -> bool:
  """Whether --platform `platform` runs on the GPU here (gpu, unless this is a rehearsal)."""
  return platform == "gpu" and not rehearsal()


def jax_platform(platform: str) -> str:
  """JAX_PLATFORMS for the benchmark's processes."""
  return "cuda" if on_gpu(platform) else "cpu"


def torch_device(platform: str) -> str:
  return "cuda" if on_gpu(platform) else "cpu"
