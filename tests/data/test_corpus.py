"""Tests for xsim/data/corpus.py (the packaged SOTU corpus) and xsim/data/make_sotu_corpus.py (its builder)."""
import csv
import gzip
import json
import os

import numpy as np
import pytest

from xsim.data import corpus, make_sotu_corpus
from xsim.data.corpus import corpus_documents, load_corpus, split_passages
from xsim.data.text import normalize_whitespace


@pytest.fixture(scope="module")
def default_passages():
  return load_corpus()


def test_packaged_file_holds_the_documented_addresses():
  path = os.path.join(os.path.dirname(corpus.__file__), "corpora", "sotu.jsonl.gz")
  assert os.path.getsize(path) < 5 * 2**20
  with gzip.open(path, "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 126
  assert len({r["id"] for r in records}) == 126
  assert all(r["year"] >= 1900 for r in records)
  assert records[0]["id"] == "1900-McKinley-1" and records[-1]["year"] == 2026
  assert corpus_documents("sotu") == [r["text"] for r in records]
  readme = open(os.path.join(os.path.dirname(path), "README.md"), encoding="utf-8").read()
  assert "public domain" in readme and "sotu" in readme


def test_default_passages_meet_the_size_and_normalization_contract(default_passages):
  assert len(default_passages) > 5000
  lengths = np.array([len(p) for p in default_passages])
  assert lengths.min() >= 200 and lengths.max() <= 1000
  assert len(set(default_passages)) == len(default_passages)
  assert all(p == normalize_whitespace(p) for p in default_passages)


def test_passages_are_verbatim_spans_of_the_documents(default_passages):
  documents = [normalize_whitespace(d) for d in corpus_documents("sotu")]
  rng = np.random.default_rng(0)
  for i in rng.choice(len(default_passages), size=100, replace=False):
    assert any(default_passages[i] in d for d in documents)


def test_load_corpus_is_deterministic_and_prefix_stable(default_passages):
  first = load_corpus(num_passages=300, seed=0)
  assert first == load_corpus(num_passages=300, seed=0)
  assert first == default_passages[:300]
  assert load_corpus(num_passages=50, seed=0) == first[:50]
  other_seed = load_corpus(num_passages=300, seed=1)
  assert other_seed != first and len(other_seed) == 300


@pytest.mark.parametrize("min_chars, max_chars", [(50, 200), (500, 1500)])
def test_load_corpus_sizes(min_chars, max_chars):
  passages = load_corpus(num_passages=2000, min_chars=min_chars, max_chars=max_chars, seed=3)
  assert len(passages) == 2000
  assert all(min_chars <= len(p) <= max_chars for p in passages)


def test_load_corpus_rejects_bad_requests():
  with pytest.raises(ValueError, match="unknown corpus"):
    load_corpus("wikitext")
  with pytest.raises(ValueError, match="min_chars <= max_chars"):
    load_corpus(min_chars=500, max_chars=100)
  with pytest.raises(ValueError, match="num_passages"):
    load_corpus(num_passages=0)
  with pytest.raises(ValueError, match="fewer than num_passages"):
    load_corpus(num_passages=10**6)


def test_split_passages_merges_short_paragraphs_and_splits_long_ones():
  short = ["Short one.", "Another short paragraph here.", "Third."]
  long_sentences = [f"Sentence number {i} says nothing in particular." for i in range(12)]
  document = "\n\n".join(short) + "\n\n" + " ".join(long_sentences) + "\n\n  Tail.  "
  passages = split_passages(document, min_chars=45, max_chars=120)
  # The three short paragraphs are joined into one passage of at least min_chars.
  assert passages[0] == "Short one. Another short paragraph here. Third."
  # The long paragraph is cut at sentence ends into pieces within the limits.
  assert all(45 <= len(p) <= 120 for p in passages)
  assert all(p.endswith(".") for p in passages)
  # Only the final, too short "Tail." is dropped; everything else is kept in order.
  assert " ".join(passages) == normalize_whitespace(document)[:-len(" Tail.")]


def test_split_passages_never_crosses_limits_on_words_without_sentence_ends():
  document = " ".join(f"word{i}" for i in range(500))
  passages = split_passages(document, min_chars=20, max_chars=64)
  assert all(20 <= len(p) <= 64 for p in passages)
  assert " ".join(passages).split() == document.split()[:len(" ".join(passages).split())]


def _write_fake_sotu(data_dir):
  os.makedirs(os.path.join(data_dir, "speeches"))
  rows = [
      ("1950-B-1", "1950", "1950-01-04", "Bee Bee", "True", "Second.\n\nParagraph two."),
      ("1899-A-1", "1899", "1899-12-05", "Ay Ay", "True", "Too early."),
      ("1949-C-1", "1949", "1949-01-05", "Cee Cee", "True", "First address.\r\n\r\nMore text.\n"),
      ("1951-D-1", "1951", "1951-02-01", "Dee Dee", "False", "Not a SOTU."),
  ]
  with open(os.path.join(data_dir, "metadata.csv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["fileid", "year", "date", "president_full", "is_sotu"])
    for fileid, year, date, president, is_sotu, text in rows:
      writer.writerow([fileid, year, date, president, is_sotu])
      with open(os.path.join(data_dir, "speeches", fileid + ".txt"), "w", encoding="utf-8", newline="") as g:
        g.write(text)


def test_builder_keeps_canonical_addresses_by_date_and_is_byte_reproducible(tmp_path):
  data_dir = str(tmp_path / "data")
  _write_fake_sotu(data_dir)
  out1, out2 = str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.gz")
  make_sotu_corpus.main(["--data_dir", data_dir, "--first_year", "1900", "--output", out1])
  make_sotu_corpus.main(["--data_dir", data_dir, "--first_year", "1900", "--output", out2])
  assert open(out1, "rb").read() == open(out2, "rb").read()
  with gzip.open(out1, "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert records == [
      {"id": "1949-C-1", "year": 1949, "president": "Cee Cee", "text": "First address.\n\nMore text."},
      {"id": "1950-B-1", "year": 1950, "president": "Bee Bee", "text": "Second.\n\nParagraph two."},
  ]


def test_builder_explains_a_missing_data_dir(tmp_path):
  with pytest.raises(ValueError, match="metadata.csv"):
    make_sotu_corpus.read_addresses(str(tmp_path), 1900)
