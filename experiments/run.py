r"""Runs a study from a config: extraction, similarity for all layer pairs, transfer maps, probes, report.

  python -m experiments.run --config experiments/configs/demo.py --workdir runs/demo
  python -m experiments.run --config experiments/configs/demo.py --config.data.num_texts=128 --workdir runs/small
  python -m experiments.run --config experiments/configs/demo.py:qwen --config.models.0.dtype=bfloat16 ...

The stages, in order: validate the config (before any work), take the workdir's lock, extract every model's
activations (experiments/extraction.py), compute the comparison units (experiments/units.py: similarity chunks and
maps, then probes and next-token transfer), turn them into tables and headline numbers (experiments/tables.py)
and render the report (experiments/report.py). Every expensive result is a content-keyed, verified entry in the
workdir, written atomically, so a rerun after a crash or with a changed config does only what is missing. Under
jax.distributed (see launch/), every process extracts its share of texts and computes its share of the units on
its own devices; process 0 alone writes the tables and the report.
"""
from __future__ import annotations

import datetime
import logging as logging_lib
import os
import platform
import re
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import (cache, extraction, next_token, results, similarity_step, study, tables, transfer_step, units,
                         workdir as workdir_lib)
from experiments.validate import override_error, validate_config, validate_depths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiments/configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for caches, tables, plots and the report.")
_LOCK_WAIT = flags.DEFINE_float("lock_wait_s", 0.0, "Seconds to wait for another run holding --workdir.")
_STOP_GRACE = flags.DEFINE_float("stop_grace_s", 10.0, "Seconds a run stopped by SIGTERM may take to unwind before "
                                 "it exits anyway, its lock released (keep below the scheduler's grace period).")
_XLA_CACHE = flags.DEFINE_bool("xla_cache", True, "Keep compiled programs in WORKDIR/cache/xla so a rerun loads "
                               "them (JAX_COMPILATION_CACHE_DIR, when set, is used instead).")
# Loaded models are kept for later steps while their parameters fit this share of the machine's memory.
RESIDENT_MEMORY_SHARE = 0.3


