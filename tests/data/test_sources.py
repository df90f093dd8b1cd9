"""Tests for xsim/data/sources.py: text and JSONL files, and HF loading with a fake `datasets` (no network)."""
import gzip
import sys
import types

import pytest

from xsim.data import sources
from xsim.errors import InputError
from xsim.data.sources import (DataUnavailableError, load_hf_texts, load_jsonl_texts, load_pile_10k,
                               load_text_file, save_jsonl_texts)
from tests.data.fakes import FakeDataset

TRICKY = ["plain", "  spaces around  ", "two\nlines", 'quote " and \\ backslash', "Zoë 東京 🙂", "\ttab", ""]




def install_fake_datasets(monkeypatch, load_dataset):
  module = types.ModuleType("datasets")
  module.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", module)


def test_text_file_one_passage_per_line(tmp_path):
  path = tmp_path / "texts.txt"
  path.write_text("first passage\r\n\n   \nsecond one  \n\tthird\n", encoding="utf-8")
  assert load_text_file(path) == ["first passage", "second one", "third"]
  assert load_text_file(path, num_texts=2) == ["first passage", "second one"]
  passages = ["Alpha beta.", "Gamma, delta!", "Zoë 東京"]
  path.write_text("\n".join(passages) + "\n", encoding="utf-8")
  assert load_text_file(path) == passages


def test_text_file_blank_line_separated_round_trip(tmp_path):
  passages = ["A paragraph\nwith a line break.", "Second paragraph.", "Third\nparagraph\nhere."]
  path = tmp_path / "paragraphs.txt"
  path.write_text("\n\n".join(passages).replace("\n\n", "\n  \n\n") + "\n", encoding="utf-8")
  assert load_text_file(path, separator="blank_line") == passages
  gz_path = tmp_path / "paragraphs.txt.gz"
  with gzip.open(gz_path, "wt", encoding="utf-8") as f:
    f.write("\r\n\r\n".join(p.replace("\n", "\r\n") for p in passages))
  assert load_text_file(gz_path, separator="blank_line") == passages


