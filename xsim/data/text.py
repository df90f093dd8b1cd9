"""Text preparation shared by every model: cuts, word spans and hashes, all in characters.

Models are compared on paired samples, so every model must see the identical string. The published study cut
texts at 128 *tokens*, which ends at a different place for each tokenizer (STUDY.md, point 1); here texts are
cut by characters or whole words before any tokenizer sees them, and positions are character offsets.

Word rule (used by every function here): a word is a maximal run of non-whitespace characters, where
whitespace is what `str.isspace` accepts, so `word_spans(t)` lists exactly the words of `t.split()`.
Punctuation attached to a word belongs to it ("France." is one word); punctuation standing between spaces
is a word of its own. `word_spans(..., strip_punctuation=True)` trims leading and trailing punctuation
(Unicode categories P*) off each span and drops spans that were punctuation only.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Sequence

_WORD = re.compile(r"\S+")
_WHITESPACE = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
  """Collapses every run of whitespace (newlines included) to one space and strips both ends."""
  return _WHITESPACE.sub(" ", text).strip()


def _is_punctuation(char: str) -> bool:
  return unicodedata.category(char).startswith("P")


def word_spans(text: str, strip_punctuation: bool = False) -> list[tuple[int, int]]:
  """Character spans [start, end) of the words of `text` (module docstring: the word rule).

  Returns: [(start, end)] in text order; `text[start:end]` is a word. With strip_punctuation, leading and
  trailing punctuation is trimmed off each span and punctuation-only words are dropped.
  """
  if not isinstance(text, str):
    raise ValueError(f"word_spans needs a str, got {type(text).__name__}.")
  spans = [m.span() for m in _WORD.finditer(text)]
  if not strip_punctuation:
    return spans
  trimmed = []
  for start, end in spans:
    while start < end and _is_punctuation(text[start]):
      start += 1
    while end > start and _is_punctuation(text[end - 1]):
      end -= 1
    if start < end:
      trimmed.append((start, end))
  return trimmed


def _check_limit(name: str, value: int | None) -> None:
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
    raise ValueError(f"{name}={value!r} must be a positive int, or None for no limit.")


def cut_text(text: str, max_chars: int | None = None, max_words: int | None = None) -> str:
  """The longest prefix of `text` that ends at a word end and meets both limits; never cuts mid-word.

  A text already within both limits comes back unchanged (trailing whitespace included). Otherwise the
  result is `text[:end]`, where `end` is the end of the last word that keeps at most `max_words` words and
  at most `max_chars` characters (leading whitespace counts). It is "" when the first word alone is longer
  than `max_chars`; callers drop such texts.
  """
  if not isinstance(text, str):
    raise ValueError(f"cut_text needs a str, got {type(text).__name__}.")
  _check_limit("max_chars", max_chars)
  _check_limit("max_words", max_words)
  spans = word_spans(text)
  too_many_words = max_words is not None and len(spans) > max_words
  too_many_chars = max_chars is not None and len(text) > max_chars
  if not (too_many_words or too_many_chars):
    return text
  if max_words is not None:
    spans = spans[:max_words]
  end = 0
  for _, word_end in spans:
    if max_chars is not None and word_end > max_chars:
      break
    end = word_end
  return text[:end]


def next_word_split(text: str, max_words: int) -> tuple[str, str]:
  """Splits `text` after its first `max_words` words: (prefix, continuation), prefix + continuation == text.

  Next-token labels must come from the continuation, the text after the cut, never from the last token of
  the prefix (the published study fell back to the current token when a cut text had no next one; STUDY.md,
  point 2). The continuation keeps the whitespace that follows the cut, because most tokenizers fold a
  leading space into the next token. Raises ValueError when the text has no word after the first
  `max_words`; keep only texts with `len(word_spans(text)) > max_words`.
  """
  if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
    raise ValueError(f"max_words={max_words!r} must be a positive int.")
  spans = word_spans(text)
  if len(spans) <= max_words:
    raise ValueError(
        f"text has {len(spans)} words, so nothing follows the first max_words={max_words} to label; "
        f"keep only texts with more than {max_words} words (len(word_spans(text)) > max_words).")
  end = spans[max_words - 1][1]
  return text[:end], text[end:]


def text_hash(texts: Sequence[str]) -> str:
  """SHA-256 hex digest of the exact strings, in order; keys activation stores to the texts they hold.

  Each string is hashed as its UTF-8 byte length followed by its bytes, so different splits of the same
  characters (["ab", "c"] vs ["a", "bc"]) hash differently.
  """
  if isinstance(texts, (str, bytes)):
    raise ValueError("text_hash needs a sequence of str, got a single string; wrap it as [text].")
  digest = hashlib.sha256()
  digest.update(b"xsim.text_hash.v1\0")
  count = 0
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"text_hash: texts[{i}] is {type(text).__name__}, not str.")
    data = text.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
    count += 1
  digest.update(count.to_bytes(8, "little"))
  return digest.hexdigest()