def _memory_budget() -> int:
  return int(RESIDENT_MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class Study:
  """Everything the stages need from a config, read once into plain records and settings."""

  def __init__(self, cfg):
    self.models = [study.ModelSpec.from_config(m) for m in cfg.models]
    self.chosen_pairs = cfg.get("pairs")
    self.random_init = bool(cfg.baselines.random_init)
    self.seeds = [int(s) for s in cfg.seeds]
    self.data = dict(cfg.data)
    self.extraction = extraction.ExtractionSettings.from_config(cfg.extraction)
    self.similarity = similarity_step.Settings.from_config(cfg.similarity)
    self.transfer = transfer_step.Settings.from_config(cfg.transfer)
    self.next_token = next_token.Settings.from_config(cfg.transfer.get("next_token"))
    self.tasks = list(cfg.probes.tasks)
    self.num_examples = int(cfg.probes.num_examples)
    self.mesh_shape = (int(cfg.mesh.data), int(cfg.mesh.model))
    self.layers_per_unit = int(cfg.mesh.get("layers_per_unit", 16))


def plan_units(s: Study, pairs, stores, workdir: str) -> tuple[list, list]:
  """(phase 1, phase 2) units of a run, in a fixed order (the same on every process)."""
  first, second = [], []
  for pair in pairs:
    seeds = s.seeds
    for seed in seeds:
      store_a, store_b = stores.get(pair.a, seed), stores.get(pair.b, seed)
      identity = (store_a.manifest, store_b.manifest)
      for measure in s.similarity.measures:
        settings, seeded = s.similarity.depends_on(measure, pair.is_random)
        if not seeded and seed != seeds[0]:
          continue
        for prep in s.similarity.preprocess:
          for rows in units.chunks(len(store_a.layers), s.layers_per_unit):
            first.append(units.Unit(
                "similarity", pair, seed if seeded else None, measure=measure, preprocess=prep, rows=rows,
                path=units.entry_path(workdir, "similarity", (pair.a, pair.b, measure, prep, f"{rows[0]}-{rows[1]}"),
                                      *identity, measure, prep, settings, rows, seed if seeded else None)))
      maps_identity = (*identity, s.transfer.fit_options(seed), transfer_step.SOLVERS_VERSION)
      first.append(units.Unit("maps", pair, seed, path=units.entry_path(
          workdir, "maps", (pair.a, pair.b, str(seed)), *maps_identity, s.similarity.min_layer,
          s.similarity.ci_resamples)))
      if pair.is_random:
        continue
      for task in s.tasks:
        second.append(units.Unit("probes", pair, seed, task=task, path=units.entry_path(
            workdir, "probes", (pair.a, pair.b, task, str(seed)), *maps_identity,
            stores.tasks[(task, pair.a)].manifest, stores.tasks[(task, pair.b)].manifest, s.similarity.min_layer,
            s.similarity.ci_resamples, transfer_step.PROBES_VERSION)))
      if s.next_token.enabled:
        second.append(units.Unit("next_token", pair, seed, path=units.entry_path(
            workdir, "next_token", (pair.a, pair.b, str(seed)), *maps_identity,
            s.next_token, s.extraction.identity(), results.PROBE_COLUMNS, s.similarity.min_layer,
            s.similarity.ci_resamples, transfer_step.PROBES_VERSION)))
  return first, second


class Computer:
  """Computes one unit from the stores; keeps the last pair's paired arrays for the next unit of that pair."""

  def __init__(self, s: Study, stores, tasks, texts, workdir, mesh, models, samples):
    self.s, self.stores, self.tasks, self.texts = s, stores, tasks, texts
    self.workdir, self.mesh, self.models, self.samples = workdir, mesh, models, samples
    self._data = (None, None)

  def data(self, pair, seed):
    key = (pair, self.stores.get(pair.b, seed).path)  # a real pair's arrays are the same for every seed
    if self._data[0] != key:
      self._data = (key, extraction.pair_data(self.stores, pair, seed))
    return self._data[1]

  def __call__(self, unit):
    s, seed = self.s, unit.seed if unit.seed is not None else self.s.seeds[0]
    data = self.data(unit.pair, seed)
    if unit.kind == "similarity":
      return similarity_step.compute(data, unit.measure, unit.preprocess, seed, unit.rows, s.similarity, self.mesh)
    if unit.kind == "maps":
      return transfer_step.compute_maps(data, s.transfer, seed, self.workdir, s.similarity.min_layer,
                                        s.similarity.ci_resamples, self.mesh)
    if unit.kind == "probes":
      return transfer_step.compute_task_probes(data, s.transfer, seed, self.workdir, self.tasks[unit.task],
                                               self.stores.tasks[(unit.task, unit.pair.a)],
                                               self.stores.tasks[(unit.task, unit.pair.b)], s.similarity.min_layer,
                                               s.similarity.ci_resamples, self.mesh)
    return next_token.compute(data, self.samples[unit.pair.b], s.transfer, s.next_token, s.extraction, seed,
                              self.workdir, self.models, s.similarity.min_layer, s.similarity.ci_resamples,
                              self.mesh)


def read_info(spec: study.ModelSpec) -> extraction.ModelInfo:
  """A model's family and shape from its configuration alone (no weights are read)."""
  from xsim.models import read_config
  config = read_config(spec.path)
  return extraction.ModelInfo(spec.name, study.family_of(spec, config.family), config.num_layers, config.hidden_size)


def environment() -> dict:
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
  except OSError:
    commit = ""
  import flax
  import transformers
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "xsim_commit": commit, "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "transformers": transformers.__version__,
          "devices": [str(d) for d in jax.devices()], "processes": jax.process_count()}


