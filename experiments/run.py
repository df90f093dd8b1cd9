r"""Runs a study from a config: extraction, similarity for all layer pairs, transfer maps, probes, report.

  python -m experiments.run --config experiments/configs/demo.py --workdir runs/demo
  python -m experiments.run --config experiments/configs/demo.py --config.data.num_texts=128 --workdir runs/small
  python -m experiments.run --config experiments/configs/demo.py:qwen --config.models.0.dtype=bfloat16 ...

In order: validate the config (before any work) and read it once (experiments/study.py), take the workdir's lock,
extract every model's activations (experiments/extraction.py), let every stage of experiments/stages (similarity,
maps, next-token transfer, probes) plan its units for each pair and seed and compute them (experiments/units.py:
phase 1, then phase 2, which reads the maps), turn the units' results into tables and headline numbers through each
stage's tabulate (experiments/tables.py) and render the report (experiments/report.py). Every expensive result is a content-keyed, verified entry in the
workdir, written atomically, so a rerun after a crash or with a changed config does only what is missing. Under
jax.distributed (see launch/), every process extracts its share of texts and computes its share of the units on
its own devices; process 0 alone writes the tables and the report.
"""
from __future__ import annotations

import datetime
import functools
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

from experiments import cli, context, extraction, outputs, study, tables, units, workdir as workdir_lib
from experiments.stages import STAGES
from experiments.validate import override_error, validate_config, validate_depths
from xsim.errors import ConfigError

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
STAGE_BY_NAME = {stage.NAME: stage for stage in STAGES}


def _memory_budget() -> int:
  return int(RESIDENT_MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def compute(ctx: context.Context, unit: units.Unit):
  """One unit's result, computed by its stage."""
  stage = STAGE_BY_NAME[unit.stage]
  return stage.compute(ctx.settings(stage.NAME), ctx, unit)


def read_info(spec: study.ModelSpec) -> extraction.ModelInfo:
  """A model's family and shape from its configuration alone (no weights are read)."""
  from xsim.models import read_config
  from xsim.models.model import param_shapes, resolve_dtype
  config = read_config(spec.path)
  dtype = resolve_dtype(spec.dtype)
  param_bytes = sum(int(np.prod(shape)) for shape in param_shapes(config, dtype).values()) * np.dtype(dtype).itemsize
  return extraction.ModelInfo(spec.name, study.family_of(spec, config.family), config.num_layers, config.hidden_size,
                              param_bytes)


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


def run(cfg, workdir: str, lock_wait_s: float = 0.0, xla_cache: bool = True) -> dict:
  """Runs the whole study; returns the summary written to workdir/summary.json (process 0; {} elsewhere).
  xla_cache: keep compiled programs in workdir/cache/xla (see workdir.compilation_cache)."""
  from xsim import activations as xa
  from xsim import data as xdata
  from xsim import distributed
  distributed.initialize_from_env()
  validate_config(cfg)
  s = study.Study.from_config(cfg)
  process, num_processes = jax.process_index(), jax.process_count()
  with workdir_lib.lock(workdir, distributed.run_id(), process, wait_s=lock_wait_s), \
       workdir_lib.compilation_cache(workdir, xla_cache):
    if os.path.exists(units.failure_path(workdir, process)):
      os.remove(units.failure_path(workdir, process))
    mesh = xa.make_mesh(s.mesh.data, s.mesh.model)
    texts = study.load_texts(s.data)
    logging.info("%d texts from %s.", len(texts), s.data.source)
    probes = s.stages["probes"]
    tasks = {name: xdata.load_task(name, num_examples=probes.num_examples, seed=s.data.seed) for name in probes.tasks}
    infos = {spec.name: read_info(spec) for spec in s.models}
    models = extraction.ModelCache(s.models, _memory_budget(), {n: i.param_bytes for n, i in infos.items()})
    validate_depths(cfg, {name: info.num_layers for name, info in infos.items()})
    pairs = study.model_pairs([m.name for m in s.models], {n: i.family for n, i in infos.items()}, s.pairs,
                              s.baselines.random_init)
    prefetch = [functools.partial(stage.prefetch, s.stages[stage.NAME], s, workdir) for stage in STAGES
                if hasattr(stage, "prefetch")]
    stores = extraction.extract_all(s, pairs, texts, tasks, workdir, mesh, models, lambda spec: infos[spec.name],
                                    prefetch)
    ctx = context.Context(s, stores, texts, tasks, workdir, mesh, models)
    phases = units.plan(STAGES, ctx, pairs)
    work = units.run_phases(phases, lambda unit: compute(ctx, unit), workdir, process, num_processes)
    if process != 0:
      return {}
    summary = tables.assemble(ctx, STAGES, pairs, work)
    for stage in STAGES:
      if hasattr(stage, "finish"):
        stage.finish(ctx.settings(stage.NAME), ctx, pairs)
    outputs.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
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
  with cli.user_errors():
    if _WORKDIR.value is None or _CONFIG.value is None:
      raise ConfigError("Pass --config=experiments/configs/NAME.py and --workdir=DIR.")
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
  if not os.path.isfile(path):
    raise ConfigError(f"--config={config_arg}: there is no config file {path!r}; pass "
                      "--config=experiments/configs/NAME.py (optionally NAME.py:ARG).")
  try:
    cfg = runpy.run_path(path)["get_config"](*([arg] if arg else []))
  except ValueError as e:  # a config's own refusal of its argument
    raise ConfigError(f"--config={config_arg}: {e}") from e
  errors = [override_error(cfg, a.partition("=")[0][len("--config."):]) for a in argv if a.startswith("--config.")]
  errors = [e for e in errors if e]
  if errors:
    raise ConfigError("Invalid command line:\n  - " + "\n  - ".join(errors))


if __name__ == "__main__":
  sys.argv = bracket_list_indices(sys.argv)  # config_flags reads its overrides from sys.argv
  with cli.user_errors():
    check_overrides(sys.argv)
    try:  # an override of the wrong type (--config.data.num_texts=abc): a command-line error, exit code 2
      remaining = flags.FLAGS(sys.argv)
    except flags.Error as e:
      raise ConfigError(f"Invalid command line: {e}") from e
  app.run(main, flags_parser=lambda argv: remaining)  # parsed once: config_flags defines its overrides as it parses
