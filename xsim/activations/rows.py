"""Which token positions make up each sample row, chosen by character offsets so models with different
tokenizers agree on what a sample is.

A text is tokenized once (with its offsets); each pooling mode turns it into rows, each a list of token indices
(pooled with equal weights) and the character span the row stands for:
  last      the last non-special token
  last_word the last token of the last whole word (punctuation trimmed), span = that word
  mean      all usable tokens, span = the text after the first word
  words     one row per word (tokens overlapping it), span = the word
  tokens    one row per non-special token (single-model analyses; rows do not pair across tokenizers)
BOS and position 0 are left out of every row unless keep_bos=True: they carry massive activations (STUDY.md).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from xsim.data.text import word_spans

POOLINGS = ("last", "last_word", "mean", "words", "tokens")
INDEX_DTYPE = np.dtype([("text", np.int64), ("word", np.int32), ("token", np.int32), ("char_start", np.int32),
                        ("char_end", np.int32)])


@dataclasses.dataclass(frozen=True)
class TokenizedText:
  """ids: [T] token ids; spans: [T, 2] character offsets; special: [T] True for BOS/EOS/other added tokens."""
  ids: np.ndarray
  spans: np.ndarray
  special: np.ndarray


MIN_SEQ = 16  # the shortest padded length: shorter texts share one compiled shape


def padded_length(n: int, minimum: int = MIN_SEQ) -> int:
  """Smallest power of two >= max(n, minimum): the padded length of a batch whose longest row has n tokens (a few
  shapes, so few compilations)."""
  return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def pad_id(tokenizer) -> int:
  """The id to fill padding with: the tokenizer's pad token, or 0 (padded positions are masked anyway)."""
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def tokenize(tokenizer, text: str) -> TokenizedText:
  """Tokenizes one full text (no truncation) with the model's own special-token behaviour and offsets."""
  if not getattr(tokenizer, "is_fast", False):
    raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; character offsets need one "
                     "(load it with use_fast=True).")
  enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                  truncation=False)
  return TokenizedText(ids=np.asarray(enc["input_ids"], np.int64),
                       spans=np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2),
                       special=np.asarray(enc["special_tokens_mask"], bool))


def sample_rows(tok: TokenizedText, text: str, pooling: str, keep_bos: bool = False):
  """Rows of one text: list of (token indices, (char_start, char_end), word index or -1, token index or -1).

  Without keep_bos, special tokens and every token touching the first word are left out. Excluding by
  characters, not by position, keeps models with and without BOS on the same spans: position 0 is dropped in
  both, and so is the first word, whose tokens sit at position 0 in a model without BOS.
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")
  all_words = word_spans(text)
  spans = tok.spans
  first_word_end = 0 if keep_bos or not all_words else all_words[0][1]
  if keep_bos:
    usable = np.ones(len(spans), bool)
  else:
    usable = ~tok.special & (spans[:, 1] > spans[:, 0]) & (spans[:, 0] >= first_word_end)
  positions = np.flatnonzero(usable)
  if not len(positions):
    return []
  if pooling == "last":
    return [([positions[-1]], tuple(spans[positions[-1]]), -1, -1)]
  if pooling == "mean":
    return [(list(positions), (first_word_end, len(text)), -1, -1)]
  if pooling == "tokens":
    return [([p], tuple(spans[p]), -1, int(p)) for p in positions]
  if pooling == "last_word":
    words = list(enumerate(word_spans(text, strip_punctuation=True)))[-1:]
  else:
    words = list(enumerate(all_words))
  rows = []
  for w, (start, end) in words:
    inside = [int(p) for p in positions if spans[p, 0] < end and spans[p, 1] > start]
    if inside:
      rows.append((inside[-1:] if pooling == "last_word" else inside, (start, end), w, -1))
  return rows

