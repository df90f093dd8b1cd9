"""Config validation before any heavy work: every problem found, reported in one error.

validate_config checks the config on its own (keys, values, names that become file names, model paths as
load_model reads them); validate_depths then checks what depends on each model's depth, from the models'
configurations alone (xsim.models.read_config reads no weights). Every list of valid values is the library's own.
"""
from __future__ import annotations

from typing import Mapping

from xsim.errors import ConfigError

TOP_LEVEL = ("models", "seeds", "pairs")


def sections() -> dict:
  """Every config section and the settings class whose fields are its keys (experiments/settings.py)."""
  from experiments import extraction, statistics, study
  from experiments.stages import STAGES
  return {"data": study.DataSettings, "extraction": extraction.ExtractionSettings,
          "statistics": statistics.StatisticsSettings, "baselines": study.BaselineSettings, "mesh": study.MeshSettings,
          **{stage.SECTION: stage.Settings for stage in STAGES}}


def override_error(cfg, path: str) -> str | None:
  """Why a command-line override --config.PATH=... names no key of cfg (None if it names one), listing the keys
  valid at the first level that is wrong."""
  import re
  node, walked = cfg, []
  for part in re.findall(r"[^.\[\]]+", path):
    if isinstance(node, (list, tuple)):
      if not part.isdigit() or int(part) >= len(node):
        return f"--config.{path}: {'.'.join(walked)} has entries 0..{len(node) - 1}, not {part!r}"
      node = node[int(part)]
    elif hasattr(node, "keys"):
      if part not in node.keys():
        where = ".".join(walked) or "the config"
        return f"--config.{path}: {where} has no key {part!r} (valid: {sorted(node.keys())})"
      node = node[part]
    else:
      return f"--config.{path}: {'.'.join(walked)} is a value, not a section"
    walked.append(part)
  return None


def validate_config(cfg) -> None:
  """Raises ConfigError listing every unknown key, value of the wrong type, impossible value, unsafe name and missing
  model or data source."""
  from experiments import settings as settings_lib
  from experiments.study import ModelSpec
  from experiments.workdir import name_error
  from xsim.models import model_source
  from xsim.models.model import DTYPES
  errors, known = [], sections()
  check = lambda ok, message: ok or errors.append(message)
  for key in cfg.keys():
    check(key in known or key in TOP_LEVEL, f"unknown top-level key {key!r} (known: {sorted([*known, *TOP_LEVEL])})")
  read = {}
  for name, cls in known.items():
    read[name], problems = settings_lib.check(cls, cfg.get(name), name)
    errors += problems
  seeds = cfg.get("seeds")
  check(isinstance(seeds, (list, tuple)) and len(seeds) >= 1
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2 ** 31 for x in seeds)
        and len(set(seeds)) == len(seeds),
        f"seeds must be a non-empty list of distinct ints in 0..2**31 - 1, got {seeds!r}")
  models = list(cfg.get("models", []))
  check(len(models) >= 2, "models must list at least two models to compare")
  names = [m.get("name") for m in models]
  check(len(set(names)) == len(names), f"model names must be unique, got {names}")
  pairs = [tuple(p) for p in cfg.get("pairs") or []]
  for pair in pairs:
    check(len(pair) == 2 and all(name in names for name in pair) and pair[0] != pair[1],
          f"pair {list(pair)} must name two different listed models ({names})")
  repeated = sorted({p for p in pairs if pairs.count(p) > 1})
  check(not repeated, f"pairs list {[list(p) for p in repeated]} more than once; list each pair once")
  for m in models:
    spec, problems = settings_lib.check(ModelSpec, m, f"model {m.get('name')}")
    errors += problems
    error = name_error(m.get("name"), "model name")
    check(error is None, error)
    if spec is None:
      continue
    try:
      model_source(m["path"])
    except FileNotFoundError as e:
      errors.append(f"model {m.get('name')}: {e}")
    check(m.get("dtype", "float32") in DTYPES, f"model {m.get('name')}: dtype {m.get('dtype')!r} not in {sorted(DTYPES)}")
  errors += _cross_section_problems(read)
  if errors:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))


def _cross_section_problems(read: dict) -> list[str]:
  """Rules between sections (read: each section's settings, None where a key or type is wrong)."""
  errors = []
  data, nt, probes, mesh, extraction, similarity = (
      read.get(k) for k in ("data", "next_token", "probes", "mesh", "extraction", "similarity"))
  if data is not None and similarity is not None and similarity.knn_k >= data.num_texts:
    errors.append(f"similarity.knn_k={similarity.knn_k} must be below data.num_texts={data.num_texts} (each row "
                  "needs k other rows as neighbours)")
  token_probe = probes is not None and probes.token_classes
  if token_probe and data is not None and data.num_texts < 2 * probes.token_classes:
    errors.append(f"probes.token_classes={probes.token_classes} needs at least 2 x token_classes samples, but "
                  f"data.num_texts={data.num_texts}; lower token_classes or use more texts")
  if nt is not None and (nt.enabled or token_probe):
    if data is not None and data.max_words is not None and nt.max_words >= data.max_words:
      errors.append(f"next_token.max_words must be below data.max_words ({data.max_words}) so a next word exists "
                    "(next-token patching and the token probe split texts there)")
  if mesh is not None and extraction is not None and not mesh.problems():
    if extraction.batch_size % max(mesh.data_size, 1):
      errors.append(f"extraction.batch_size={extraction.batch_size} must be a multiple of the mesh data axis "
                    f"({mesh.data_size})")
  return errors


def validate_depths(cfg, num_layers: Mapping[str, int]) -> None:
  """Raises ConfigError listing every setting that does not fit a model's depth; num_layers: model name -> blocks
  (from its configuration, xsim.models.read_config)."""
  from experiments.study import Study
  from xsim import layer_select
  s = Study.from_config(cfg)
  errors, min_layer = [], s.statistics.min_layer
  next_words = s.stages["next_token"].enabled or s.stages["probes"].token_classes
  for name, blocks in num_layers.items():
    error = layer_select.depth_error(s.extraction.layers, blocks, name)
    if error:
      errors.append(f"extraction.layers: {error}")
      continue
    layers = layer_select.resolve(s.extraction.layers, blocks)
    if max(layers) < min_layer:
      errors.append(f"statistics.min_layer={min_layer} leaves no layer of {name} to score (its layers: "
                    f"{layers}); lower it")
    if next_words and not any(l >= 1 for l in layers):
      errors.append(f"next_token and the token probe match block outputs, but {name} extracts only {layers}; add "
                    "block layers or disable next_token and probes.token_classes")
  if errors:
    raise ConfigError("Invalid config for these models:\n  - " + "\n  - ".join(errors))
