"""What a study compares, read once from its config: models, model pairs, texts, seeds and every section's
settings, as small records and frozen settings; every later step takes these, not the config.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Optional, Sequence

from experiments import settings as settings_lib
from xsim.errors import InputError

RANDOM_SUFFIX = "@random"
RELATIONS = ("within", "cross", "random")


def published_dtype(family: str) -> str:
  """The published protocol's activation dtype: float16, but Gemma in bfloat16, whose float16 activations overflow
  (STUDY.md point 7; xsim refuses them as NaN/Inf)."""
  return "bfloat16" if family == "gemma" else "float16"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model of the study: its name in tables, where it loads from, its dtype and (optionally) its family."""
  name: str
  path: str
  dtype: str = "float32"
  family: Optional[str] = None



@dataclasses.dataclass(frozen=True)
class Pair:
  """A compared pair: model a (source of the maps) and model b (target), b possibly a random-init copy
  ("NAME@random", one per seed), with its relation: within-family, cross-family or the random baseline."""
  a: str
  b: str
  relation: str

  @property
  def is_random(self) -> bool:
    return self.b.endswith(RANDOM_SUFFIX)

  @property
  def target(self) -> str:
    """The model whose weights (or architecture, for a random copy) b has."""
    return self.b[:-len(RANDOM_SUFFIX)] if self.is_random else self.b

  @property
  def name(self) -> str:
    return f"{self.a}|{self.b}"


def family_of(spec: ModelSpec, loaded_family: str) -> str:
  """The family a model's relations use: the config's, else the architecture's (qwen2 -> qwen, gpt_neox ->
  pythia)."""
  return spec.family or loaded_family.rstrip("0123").replace("gpt_neox", "pythia")


def model_pairs(names: Sequence[str], families: dict, chosen: Optional[Sequence], random_init: bool) -> list[Pair]:
  """The configured pairs (every pair of listed models by default), then (a, random copy of b) baselines."""
  chosen = [tuple(p) for p in chosen] if chosen else list(itertools.combinations(names, 2))
  pairs = [Pair(a, b, "within" if families[a] == families[b] else "cross") for a, b in chosen]
  if random_init:
    pairs += [Pair(p.a, p.b + RANDOM_SUFFIX, "random") for p in list(pairs)]
  return pairs


def _xdata():
  from xsim import data
  return data


# data.source kinds: KIND:ARG -> (how to write it, texts(ARG, data settings)).
SOURCES = {
    "corpus": ("corpus:NAME (a corpus packaged with xsim)",
               lambda arg, d: _xdata().load_corpus(arg, num_passages=None, min_chars=d.min_chars, seed=d.seed)),
    "jsonl": ("jsonl:PATH (a 'text' field per line)", lambda arg, d: _xdata().load_jsonl_texts(arg)),
    "text": ("text:PATH (a passage per line)", lambda arg, d: _xdata().load_text_file(arg)),
    "hf": ("hf:NAME (a hub dataset's 'text' column)", lambda arg, d: _xdata().load_hf_texts(arg)),
    "pile10k": ("pile10k", lambda arg, d: _xdata().load_pile_10k()),
}


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The config's `data` section: where the texts come from, how many, cut after how many words (None: uncut)."""
  source: str
  num_texts: int
  max_words: Optional[int] = None
  min_chars: int = 0
  seed: int = 0

  def problems(self) -> list[str]:
    out = []
    if self.source.partition(":")[0] not in SOURCES:
      out.append(f"data.source {self.source!r} must be one of: " + ", ".join(h for h, _ in SOURCES.values()))
    if self.num_texts < 16:
      out.append(f"data.num_texts={self.num_texts} is too small for CKA statistics (>= 16)")
    if self.max_words is not None and self.max_words < 2:
      out.append(f"data.max_words={self.max_words} must be >= 2 (or None for no cut)")
    return out


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
  """The config's `baselines` section: random_init adds (a, random-init copy of b) for every pair."""
  random_init: bool = False


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  """The config's `mesh` section: a data x model mesh of each process's devices (data -1: all that model leaves);
  comparison units cover at most layers_per_unit of the source's layers."""
  data: int = -1
  model: int = 1
  layers_per_unit: int = 16

  def problems(self) -> list[str]:
    import jax
    total, out = jax.local_device_count(), []
    if self.model < 1 or total % self.model:
      out.append(f"mesh.model={self.model} must divide the {total} local devices")
    elif self.data != -1 and not 1 <= self.data * self.model <= total:
      out.append(f"mesh {self.data} x {self.model} needs more than the {total} local devices")
    if self.layers_per_unit < 1:
      out.append("mesh.layers_per_unit must be >= 1")
    return out

  @property
  def data_size(self) -> int:
    import jax
    return jax.local_device_count() // self.model if self.data == -1 else self.data


@dataclasses.dataclass(frozen=True)
class Study:
  """A config read once: the models, the chosen pairs (None: every pair), the seeds, and each section's settings
  (stages: the comparison stages' settings by stage name, experiments/stages)."""
  models: tuple
  pairs: Optional[tuple]
  seeds: tuple
  data: DataSettings
  baselines: BaselineSettings
  mesh: MeshSettings
  extraction: Any
  statistics: Any
  stages: dict

  @classmethod
  def from_config(cls, cfg) -> "Study":
    from experiments import extraction, stages, statistics
    section = lambda name: cfg.get(name) or {}
    return cls(models=tuple(settings_lib.read(ModelSpec, m) for m in cfg.models),
               pairs=tuple(tuple(p) for p in cfg.pairs) if cfg.get("pairs") else None,
               seeds=tuple(int(s) for s in cfg.seeds),
               data=settings_lib.read(DataSettings, section("data")),
               baselines=settings_lib.read(BaselineSettings, section("baselines")),
               mesh=settings_lib.read(MeshSettings, section("mesh")),
               extraction=settings_lib.read(extraction.ExtractionSettings, section("extraction")),
               statistics=settings_lib.read(statistics.StatisticsSettings, section("statistics")),
               stages={stage.NAME: settings_lib.read(stage.Settings, section(stage.SECTION))
                       for stage in stages.STAGES})


def load_texts(data: DataSettings) -> list[str]:
  """The passages of a data source, cut by whole words (the same strings for every model)."""
  from xsim import data as xdata
  kind, _, arg = data.source.partition(":")
  texts = SOURCES[kind][1](arg, data)
  texts = [xdata.cut_text(xdata.normalize_whitespace(t), max_words=data.max_words or None) for t in texts]
  usable = [t for t in texts if len(xdata.word_spans(t)) >= 2]
  if len(usable) < data.num_texts:
    short = [t for t in texts if len(xdata.word_spans(t)) < 2]
    raise InputError(f"data.source {data.source} gave {len(usable)} usable texts (two words or more; the first word "
                     f"of each is left out of its samples), fewer than num_texts={data.num_texts}; {len(short)} of "
                     f"its {len(texts)} texts have fewer words (e.g. {short[:3]!r}). Lower num_texts or use a "
                     "larger source.")
  return usable[:data.num_texts]
