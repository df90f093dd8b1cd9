"""Offline English corpora that ship with xsim, split into passages deterministically.

"sotu": the 126 U.S. Presidential Annual Messages and State of the Union Addresses of 1900-2026, public
domain (xsim/data/corpora/README.md gives source, licence and how the file was built): 6.2 million
characters (1.0 million words) of real English prose in 15,875 paragraphs, about 12,600 passages of
200..1000 characters, with no network and no extra package.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import re

import numpy as np

from xsim.data.text import normalize_whitespace

_CORPORA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# Whitespace after . ! or ?, or after one of them plus a closing quote or bracket, ends a sentence,
# except after a title abbreviation ("Mr. Speaker").
_SENTENCE_END = re.compile(
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)"
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+")


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
  filename: str
  description: str


CORPORA = {
    "sotu": CorpusInfo(
        "sotu.jsonl.gz",
        "U.S. State of the Union addresses and annual messages, 1900-2026 (public domain)"),
}


@functools.lru_cache(maxsize=None)
def _documents(name: str) -> tuple[str, ...]:
  """The documents of a packaged corpus, in file order (cached: the file is read once per process)."""
  path = os.path.join(_CORPORA_DIR, CORPORA[name].filename)
  if not os.path.exists(path):
    raise ValueError(f"corpus file {path} is missing; reinstall xsim with its package data "
                     "(pip install -e . from the repository).")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return tuple(json.loads(line)["text"] for line in f if line.strip())


def _chunks(paragraph: str, max_chars: int) -> list[str]:
  """Splits one whitespace-normalized paragraph into pieces of at most max_chars characters.

  Whole sentences are packed greedily; a sentence longer than max_chars is packed word by word instead.
  A single word longer than max_chars (a URL, a table row without spaces) is dropped.
  """
  if len(paragraph) <= max_chars:
    return [paragraph]
  units = []
  for sentence in _SENTENCE_END.split(paragraph):
    units.extend([sentence] if len(sentence) <= max_chars else sentence.split(" "))
  pieces, current = [], ""
  for unit in units:
    if not unit or len(unit) > max_chars:
      continue
    if current and len(current) + 1 + len(unit) <= max_chars:
      current += " " + unit
    else:
      if current:
        pieces.append(current)
      current = unit
  if current:
    pieces.append(current)
  return pieces


def split_passages(document: str, min_chars: int, max_chars: int) -> list[str]:
  """One document -> passages of min_chars..max_chars characters, whitespace normalized, in order.

  Paragraphs (blank-line separated) are the unit: one longer than max_chars is split at sentence
  boundaries (`_chunks`), and consecutive short ones are joined with a space until the passage reaches
  min_chars without passing max_chars. A passage still shorter than min_chars (the end of a document, or a
  short paragraph followed by a long one) is dropped. Passages never cross documents.
  """
  passages, current = [], ""
  for paragraph in _PARAGRAPH_BREAK.split(document):
    for piece in _chunks(normalize_whitespace(paragraph), max_chars):
      if current and len(current) < min_chars and len(current) + 1 + len(piece) <= max_chars:
        current += " " + piece
        continue
      if len(current) >= min_chars:
        passages.append(current)
      current = piece
  if len(current) >= min_chars:
    passages.append(current)
  return passages


def load_corpus(name: str = "sotu", num_passages: int | None = None, min_chars: int = 200,
                max_chars: int = 1000, seed: int = 0) -> list[str]:
  """Passages of a packaged corpus: distinct, whitespace normalized, min_chars <= len <= max_chars.

  All passages of the corpus (split by `split_passages`, exact duplicates removed, first kept) are put in a
  seeded random order and the first `num_passages` returned (all when None), so the result depends only on
  the arguments, and a smaller request is a prefix of a larger one with the same seed. The random order
  means a split by position (first 80% / last 20%) mixes documents and years.
  """
  if name not in CORPORA:
    raise ValueError(f"unknown corpus {name!r}; available: {sorted(CORPORA)}. For other text use "
                     "xsim.data.load_text_file, load_jsonl_texts or load_hf_texts.")
  if not (isinstance(min_chars, int) and isinstance(max_chars, int) and 1 <= min_chars <= max_chars):
    raise ValueError(f"need integers 1 <= min_chars <= max_chars, got min_chars={min_chars!r}, "
                     f"max_chars={max_chars!r}.")
  if num_passages is not None and (not isinstance(num_passages, int) or num_passages < 1):
    raise ValueError(f"num_passages={num_passages!r} must be a positive int, or None for all passages.")
  passages = list(dict.fromkeys(
      p for doc in _documents(name) for p in split_passages(doc, min_chars, max_chars)))
  if num_passages is not None and num_passages > len(passages):
    raise ValueError(
        f"corpus {name!r} has {len(passages)} passages of {min_chars}..{max_chars} characters, fewer than "
        f"num_passages={num_passages}; lower min_chars or raise max_chars, or ask for fewer.")
  order = np.random.default_rng(seed).permutation(len(passages))
  if num_passages is not None:
    order = order[:num_passages]
  return [passages[i] for i in order]


def corpus_documents(name: str = "sotu") -> list[str]:
  """The raw documents of a packaged corpus (no splitting or normalization), in file order."""
  if name not in CORPORA:
    raise ValueError(f"unknown corpus {name!r}; available: {sorted(CORPORA)}.")
  return list(_documents(name))

