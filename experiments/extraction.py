"""The extraction stage: every model's activation stores, one model in memory at a time, and paired arrays.

Stores are named by what they depend on (the model's source and dtype, the extraction settings, the texts), so a
finished store is opened again without loading its model; a model is loaded only for stores that are missing and
freed once they are done (ModelCache keeps recently used models while they fit its memory budget).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

from experiments import keys
from experiments.study import ModelSpec, Pair, RANDOM_SUFFIX, Study
from xsim import layer_select
from xsim.activations import RowSpec
from xsim.errors import InputError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractionSettings(RowSpec):
  """The config's `extraction` section: what each store holds (xsim.activations.RowSpec's fields) and the batch
  size. Texts over max_tokens are skipped by default: check_rows reports them."""
  on_overflow: str = "skip"
  batch_size: int

  def problems(self) -> list[str]:
    out = [f"extraction.{p}" for p in super().problems()]
    if self.pooling == "tokens":
      out.append("extraction.pooling 'tokens' gives rows that do not pair across tokenizers; use last, last_word, "
                 "mean or words")
    if self.batch_size < 1:
      out.append(f"extraction.batch_size={self.batch_size} must be >= 1")
    return out

  def identity(self) -> dict:
    """What a store's contents depend on (the batch size does not change a row)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}


def source_fingerprint(path: str, workdir: str) -> list:
  """What a model's weights are: the SHA-256 of each of its files (a GGUF file, a directory's safetensors and json
  files, or a packaged model's file in the cache; keys.file_digest), or the name of a hub id."""
  from xsim.models import assets
  path = os.path.expanduser(path)
  if path in assets.MODELS and (assets.default_cache_dir() / assets.MODELS[path].filename).is_file():
    path = str(assets.default_cache_dir() / assets.MODELS[path].filename)
  if os.path.isfile(path):
    files = [path]
  elif os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.json")))
  else:
    return [path]
  return [(os.path.basename(f), keys.file_digest(f, workdir)) for f in files]


