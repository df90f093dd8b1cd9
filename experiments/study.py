"""What a study compares, as small records read from its config: models, model pairs, texts and probe tasks.

The config is read here once; every later step takes these records and plain settings, not the config.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

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

  @classmethod
  def from_config(cls, entry) -> "ModelSpec":
    entry = dict(entry)
    return cls(name=entry["name"], path=str(entry["path"]), dtype=entry.get("dtype", "float32"),
               family=entry.get("family"))


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


def load_texts(source: str, num_texts: int, max_words: Optional[int], min_chars: int, seed: int) -> list[str]:
  """The passages of a data source, cut by whole words (the same strings for every model)."""
  from xsim import data as xdata
  kind, _, name = source.partition(":")
  if kind == "corpus":
    texts = xdata.load_corpus(name, num_passages=None, min_chars=min_chars, seed=seed)
  elif kind == "jsonl":
    texts = xdata.load_jsonl_texts(name)
  elif kind == "text":
    texts = xdata.load_text_file(name)
  elif kind == "pile10k":
    texts = xdata.load_pile_10k()
  else:
    texts = xdata.load_hf_texts(name)
  texts = [xdata.cut_text(xdata.normalize_whitespace(t), max_words=max_words or None) for t in texts]
  usable = [t for t in texts if len(xdata.word_spans(t)) >= 2]
  if len(usable) < num_texts:
    short = [t for t in texts if len(xdata.word_spans(t)) < 2]
    raise ValueError(f"data.source {source} gave {len(usable)} usable texts (two words or more; the first word of "
                     f"each is left out of its samples), fewer than num_texts={num_texts}; {len(short)} of its "
                     f"{len(texts)} texts have fewer words (e.g. {short[:3]!r}). Lower num_texts or use a larger "
                     "source.")
  return usable[:num_texts]
