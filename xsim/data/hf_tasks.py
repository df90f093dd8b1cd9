"""The published study's probe tasks, loaded through Hugging Face `datasets` (needs the Hub or its cache).

Texts are stripped of surrounding whitespace (SST-2 sentences end in a space, which would make the last
token a space). By default the classes are balanced by subsampling the larger one; pass balance=False for
the study's class mix (its ToxiGen chance level was 63%).
"""
from __future__ import annotations

import numpy as np

from xsim.data.sources import hf_column, load_hf_dataset
from xsim.data.task import Task, sample_examples

SST2_SOURCES = {"stanfordnlp/sst2": ("stanfordnlp/sst2", None), "glue": ("nyu-mll/glue", "sst2")}
AG_NEWS = "fancyzhx/ag_news"
AG_NEWS_SPORTS = 1  # AG News labels: 0 World, 1 Sports, 2 Business, 3 Sci/Tech.
TOXIGEN = ("toxigen/toxigen-data", "annotated")


def _texts(values: list, name: str) -> list[str]:
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise ValueError(f"{name!r} row {i} holds {type(value).__name__}, not text.")
  return [v.strip() for v in values]


def sst2_task(num_examples: int | None = None, seed: int = 0, split: str = "train",
              source: str = "stanfordnlp/sst2", balance: bool = True, revision: str | None = None) -> Task:
  """SST-2 sentiment: 1 = positive, 0 = negative. source: "stanfordnlp/sst2" or "glue" (nyu-mll/glue sst2).

  The test split has no labels (-1); use "train" (67,349 phrases) or "validation" (872 sentences).
  """
  if source not in SST2_SOURCES:
    raise ValueError(f"SST-2 source={source!r} is unknown; use one of {sorted(SST2_SOURCES)}.")
  name, config = SST2_SOURCES[source]
  dataset = load_hf_dataset(name, split, config, revision)
  texts = _texts(hf_column(dataset, "sentence", name), name)
  labels = np.asarray(hf_column(dataset, "label", name), dtype=np.int64)
  keep = np.isin(labels, (0, 1))
  if not keep.any():
    raise ValueError(f"{name!r} split {split!r} has no labels (its labels are -1); use 'train' or "
                     "'validation'.")
  texts = [t for t, k in zip(texts, keep) if k]
  texts, labels = sample_examples(texts, labels[keep], num_examples, seed, balance, source=f"SST-2 {split}")
  return Task(texts, labels, "sst2", f"SST-2 sentiment ({name}, {split}): 1 = positive, 0 = negative.")


def ag_news_sports_task(num_examples: int | None = None, seed: int = 0, split: str = "train",
                        balance: bool = True, revision: str | None = None) -> Task:
  """AG News, sports vs the rest: 1 = Sports, 0 = World, Business or Sci/Tech."""
  dataset = load_hf_dataset(AG_NEWS, split, None, revision)
  texts = _texts(hf_column(dataset, "text", AG_NEWS), AG_NEWS)
  labels = (np.asarray(hf_column(dataset, "label", AG_NEWS), dtype=np.int64) == AG_NEWS_SPORTS)
  texts, labels = sample_examples(texts, labels.astype(np.int64), num_examples, seed, balance,
                                  source=f"AG News {split}")
  return Task(texts, labels, "ag_news_sports",
              f"AG News ({AG_NEWS}, {split}): 1 = Sports, 0 = World, Business or Sci/Tech.")


def toxigen_task(num_examples: int | None = None, seed: int = 0, split: str = "train",
                 threshold: float = 3.0, balance: bool = True, revision: str | None = None) -> Task:
  """ToxiGen (annotated): 1 = toxic, toxicity_human >= threshold (the study's rule, 1..5 scale), else 0.

  toxigen/toxigen-data is gated on the Hub: accept its terms and log in before the first download.
  """
  name, config = TOXIGEN
  dataset = load_hf_dataset(name, split, config, revision)
  texts = _texts(hf_column(dataset, "text", name), name)
  scores = np.asarray(hf_column(dataset, "toxicity_human", name), dtype=np.float64)
  labels = (scores >= threshold).astype(np.int64)
  texts, labels = sample_examples(texts, labels, num_examples, seed, balance, source=f"ToxiGen {split}")
  return Task(texts, labels, "toxigen",
              f"ToxiGen annotated ({split}): 1 = toxic (toxicity_human >= {threshold}), 0 = not.")