class ModelCache:
  """Loaded models, least recently used first out, kept while their parameters fit `budget_bytes`."""

  def __init__(self, specs: Sequence[ModelSpec], budget_bytes: int, expected_bytes: Optional[dict] = None):
    """expected_bytes: {name: parameter bytes} known before loading (e.g. from the configs), so that loading a
    small model does not free the others for the largest size seen."""
    self.specs = {s.name: s for s in specs}
    self.budget = budget_bytes
    self.loaded: collections.OrderedDict = collections.OrderedDict()
    self.sizes: dict[str, int] = {name: size for name, size in (expected_bytes or {}).items() if size}
    self.loads = collections.Counter()

  def get(self, name: str):
    """The loaded model `name`, loading it (and freeing others as the budget needs) if it is not resident."""
    import xsim
    if name in self.loaded:
      self.loaded.move_to_end(name)
      return self.loaded[name]
    expected = self.sizes.get(name, max(self.sizes.values(), default=0))
    while self.loaded and sum(self.sizes[n] for n in self.loaded) + expected > self.budget:
      self.free(next(iter(self.loaded)))
    spec = self.specs[name]
    start = time.time()
    model = xsim.load_model(spec.path, dtype=spec.dtype)
    model.name = name
    self.sizes[name] = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize
                           for leaf in _leaves(model.params))
    self.loads[name] += 1
    self.loaded[name] = model
    logging.info("Loaded %s (%s, %d layers, %.2f GB of parameters) in %.1fs.", name, model.config.family,
                 model.config.num_layers, self.sizes[name] / 1e9, time.time() - start)
    return model

  def release(self, name: str) -> None:
    """Done with `name` for now: frees it unless it fits the budget beside the others."""
    if name in self.loaded and sum(self.sizes[n] for n in self.loaded) > self.budget:
      self.free(name)

  def free(self, name: str) -> None:
    self.loaded.pop(name, None)


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What later steps need of a model without loading it."""
  name: str
  family: str
  num_layers: int
  hidden_size: int
  param_bytes: int = 0  # the parameters' size once loaded (0: unknown)


@dataclasses.dataclass
class Stores:
  """Every activation store of a run: on the texts per model, per random-init copy and seed, per probe task."""
  texts: dict
  random: dict
  tasks: dict
  info: dict

  def get(self, name: str, seed: int):
    """The store of a model ("MODEL") or of its random-init copy for `seed` ("MODEL@random")."""
    if name.endswith(RANDOM_SUFFIX):
      return self.random[(name[:-len(RANDOM_SUFFIX)], seed)]
    return self.texts[name]


def store_dir(workdir: str, tag: str, *inputs) -> str:
  """An activation store's directory, named by what its contents depend on: a changed input gets a new store
  (a store refuses to mix inputs) and an unchanged one is found again."""
  return keys.path(workdir, "activations", tag, *inputs)


def open_or_extract(path: str, get_model, texts: Sequence[str], settings: ExtractionSettings, mesh,
                    distribute: bool = True, progress: bool = True, random_seed=None):
  """The complete store at `path`, or the activations of get_model() (its random-init copy when random_seed is
  set) on texts, extracted into it. A complete store is read whole once to check every chunk; a damaged one is
  named in the log, deleted and extracted again (by a single process; under jax.distributed the error is raised,
  since the other processes may be reading it)."""
  import shutil

  import jax
  from xsim import activations as xa
  if os.path.exists(os.path.join(path, "manifest.json")):
    try:
      return xa.load_store(path, read_all=True)
    except xa.IncompleteStore:  # extract (and resume) below
      pass
    except xa.CorruptStore as e:
      if jax.process_count() > 1:
        raise
      logging.warning("%s Deleting it and extracting again.", e)
      shutil.rmtree(path)
  model = get_model()
  if random_seed is not None:
    name = model.name
    model = model.with_random_params(random_seed)
    model.name = f"{name}{RANDOM_SUFFIX}"
  return xa.extract_activations(model, texts, settings, batch_size=settings.batch_size, mesh=mesh, store_dir=path,
                                distribute=distribute, progress=progress)


def last_token_activations(workdir: str, extraction: ExtractionSettings, get_model, texts: Sequence[str], layers,
                           tag: str, *inputs) -> np.ndarray:
  """[L, n, d] float32 activations of get_model() at the last token of each text (one row per text, in order) at
  hidden states `layers`, in a store named by tag, the texts, the extraction settings and `inputs` (what else the
  texts depend on)."""
  settings = dataclasses.replace(extraction, pooling="last", layers=list(layers), keep_bos=False,
                                 truncate_tokens=None, site="residual")
  path = store_dir(workdir, tag, keys.texts(texts), extraction.identity(), *inputs)
  acts = open_or_extract(path, get_model, texts, settings, None, distribute=False, progress=False)
  if len(acts.index) != len(texts):
    raise ValueError(f"{acts.manifest['model']} gave {len(acts.index)} rows for {len(texts)} texts; every text needs "
                     "a token.")
  return np.asarray(acts.array, np.float32)


def check_rows(store, texts: Sequence[str], what: str, settings: ExtractionSettings) -> None:
  """Logs how many texts gave no row (a documented skip) and stops, naming the causes, when none gave one."""
  covered = len(set(np.asarray(store.index["text"]).tolist()))
  if covered == len(texts):
    return
  missing = sorted(set(range(len(texts))) - set(np.asarray(store.index["text"]).tolist()))
  examples = "; ".join(f"text {i}: {texts[i][:60]!r}" for i in missing[:3])
  if not covered:
    raise InputError(
        f"{what}: none of the {len(texts)} texts gave a sample row ({examples}). A text is skipped when it has more "
        f"than extraction.max_tokens={settings.max_tokens} tokens, and gives no row when no usable token follows its "
        f"first word (BOS and the first word are excluded unless keep_bos=True, e.g. one-word texts or texts "
        f"without spaces). Raise max_tokens, use longer texts with several words, or set keep_bos.")
  logging.warning("%s: %d of %d texts gave no sample row and are left out of its pairs (first: %s).", what,
                  len(missing), len(texts), examples)


def extract_all(study: Study, pairs: Sequence[Pair], texts: Sequence[str], tasks: dict, workdir: str, mesh,
                models: ModelCache, read_info, prefetch: Sequence = ()) -> Stores:
  """Every store the comparisons need: each of the study's models on the texts and on each task, and the random-init
  copy of each model that is the target of a random baseline, per seed. read_info(spec) -> ModelInfo without
  weights; prefetch: callables (model name, stores, get_model) run after each model's stores, while it is loaded
  (the stages' prefetch parts)."""
  settings = study.extraction
  stores = Stores({}, {}, {}, {})
  random_targets = {p.target for p in pairs if p.is_random}
  for spec in study.models:
    info = read_info(spec)
    stores.info[spec.name] = info
    identity = (spec.path, source_fingerprint(spec.path, workdir), spec.dtype, settings.identity())
    get = lambda name=spec.name: models.get(name)
    stores.texts[spec.name] = open_or_extract(
        store_dir(workdir, spec.name, *identity, keys.texts(texts)), get, texts, settings, mesh)
    check_rows(stores.texts[spec.name], texts, spec.name, settings)
    if spec.name in random_targets:
      stores.info[spec.name + RANDOM_SUFFIX] = dataclasses.replace(info, name=spec.name + RANDOM_SUFFIX,
                                                                   family="random")
      for seed in study.seeds:
        stores.random[(spec.name, seed)] = open_or_extract(
            store_dir(workdir, f"{spec.name}{RANDOM_SUFFIX}{seed}", *identity, keys.texts(texts), seed), get, texts,
            settings, mesh, random_seed=seed)
    for task_name, task in tasks.items():
      stores.tasks[(task_name, spec.name)] = open_or_extract(
          store_dir(workdir, f"{spec.name}-task-{task_name}", *identity, keys.texts(task.texts)), get,
          list(task.texts), settings, mesh)
      check_rows(stores.tasks[(task_name, spec.name)], list(task.texts), f"{spec.name} on task {task_name}", settings)
    for fetch in prefetch:
      fetch(spec.name, stores, get)
    models.release(spec.name)
  return stores


@dataclasses.dataclass(frozen=True, eq=False)
class PairData:
  """A model pair's paired activations on the texts (rows both stores hold, in a's order), as float32.

  xs: [La, n, da], ys: [Lb, n, db]; rows_a: [n] row indices into a's store; layers_*: hidden-state indices;
  num_layers_*: blocks of each model (for relative depths); identity: what the arrays depend on.
  """
  pair: Pair
  xs: np.ndarray
  ys: np.ndarray
  rows_a: np.ndarray
  layers_a: tuple
  layers_b: tuple
  num_layers_a: int
  num_layers_b: int
  identity: tuple

  @property
  def num_samples(self) -> int:
    return self.xs.shape[1]

  def scored_positions(self, min_layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in layers_a and layers_b that maxima are taken over (layer_select.scored_positions)."""
    return (layer_select.scored_positions(self.layers_a, min_layer, self.pair.a),
            layer_select.scored_positions(self.layers_b, min_layer, self.pair.b))


def paired_arrays(store_a, store_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(xs [La, n, da], ys [Lb, n, db], row indices into store_a) of the samples both stores hold, in float32."""
  from xsim import activations as xa
  ia, ib = xa.paired_rows(store_a, store_b)
  return np.asarray(store_a.array[:, ia], np.float32), np.asarray(store_b.array[:, ib], np.float32), ia


def check_spread(acts: np.ndarray, model: str) -> None:
  """Refuses rows [L, n, d] that are the same at every layer (e.g. one text repeated): no measure, map or probe is
  defined on them. A single layer without spread gives undefined values there, reported as such."""
  if not np.any(acts.max(axis=1) > acts.min(axis=1)):
    raise InputError(f"{model}: its {acts.shape[1]} rows are identical at every layer (the texts give the same "
                     "sample, e.g. one text repeated); similarity, maps and probes need rows that differ. Use "
                     "distinct texts.")


def pair_data(stores: Stores, pair: Pair, seed: int) -> PairData:
  store_a, store_b = stores.get(pair.a, seed), stores.get(pair.b, seed)
  xs, ys, rows = paired_arrays(store_a, store_b)
  if xs.shape[1] < 4:
    raise InputError(f"{pair.a} and {pair.b} share only {xs.shape[1]} usable samples (rows both stores hold); "
                     "similarity and maps need at least 4. Use more or longer texts, or raise extraction.max_tokens.")
  for name, acts in ((pair.a, xs), (pair.b, ys)):
    check_spread(acts, name)
  return PairData(pair, xs, ys, rows, tuple(store_a.layers), tuple(store_b.layers),
                  stores.info[pair.a].num_layers, stores.info[pair.b].num_layers,
                  (store_a.manifest, store_b.manifest))


@dataclasses.dataclass(frozen=True)
class PairLayout:
  """A pair's layers and paired sample count, without its arrays: what a table row needs to place a cell."""
  layers_a: tuple
  layers_b: tuple
  num_layers_a: int
  num_layers_b: int
  num_samples: int

  def cell(self, layer_a: int, layer_b: int) -> dict:
    """The table columns of layer pair (layer_a, layer_b): hidden-state indices and relative depths."""
    return dict(layer_a=layer_a, layer_b=layer_b, depth_a=layer_select.relative_depth(layer_a, self.num_layers_a),
                depth_b=layer_select.relative_depth(layer_b, self.num_layers_b))


def pair_layout(stores: Stores, pair: Pair, seed: int) -> PairLayout:
  from xsim import activations as xa
  store_a, store_b = stores.get(pair.a, seed), stores.get(pair.b, seed)
  return PairLayout(tuple(store_a.layers), tuple(store_b.layers), stores.info[pair.a].num_layers,
                    stores.info[pair.b].num_layers, int(len(xa.paired_rows(store_a, store_b)[0])))