def compare(first, second, compute, workdir: str, process: int, num_processes: int) -> dict:
  """Runs this process's share of both phases (waiting for every process after each) and records its work.

  -> on process 0, {"planned": units, "computed": {process: {"assigned", "computed"}}} once every process has
  recorded its work; {} elsewhere.
  """
  computed = 0
  for phase in (first, second):
    computed += units.run(phase, compute, workdir, process, num_processes)
    units.wait(phase, workdir, num_processes)
  record = lambda p: os.path.join(workdir, "cache", "work", f"process-{p}.json")
  assigned = len(units.assigned(first, process, num_processes)) + len(units.assigned(second, process, num_processes))
  cache.write(record(process), {"computed": computed, "assigned": assigned}, producer=f"process {process}")
  if process != 0:
    return {}
  units.wait_for_files([record(p) for p in range(num_processes)], workdir, num_processes)
  return {"planned": len(first) + len(second),
          "computed": {str(p): cache.read(record(p)) for p in range(num_processes)}}


def run(cfg, workdir: str, lock_wait_s: float = 0.0, xla_cache: bool = True) -> dict:
  """Runs the whole study; returns the summary written to workdir/summary.json (process 0; {} elsewhere).
  xla_cache: keep compiled programs in workdir/cache/xla (see workdir.compilation_cache)."""
  from xsim import activations as xa
  from xsim import data as xdata
  from xsim import distributed
  distributed.initialize_from_env()
  validate_config(cfg)
  s = Study(cfg)
  process, num_processes = jax.process_index(), jax.process_count()
  with workdir_lib.lock(workdir, distributed.run_id(), process, wait_s=lock_wait_s), \
       workdir_lib.compilation_cache(workdir, xla_cache):
    if os.path.exists(units.failure_path(workdir, process)):
      os.remove(units.failure_path(workdir, process))
    mesh = xa.make_mesh(*s.mesh_shape)
    texts = study.load_texts(s.data["source"], s.data["num_texts"], s.data["max_words"], s.data["min_chars"],
                             s.data["seed"])
    logging.info("%d texts from %s.", len(texts), s.data["source"])
    tasks = {name: xdata.load_task(name, num_examples=s.num_examples, seed=s.data["seed"]) for name in s.tasks}
    models = extraction.ModelCache(s.models, _memory_budget())
    infos = {spec.name: read_info(spec) for spec in s.models}
    validate_depths(cfg, {name: info.num_layers for name, info in infos.items()})
    pairs = study.model_pairs([m.name for m in s.models], {n: i.family for n, i in infos.items()}, s.chosen_pairs,
                              s.random_init)
    stores = extraction.extract_all(s.models, pairs, s.seeds, texts, tasks, s.extraction, workdir, mesh, models,
                                    lambda spec: infos[spec.name])
    samples = {}
    if s.next_token.enabled:
      for b in sorted({p.b for p in pairs if not p.is_random}):
        spec = next(m for m in s.models if m.name == b)
        path = next_token.samples_path(workdir, b, texts, s.next_token, (spec.path, spec.dtype))
        samples[b] = cache.cached(path, lambda: next_token.compute_samples(models.get(b), texts, s.next_token),
                                  producer=f"next-token samples of {b}")
    first, second = plan_units(s, pairs, stores, workdir)
    work = compare(first, second, Computer(s, stores, tasks, texts, workdir, mesh, models, samples), workdir,
                   process, num_processes)
    if process != 0:
      return {}
    summary = tables.assemble(s, pairs, stores, first, second, workdir, len(texts), work)
    if not s.transfer.keep_maps:
      freed = sum(transfer_step.drop_checkpoints(
          workdir, u.pair, (stores.get(u.pair.a, u.seed).manifest, stores.get(u.pair.b, u.seed).manifest), s.transfer,
          u.seed) for u in first if u.kind == "maps")
      logging.info("Removed the map checkpoints (transfer.keep_maps=False): %.2f GB freed.", freed / 1e9)
    results.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
    from experiments import report
    report.write_report(workdir, cfg.to_dict(), environment())
    logging.info("Report: %s", os.path.join(workdir, "report.md"))
    return summary


