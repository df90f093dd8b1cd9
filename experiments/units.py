"""The comparison work of a study as units, planned from the stages, split across processes, each unit one verified
cache entry.

plan() asks every stage (experiments/stages) for the units each pair and seed needs, in a fixed order (the same on
every process), phase by phase: phase 1 (similarity chunks, maps) before phase 2 (probes, next-token transfer), which
read phase 1's maps back. Under jax.distributed, process p computes the units at positions p, p + P, ... of a
phase (skipping those already cached), then every process waits for the phase's entries, so results do not depend
on which process computed what. Process 0 alone assembles the tables.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

from absl import logging

from experiments import cache, keys
from experiments.study import Pair


@dataclasses.dataclass(frozen=True)
class Unit:
  """One cache entry's worth of a stage's work for a pair. part: the stage's coordinates within the pair and seed
  (e.g. measure, preprocessing, layer rows); seed None: the result is the same for every seed."""
  stage: str
  pair: Pair
  seed: Optional[int]
  part: tuple
  path: str

  @property
  def label(self) -> str:
    seed = [] if self.seed is None else [f"seed {self.seed}"]
    return " ".join([self.stage, self.pair.a, self.pair.b, *map(_readable, self.part), *seed])


def _readable(value) -> str:
  return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


def make_unit(workdir: str, stage: str, pair: Pair, seed: Optional[int], part: tuple, inputs: tuple) -> Unit:
  """The unit of `stage` for (pair, seed, part), its entry cache/STAGE/A__B__PART...-KEY.json keyed by `inputs`:
  everything its result is computed from (the activations' identities, the settings it reads, its seed)."""
  name = "__".join([pair.a, pair.b, *map(_readable, part), *([] if seed is None else [str(seed)])])
  return Unit(stage, pair, seed, part, keys.path(workdir, os.path.join("cache", stage), name, *inputs,
                                                  suffix=".json"))


def plan(stages: Sequence, ctx, pairs: Sequence[Pair]) -> list[list[Unit]]:
  """[phase 1 units, phase 2 units]: every stage's units for every pair and seed, each unit once."""
  phases = [[], []]
  seen = set()
  for phase, units in zip((1, 2), phases):
    for pair in pairs:
      for seed in ctx.study.seeds:
        for stage in (s for s in stages if s.PHASE == phase):
          for unit in stage.units(ctx.settings(stage.NAME), ctx, pair, seed):
            if unit.path not in seen:
              seen.add(unit.path)
              units.append(unit)
  return phases


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


def run_phases(phases: Sequence[Sequence[Unit]], compute: Callable[[Unit], object], workdir: str, process: int,
               num_processes: int) -> dict:
  """Runs this process's share of every phase (waiting for every process after each) and records its work.

  -> on process 0, {"planned": units, "computed": {process: {"assigned", "computed"}}} once every process has
  recorded its work; {} elsewhere.
  """
  computed = 0
  for phase in phases:
    computed += run(phase, compute, workdir, process, num_processes)
    wait(phase, workdir, num_processes)
  record = lambda p: os.path.join(workdir, "cache", "work", f"process-{p}.json")
  assigned_units = sum(len(assigned(phase, process, num_processes)) for phase in phases)
  cache.write(record(process), {"computed": computed, "assigned": assigned_units}, producer=f"process {process}")
  if process != 0:
    return {}
  wait_for_files([record(p) for p in range(num_processes)], workdir, num_processes)
  return {"planned": sum(len(phase) for phase in phases),
          "computed": {str(p): cache.read(record(p)) for p in range(num_processes)}}