def test_text_file_rejects_bad_arguments(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("one\ntwo\n", encoding="utf-8")
  with pytest.raises(ValueError, match="separator"):
    load_text_file(path, separator="paragraph")
  with pytest.raises(ValueError, match="fewer than num_texts=3"):
    load_text_file(path, num_texts=3)
  with pytest.raises(ValueError, match="positive int"):
    load_text_file(path, num_texts=0)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_round_trip_is_exact(tmp_path, suffix):
  path = tmp_path / ("texts" + suffix)
  save_jsonl_texts(path, TRICKY)
  assert load_jsonl_texts(path) == TRICKY
  assert load_jsonl_texts(path, num_texts=2) == TRICKY[:2]
  save_jsonl_texts(path, TRICKY, field="sentence")
  assert load_jsonl_texts(path, field="sentence") == TRICKY


def test_jsonl_errors_name_the_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n\n{"body": "no text field"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"line 3 has no field 'text' \(found \['body'\]\)"):
    load_jsonl_texts(path)
  path.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
  with pytest.raises(ValueError, match="line 2 is not valid JSON"):
    load_jsonl_texts(path)
  path.write_text('{"text": 5}\n', encoding="utf-8")
  with pytest.raises(ValueError, match="line 1: field 'text' is int"):
    load_jsonl_texts(path)
  with pytest.raises(ValueError, match="single string"):
    save_jsonl_texts(path, "one string")


@pytest.mark.parametrize("content, line, named", [
    ('{"text": "ok"}\nnot json\n', 2, "is not valid JSON"),
    ('{"text": "ok"}\n\n{"body": "no text field"}\n', 3, "has no field 'text'"),
])
def test_jsonl_bad_line_is_an_input_error_naming_file_and_line(tmp_path, content, line, named):
  path = tmp_path / "bad.jsonl"
  path.write_text(content, encoding="utf-8")
  with pytest.raises(InputError, match=rf"^{path} line {line} {named}"):
    load_jsonl_texts(path)


# "Zoë" in Latin-1 (ë = 0xEB) after 11 good UTF-8 bytes (two of them the "é"): byte 11, on line 2.
NOT_UTF8 = "café ok\nZo".encode("utf-8") + b"\xeb\n"


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_text_file_not_utf8_names_file_and_byte_offset(tmp_path, suffix):
  path = tmp_path / ("latin1" + suffix)
  with (gzip.open if suffix.endswith(".gz") else open)(path, "wb") as f:
    f.write(NOT_UTF8)
  decompressed = "of its decompressed content " if suffix.endswith(".gz") else ""
  with pytest.raises(InputError, match=rf"^{path} is not UTF-8 text: byte 11 {decompressed}\(line 2\)"):
    load_text_file(path)


def test_jsonl_not_utf8_names_file_and_byte_offset(tmp_path):
  path = tmp_path / "latin1.jsonl"
  good = '{"text": "naïve"}\n'.encode("utf-8")
  path.write_bytes(good * 2 + b'{"text": "caf\xe9"}\n')
  offset = 2 * len(good) + len(b'{"text": "caf')
  with pytest.raises(InputError, match=rf"^{path} is not UTF-8 text: byte {offset} \(line 3\)"):
    load_jsonl_texts(path)


def test_not_utf8_offset_is_exact_across_read_chunks(tmp_path):
  """The offset counts every byte before the bad one, also past the 1 MiB read chunks and when a 3-byte character
  straddles a chunk boundary; a character cut off by the end of the file is named where it starts."""
  path = tmp_path / "big.txt"
  head = b"a\n" * (2**19 - 1) + b"a" + "東".encode("utf-8")  # "東" spans bytes 2**20 - 1 .. 2**20 + 1
  path.write_bytes(head + b"\xff")
  with pytest.raises(InputError, match=rf"byte {len(head)} \(line {2**19}\)"):
    load_text_file(path)
  path.write_bytes(head + "東".encode("utf-8")[:2])
  with pytest.raises(InputError, match=rf"byte {len(head)} \(line {2**19}\)"):
    load_text_file(path)


def test_hf_loader_without_datasets_names_offline_alternatives(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
  with pytest.raises(DataUnavailableError, match="`datasets` package, which is not installed") as info:
    load_pile_10k(10)
  assert "load_corpus('sotu')" in str(info.value) and "NeelNanda/pile-10k" in str(info.value)


def _offline_errors():
  errors = [ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)"),
            FileNotFoundError("Dataset 'x' doesn't exist on the Hub or cannot be accessed.")]
  for module_name in ("httpx", "httpx2"):
    try:
      module = __import__(module_name)
    except ImportError:
      continue
    errors.append(module.ConnectError("[Errno -2] Name or service not known"))
  return errors


@pytest.mark.parametrize("error", _offline_errors(), ids=lambda e: type(e).__name__)
def test_hf_loader_offline_gives_a_clear_error(monkeypatch, error):
  def load_dataset(*args, **kwargs):
    raise error

  install_fake_datasets(monkeypatch, load_dataset)
  with pytest.raises(DataUnavailableError, match="unreachable, or offline mode is on") as info:
    load_hf_texts("some/dataset", split="train")
  message = str(info.value)
  assert "'some/dataset'" in message and type(error).__name__ in message and "load_corpus('sotu')" in message
  assert info.value.__cause__ is error


def test_hf_loader_lets_other_errors_through(monkeypatch):
  def load_dataset(*args, **kwargs):
    raise ValueError('Unknown split "tarin". Should be one of [\'train\'].')

  install_fake_datasets(monkeypatch, load_dataset)
  with pytest.raises(ValueError, match="Unknown split"):
    load_hf_texts("some/dataset", split="tarin")


def test_hf_texts_and_pile_10k_read_the_named_column(monkeypatch):
  calls = []

  def load_dataset(name, config=None, split=None, revision=None):
    calls.append((name, config, split, revision))
    return FakeDataset({"text": ["doc one", "doc two", "doc three"], "meta": [{}, {}, {}]})

  install_fake_datasets(monkeypatch, load_dataset)
  assert load_pile_10k() == ["doc one", "doc two", "doc three"]
  assert load_pile_10k(num_texts=2, revision="abc") == ["doc one", "doc two"]
  assert calls == [(sources.PILE_10K, None, "train", None), (sources.PILE_10K, None, "train", "abc")]
  with pytest.raises(ValueError, match=r"no column 'body'; its columns are \['text', 'meta'\]"):
    load_hf_texts("x", field="body")
  with pytest.raises(ValueError, match="column 'meta' row 0 is dict"):
    load_hf_texts("x", field="meta")