def bracket_list_indices(argv: list[str]) -> list[str]:
  """--config.models.0.dtype=X -> --config.models[0].dtype=X (config_flags paths index lists with brackets)."""
  def rewrite(arg):
    if not arg.startswith("--config."):
      return arg
    name, eq, value = arg.partition("=")
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name) + eq + value
  return [rewrite(a) for a in argv]


class _ThirdPartyBelowProgress(logging_lib.Filter):
  """Keeps other libraries' INFO lines (orbax logs several per checkpoint, JAX one per compilation-cache reset) out
  of the run's progress log; they still show with --verbosity=1 (debug)."""

  def filter(self, record) -> bool:
    ours = any(f"{os.sep}{package}{os.sep}" in record.pathname for package in ("experiments", "xsim", "launch"))
    return ours or record.levelno >= logging_lib.WARNING or logging.get_verbosity() >= logging.DEBUG


def quiet_third_party_info() -> None:
  """Routes other libraries' INFO lines below the run's progress (see _ThirdPartyBelowProgress): a filter on absl's
  handler, which prints absl's records and those of Python loggers (JAX's) alike."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _ThirdPartyBelowProgress) for f in handler.filters):
    handler.addFilter(_ThirdPartyBelowProgress())


def sigterm_handler(workdir: str, grace_s: float):
  """The runner's SIGTERM handler (a scheduler's preemption or scancel, `kill`). It unwinds the run like Ctrl-C: the
  unit in progress is recorded as stopped, the workdir's lock is released and every finished result stays, so the
  same command resumes, on any host. Python drops an exception that a signal raises inside a finalizer, so after
  grace_s seconds a run still going exits anyway, its lock released, as after a SIGKILL (all writes are atomic)."""
  def stop(signum, _frame):
    message = (f"The run was stopped by {signal.Signals(signum).name}; its finished work is in the workdir: rerun "
               "the same command to resume.")

    def exit_now():
      workdir_lib.release(workdir)
      sys.stderr.write(message + "\n")
      sys.stderr.flush()
      os._exit(128 + signum)

    timer = threading.Timer(grace_s, exit_now)
    timer.daemon = True
    timer.start()
    raise SystemExit(message)
  return stop


def main(argv):
  del argv
  if _WORKDIR.value is None or _CONFIG.value is None:
    raise app.UsageError("Pass --config=experiments/configs/NAME.py and --workdir=DIR.")
  signal.signal(signal.SIGTERM, sigterm_handler(_WORKDIR.value, _STOP_GRACE.value))
  quiet_third_party_info()
  run(_CONFIG.value, _WORKDIR.value, _LOCK_WAIT.value, _XLA_CACHE.value)


def check_overrides(argv: list[str]) -> None:
  """Stops with the valid keys when a --config.PATH=... override names no key of the config file's config
  (config_flags itself fails with a bare AttributeError)."""
  import runpy
  given = [a.partition("=")[2] for a in argv if a.startswith("--config=")]
  given += [argv[k + 1] for k, a in enumerate(argv[:-1]) if a == "--config"]
  if not given:
    return
  config_arg = given[-1]
  path, _, arg = config_arg.partition(":")
  cfg = runpy.run_path(path)["get_config"](*([arg] if arg else []))
  errors = [override_error(cfg, a.partition("=")[0][len("--config."):]) for a in argv if a.startswith("--config.")]
  errors = [e for e in errors if e]
  if errors:
    sys.exit("Invalid command line:\n  - " + "\n  - ".join(errors))


if __name__ == "__main__":
  sys.argv = bracket_list_indices(sys.argv)  # config_flags reads its overrides from sys.argv
  check_overrides(sys.argv)
  app.run(main)
