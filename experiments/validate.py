"""Config validation before any heavy work: every problem found, reported in one error."""
from __future__ import annotations

import os

SECTIONS = {
    "models": None, "seeds": None, "pairs": None,
    "data": {"source", "num_texts", "max_words", "min_chars", "seed"},
    "extraction": {"pooling", "layers", "batch_size", "max_tokens", "keep_bos", "site", "truncate_tokens"},
    "similarity": {"measures", "preprocess", "knn_k", "permutations", "ci_resamples", "min_layer"},
    "baselines": {"random_init"},
    "transfer": {"method", "val_fraction", "test_fraction", "next_token", "standardize", "penalties"},
    "probes": {"tasks", "num_examples"},
    "mesh": {"data", "model"},
}
MODEL_KEYS = {"name", "path", "dtype", "family"}
MEASURES = ("cka", "cka_debiased", "mutual_knn")
NEXT_TOKEN_KEYS = {"enabled", "max_words", "num_samples", "num_depths", "probe_classes", "probe_samples"}


def validate_config(cfg) -> None:
  """Raises ValueError listing every unknown key, impossible value and missing model or data source."""
  from xsim.activations import POOLINGS, SITES
  from xsim.data import TASKS
  from xsim.models import assets
  from xsim.models.model import DTYPES
  from xsim.similarity.preprocess import METHODS
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
    path = str(m.get("path", ""))
    local = os.path.exists(os.path.expanduser(path))
    check(local or path in assets.MODELS or (path.count("/") == 1 and not path.startswith((".", "/"))),
          f"model {m.get('name')}: path {path!r} is not a local directory/GGUF file, a packaged model "
          f"({sorted(assets.MODELS)}) or a hub id 'org/name'")
    check(m.get("dtype", "float32") in DTYPES, f"model {m.get('name')}: dtype {m.get('dtype')!r} not in {sorted(DTYPES)}")
  if "data" in cfg:
    kind = str(cfg.data.source).partition(":")[0]
    check(kind in ("corpus", "jsonl", "text", "hf", "pile10k"),
          f"data.source {cfg.data.source!r} must be corpus:NAME, jsonl:PATH, text:PATH, hf:NAME or pile10k")
    check(cfg.data.num_texts >= 16, f"data.num_texts={cfg.data.num_texts} is too small for CKA statistics (>= 16)")
    check(cfg.data.max_words is None or cfg.data.max_words >= 2,
          f"data.max_words={cfg.data.max_words} must be >= 2 (or None for no cut)")
  if "extraction" in cfg:
    ex = cfg.extraction
    check(ex.pooling in POOLINGS and ex.pooling != "tokens",
          f"extraction.pooling {ex.pooling!r} must be one of {[p for p in POOLINGS if p != 'tokens']}")
    check(ex.site in SITES, f"extraction.site {ex.site!r} not in {SITES}")
    check(ex.batch_size >= 1 and ex.max_tokens >= 2, "extraction.batch_size and max_tokens must be positive")
    layers = ex.layers
    check(layers == "all" or (isinstance(layers, str) and layers.startswith("depths:") and
                               layers.partition(":")[2].isdigit() and int(layers.partition(":")[2]) >= 2)
          or (not isinstance(layers, str) and all(isinstance(i, int) and i >= 0 for i in layers)),
          f"extraction.layers {layers!r} must be 'all', 'depths:K' (K >= 2) or a list of hidden-state indices")
  if "similarity" in cfg:
    for measure in cfg.similarity.measures:
      check(measure in MEASURES, f"similarity measure {measure!r} not in {MEASURES}")
    for prep in cfg.similarity.preprocess:
      check(prep in METHODS, f"similarity preprocess {prep!r} not in {METHODS}")
    check(cfg.similarity.permutations >= 19, "similarity.permutations must be >= 19 for a 5% test")
    check(cfg.similarity.ci_resamples >= 20, "similarity.ci_resamples must be >= 20 for a 95% interval")
    check(isinstance(cfg.similarity.min_layer, int) and cfg.similarity.min_layer >= 0,
          f"similarity.min_layer={cfg.similarity.min_layer!r} must be a hidden-state index >= 0 (1 leaves out the "
          "embeddings)")
  if "transfer" in cfg:
    check(cfg.transfer.method in ("ridge", "adam", "adamw", "procrustes"),
          f"transfer.method {cfg.transfer.method!r} not in ('ridge', 'adam', 'adamw', 'procrustes')")
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
    if "extraction" in cfg and model >= 1 and total % model == 0:
      data_size = total // model if data == -1 else data
      check(cfg.extraction.batch_size % max(data_size, 1) == 0,
            f"extraction.batch_size={cfg.extraction.batch_size} must be a multiple of the mesh data axis ({data_size})")
  if errors:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(errors))
