"""Config validation before any heavy work: every problem found, reported in one error.

validate_config checks the config on its own (keys, values, names that become file names, model paths as
load_model reads them); validate_depths then checks what depends on each model's depth, from the models'
configurations alone (xsim.models.read_config reads no weights). Every list of valid values is the library's own.
"""
from __future__ import annotations

from typing import Mapping

SECTIONS = {
    "models": None, "seeds": None, "pairs": None,
    "data": {"source", "num_texts", "max_words", "min_chars", "seed"},
    "extraction": {"pooling", "layers", "batch_size", "max_tokens", "keep_bos", "site", "truncate_tokens"},
    "similarity": {"measures", "preprocess", "knn_k", "permutations", "ci_resamples", "min_layer"},
    "baselines": {"random_init"},
    "transfer": {"method", "val_fraction", "test_fraction", "next_token", "standardize", "penalties", "keep_maps"},
    "probes": {"tasks", "num_examples"},
    "mesh": {"data", "model", "layers_per_unit"},
}
MODEL_KEYS = {"name", "path", "dtype", "family"}
NEXT_TOKEN_KEYS = {"enabled", "max_words", "num_samples", "num_depths", "probe_classes", "probe_samples"}
DATA_SOURCES = ("corpus", "jsonl", "text", "hf", "pile10k")


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
  """Raises ValueError listing every unknown key, impossible value, unsafe name and missing model or data source."""
  from experiments.similarity_step import MEASURES
  from experiments.workdir import name_error
  from xsim import layer_select
  from xsim.activations import POOLINGS, SITES
  from xsim.data import TASKS
  from xsim.models import model_source
  from xsim.models.model import DTYPES
  from xsim.similarity.preprocess import METHODS as PREPROCESSINGS
  from xsim.transfer.maps import METHODS as MAP_METHODS
  errors = []
  check = lambda ok, message: ok or errors.append(message)
  for key in cfg.keys():
    check(key in SECTIONS, f"unknown top-level key {key!r} (known: {sorted(SECTIONS)})")
  for section, keys in SECTIONS.items():
    if keys is None or section not in cfg:
      check(section in cfg or section == "pairs", f"missing section {section!r}")
      continue
    for key in cfg[section].keys():
      check(key in keys, f"unknown key {section}.{key} (known: {sorted(keys)})")
  seeds = cfg.get("seeds")
  check(isinstance(seeds, (list, tuple)) and len(seeds) >= 1 and all(isinstance(x, int) for x in seeds)
        and len(set(seeds)) == len(seeds), f"seeds must be a non-empty list of distinct ints, got {seeds!r}")
  models = list(cfg.get("models", []))
  check(len(models) >= 2, "models must list at least two models to compare")
  names = [m.get("name") for m in models]
  check(len(set(names)) == len(names), f"model names must be unique, got {names}")
  for pair in cfg.get("pairs") or []:
    check(len(pair) == 2 and all(name in names for name in pair) and pair[0] != pair[1],
          f"pair {list(pair)} must name two different listed models ({names})")
  for m in models:
    for key in m.keys():
      check(key in MODEL_KEYS, f"unknown model key {key!r} in {m.get('name')} (known: {sorted(MODEL_KEYS)})")
    error = name_error(m.get("name"), "model name")
    check(error is None, error)
    path = str(m.get("path", ""))
    try:
      model_source(path)
    except FileNotFoundError as e:
      errors.append(f"model {m.get('name')}: {e}")
    check(m.get("dtype", "float32") in DTYPES, f"model {m.get('name')}: dtype {m.get('dtype')!r} not in {sorted(DTYPES)}")
  if "data" in cfg:
    kind = str(cfg.data.source).partition(":")[0]
    check(kind in DATA_SOURCES, f"data.source {cfg.data.source!r} must be corpus:NAME, jsonl:PATH, text:PATH, hf:NAME "
          "or pile10k")
    check(cfg.data.num_texts >= 16, f"data.num_texts={cfg.data.num_texts} is too small for CKA statistics (>= 16)")
    check(cfg.data.max_words is None or cfg.data.max_words >= 2,
          f"data.max_words={cfg.data.max_words} must be >= 2 (or None for no cut)")
  if "extraction" in cfg:
    ex = cfg.extraction
    check(ex.pooling in POOLINGS and ex.pooling != "tokens",
          f"extraction.pooling {ex.pooling!r} must be one of {[p for p in POOLINGS if p != 'tokens']}")
    check(ex.site in SITES, f"extraction.site {ex.site!r} not in {SITES}")
    check(ex.batch_size >= 1 and ex.max_tokens >= 2, "extraction.batch_size and max_tokens must be positive")
    error = layer_select.spec_error(layer_select.parse(ex.layers))
    check(error is None, f"extraction.layers: {error}")
  if "similarity" in cfg:
    for measure in cfg.similarity.measures:
      check(measure in MEASURES, f"similarity measure {measure!r} not in {MEASURES}")
    for prep in cfg.similarity.preprocess:
      check(prep in PREPROCESSINGS, f"similarity preprocess {prep!r} not in {PREPROCESSINGS}")
    check(cfg.similarity.permutations >= 19, "similarity.permutations must be >= 19 for a 5% test")
    check(cfg.similarity.ci_resamples >= 20, "similarity.ci_resamples must be >= 20 for a 95% interval")
    check(isinstance(cfg.similarity.min_layer, int) and cfg.similarity.min_layer >= 0,
          f"similarity.min_layer={cfg.similarity.min_layer!r} must be a hidden-state index >= 0 (1 leaves out the "
          "embeddings)")
  if "transfer" in cfg:
    check(cfg.transfer.method in MAP_METHODS, f"transfer.method {cfg.transfer.method!r} not in {MAP_METHODS}")
    nt = cfg.transfer.get("next_token") or {}
    check(set(nt.keys()) <= NEXT_TOKEN_KEYS,
          f"unknown transfer.next_token keys {sorted(set(nt.keys()) - NEXT_TOKEN_KEYS)} (known: {sorted(NEXT_TOKEN_KEYS)})")
    if nt.get("enabled"):
      check(nt.get("max_words", 0) >= 2 and nt.get("num_samples", 0) >= 8 and nt.get("num_depths", 0) >= 2,
            "transfer.next_token needs max_words >= 2, num_samples >= 8 and num_depths >= 2")
      classes, samples = nt.get("probe_classes", 0), nt.get("probe_samples", 0)
      if "data" in cfg:  # the samples are cut from the texts, so at most num_texts of them
        samples = min(samples, cfg.data.num_texts)
      check(classes == 0 or (classes >= 5 and samples >= 2 * classes),
            f"transfer.next_token.probe_classes={classes} must be 0 (no token probe) or >= 5 (top-5 is scored), with "
            f"at least 2 x probe_classes samples (min(probe_samples, data.num_texts) = {samples}) so the training "
            "rows can hold that many tokens")
      if "data" in cfg and cfg.data.max_words is not None:
        check(nt.get("max_words", 0) < cfg.data.max_words,
              f"transfer.next_token.max_words must be below data.max_words ({cfg.data.max_words}) so a next word exists")
    check(0 < cfg.transfer.val_fraction and 0 < cfg.transfer.test_fraction
          and cfg.transfer.val_fraction + cfg.transfer.test_fraction < 1, "transfer fractions must leave training rows")
  if "probes" in cfg:
    for task in cfg.probes.tasks:
      check(task in TASKS, f"probe task {task!r} not in {sorted(TASKS)}")
  if "mesh" in cfg:
    import jax
    data, model = cfg.mesh.data, cfg.mesh.model
    total = jax.local_device_count()
    check(model >= 1 and total % model == 0, f"mesh.model={model} must divide the {total} local devices")
    check(data == -1 or data * model <= total, f"mesh {data} x {model} needs more than the {total} local devices")
    check(cfg.mesh.get("layers_per_unit", 16) >= 1, "mesh.layers_per_unit must be >= 1")
    if "extraction" in cfg and model >= 1 and total % model == 0:
      data_size = total // model if data == -1 else data
      check(cfg.extraction.batch_size % max(data_size, 1) == 0,
            f"extraction.batch_size={cfg.extraction.batch_size} must be a multiple of the mesh data axis ({data_size})")
  if errors:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(errors))


def validate_depths(cfg, num_layers: Mapping[str, int]) -> None:
  """Raises ValueError listing every setting that does not fit a model's depth; num_layers: model name -> blocks
  (from its configuration, xsim.models.read_config)."""
  from xsim import layer_select
  errors = []
  spec = layer_select.parse(cfg.extraction.layers)
  min_layer = cfg.similarity.min_layer
  nt = cfg.transfer.get("next_token") or {}
  for name, blocks in num_layers.items():
    error = layer_select.depth_error(spec, blocks, name)
    if error:
      errors.append(f"extraction.layers: {error}")
      continue
    layers = layer_select.resolve(spec, blocks)
    if max(layers) < min_layer:
      errors.append(f"similarity.min_layer={min_layer} leaves no layer of {name} to score (its layers: "
                    f"{layers}); lower it")
    if nt.get("enabled") and not any(l >= 1 for l in layers):
      errors.append(f"transfer.next_token matches block outputs, but {name} extracts only {layers}; add block "
                    "layers or disable next_token")
  if errors:
    raise ValueError("Invalid config for these models:\n  - " + "\n  - ".join(errors))
