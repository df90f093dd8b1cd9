"""The comparison work of a study as units, split across processes, each unit one verified cache entry.

Phase 1: "similarity" units (a pair, measure, preprocessing, seed and chunk of the source's layers) and "maps"
units (a pair's maps and floors for one seed). Phase 2 reads the maps back: "probes" units (a pair, seed and
task) and "next_token" units (a pair and seed). Under jax.distributed, process p computes the units at positions
p, p + P, ... of the planned list (skipping those already cached), then every process waits for the phase's
entries, so results do not depend on which process computed what. Process 0 alone assembles the tables.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

from absl import logging

from experiments import cache
from experiments.study import Pair

KINDS = ("similarity", "maps", "probes", "next_token")


@dataclasses.dataclass(frozen=True)
class Unit:
  """One cache entry's worth of comparison work. seed None: the result is the same for every seed."""
  kind: str
  pair: Pair
  seed: Optional[int]
  path: str
  measure: str = ""
  preprocess: str = ""
  rows: tuple = ()  # (start, stop) positions of the source's layers (similarity units)
  task: str = ""

  @property
  def label(self) -> str:
    parts = [self.kind, self.pair.a, self.pair.b, self.measure, self.preprocess, self.task,
             f"layers {self.rows[0]}-{self.rows[1] - 1}" if self.rows else "",
             "" if self.seed is None else f"seed {self.seed}"]
    return " ".join(p for p in parts if p)


def entry_path(workdir: str, kind: str, name_parts: Sequence[str], *identity) -> str:
  """cache/KIND/A__B__...-KEY.json: readable names, KEY from everything the entry depends on."""
  return os.path.join(workdir, "cache", kind, "__".join(name_parts) + f"-{cache.key(*identity)}.json")


def chunks(num_layers: int, per_unit: int) -> list[tuple[int, int]]:
  """[start, stop) ranges of at most per_unit layers covering 0..num_layers."""
  return [(s, min(s + per_unit, num_layers)) for s in range(0, num_layers, per_unit)]


def assigned(units: Sequence[Unit], process: int, num_processes: int) -> list[Unit]:
  """This process's share: every num_processes-th unit of the planned order."""
  return [u for k, u in enumerate(units) if k % num_processes == process]


def failure_path(workdir: str, process: int) -> str:
  return os.path.join(workdir, "cache", "failures", f"process-{process}.json")


def run(units: Sequence[Unit], compute: Callable[[Unit], object], workdir: str, process: int,
        num_processes: int) -> int:
  """Computes this process's missing units; returns how many it computed. A failure is recorded for the other
  processes (see wait) before it propagates."""
  computed = 0
  mine = [u for u in assigned(units, process, num_processes) if not cache.valid(u.path)]
  logging.info("Process %d: %d of %d units to compute.", process, len(mine), len(units))
  for k, unit in enumerate(mine):
    start = time.time()
    try:
      payload = compute(unit)
    except BaseException as e:
      cache.write(failure_path(workdir, process), {"unit": unit.label, "error": f"{type(e).__name__}: {e}"},
                  producer=f"process {process}")
      raise
    cache.write(unit.path, payload, producer=unit.label)
    computed += 1
    logging.info("[%d/%d] %s in %.1fs.", k + 1, len(mine), unit.label, time.time() - start)
  return computed


def wait(units: Sequence[Unit], workdir: str, num_processes: int, timeout_s: float = 24 * 3600) -> None:
  """Returns once every unit's entry is there; raises if another process recorded a failure, or on timeout."""
  wait_for_files([u.path for u in units], workdir, num_processes, timeout_s, [u.label for u in units])


def wait_for_files(paths: Sequence[str], workdir: str, num_processes: int, timeout_s: float = 24 * 3600,
                   labels: Optional[Sequence[str]] = None, poll_s: float = 1.0) -> None:
  """Returns once every path holds a verified entry; raises if a process recorded a failure, or on timeout."""
  deadline = time.time() + timeout_s
  pending = list(zip(paths, labels or paths))
  while True:
    pending = [(p, label) for p, label in pending if not cache.valid(p)]
    if not pending:
      return
    for p in range(num_processes):
      if os.path.exists(failure_path(workdir, p)):
        failure = cache.read(failure_path(workdir, p))
        raise RuntimeError(f"process {p} failed on {failure['unit']}: {failure['error']}")
    if time.time() > deadline:
      raise TimeoutError(f"{len(pending)} results never appeared (first: {pending[0][1]}); did a process die?")
    time.sleep(poll_s)
