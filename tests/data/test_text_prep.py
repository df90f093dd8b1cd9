"""Tests for xsim/data/text.py: word spans, cuts before tokenization, next-word splits and text hashes."""
import hashlib
import unicodedata

import numpy as np
import pytest

from xsim.data.text import cut_text, next_word_split, normalize_whitespace, text_hash, word_spans

# Characters for random texts: letters, punctuation, ASCII and Unicode whitespace, accents.
_ALPHABET = list("abcXYZ.,;!?'\"-()") + [" ", " ", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "é", "ß"]


def _random_texts(seed, count=300, max_len=60):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(_ALPHABET, size=rng.integers(0, max_len))) for _ in range(count)]


def _reference_word_ends(text):
  """Ends of the whitespace-delimited words, by a plain character scan."""
  ends = []
  for i, char in enumerate(text):
    if not char.isspace() and (i + 1 == len(text) or text[i + 1].isspace()):
      ends.append(i + 1)
  return ends


def _reference_cut(text, max_chars, max_words):
  ends = _reference_word_ends(text)
  fits_words = max_words is None or len(ends) <= max_words
  fits_chars = max_chars is None or len(text) <= max_chars
  if fits_words and fits_chars:
    return text
  best = 0
  for count, end in enumerate(ends, start=1):
    if (max_words is None or count <= max_words) and (max_chars is None or end <= max_chars):
      best = end
  return text[:best]


def test_word_spans_are_exactly_the_words_of_str_split():
  for text in _random_texts(0):
    spans = word_spans(text)
    assert [text[s:e] for s, e in spans] == text.split()
    covered = np.zeros(len(text), bool)
    for start, end in spans:
      covered[start:end] = True
    # Every character outside the spans is whitespace, none inside is.
    assert all(c.isspace() != covered[i] for i, c in enumerate(text))


def test_word_spans_keep_attached_punctuation_by_default():
  text = 'The city of Paris is in France. "Yes" -- ok'
  assert [text[s:e] for s, e in word_spans(text)] == [
      "The", "city", "of", "Paris", "is", "in", "France.", '"Yes"', "--", "ok"]


def test_word_spans_strip_punctuation_matches_reference():
  def reference(text):
    words = []
    for word in text.split():
      while word and unicodedata.category(word[0])[0] == "P":
        word = word[1:]
      while word and unicodedata.category(word[-1])[0] == "P":
        word = word[:-1]
      if word:
        words.append(word)
    return words

  text = '"Hello," she said -- (really?) ok.'
  assert [text[s:e] for s, e in word_spans(text, strip_punctuation=True)] == ["Hello", "she", "said",
                                                                                 "really", "ok"]
  for text in _random_texts(1):
    assert [text[s:e] for s, e in word_spans(text, strip_punctuation=True)] == reference(text)


def test_cut_text_examples():
  text = "The city of Paris is in France."
  assert cut_text(text, max_chars=12) == "The city of"
  assert cut_text(text, max_chars=11) == "The city of"
  assert cut_text(text, max_chars=10) == "The city"
  assert cut_text(text, max_words=2) == "The city"
  assert cut_text(text, max_chars=100, max_words=3) == "The city of"
  assert cut_text(text, max_chars=100) == text
  assert cut_text(text, max_words=7) == text
  assert cut_text("Supercalifragilistic words", max_chars=5) == ""
  assert cut_text("  lead and trail  ", max_chars=100) == "  lead and trail  "
  assert cut_text("  lead and trail  ", max_words=2) == "  lead and"


def test_cut_text_is_a_prefix_ending_at_a_word_end_and_matches_reference():
  rng = np.random.default_rng(2)
  for text in _random_texts(3):
    max_chars = None if rng.random() < 0.3 else int(rng.integers(1, 70))
    max_words = None if rng.random() < 0.3 else int(rng.integers(1, 12))
    cut = cut_text(text, max_chars=max_chars, max_words=max_words)
    assert cut == _reference_cut(text, max_chars, max_words)
    assert text.startswith(cut)
    if cut != text:
      # Never mid-word: the cut ends a word and the next character is whitespace.
      assert cut == "" or (not cut[-1].isspace() and text[len(cut)].isspace())
      assert max_chars is None or len(cut) <= max_chars
      assert max_words is None or len(cut.split()) <= max_words


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "10"])
def test_cut_text_rejects_bad_limits(bad):
  with pytest.raises(ValueError, match="positive int"):
    cut_text("some text", max_chars=bad)
  with pytest.raises(ValueError, match="positive int"):
    cut_text("some text", max_words=bad)


def test_next_word_split():
  prefix, continuation = next_word_split("The cat sat on the mat.", 2)
  assert (prefix, continuation) == ("The cat", " sat on the mat.")
  for text in _random_texts(4):
    n_words = len(text.split())
    for max_words in (1, 3):
      if n_words <= max_words:
        with pytest.raises(ValueError, match="nothing follows"):
          next_word_split(text, max_words)
        continue
      prefix, continuation = next_word_split(text, max_words)
      assert prefix + continuation == text
      assert prefix.split() == text.split()[:max_words]
      assert continuation[0].isspace()
      # The label comes from the next word, never from the last word of the prefix.
      assert continuation.split()[0] == text.split()[max_words]
  with pytest.raises(ValueError, match="positive int"):
    next_word_split("a b c", 0)


def _reference_hash(texts):
  digest = hashlib.sha256(b"xsim.text_hash.v1\0")
  for text in texts:
    data = text.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little") + data)
  digest.update(len(texts).to_bytes(8, "little"))
  return digest.hexdigest()


def test_text_hash_matches_reference_and_is_sensitive():
  texts = ["The city of Paris is in France.", "Zoë 東京", ""]
  assert text_hash(texts) == _reference_hash(texts)
  assert text_hash(tuple(texts)) == text_hash(texts)
  variants = [texts, texts[::-1], texts[:2], texts + [""], ["The city of Paris is in France!", *texts[1:]],
              ["ab", "c"], ["a", "bc"], ["abc"], [], [""]]
  hashes = {text_hash(v) for v in variants}
  assert len(hashes) == len(variants)
  assert text_hash(texts) == text_hash(list(texts))


def test_text_hash_rejects_a_bare_string_and_non_strings():
  with pytest.raises(ValueError, match="single string"):
    text_hash("abc")
  with pytest.raises(ValueError, match=r"texts\[1\]"):
    text_hash(["a", 3])


def test_normalize_whitespace():
  assert normalize_whitespace("  a\n\n b\t\u00a0c  ") == "a b c"
  for text in _random_texts(5):
    assert normalize_whitespace(text) == " ".join(text.split())
