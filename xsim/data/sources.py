"""Text sources: plain text files, JSONL files and Hugging Face `datasets` (with a clear offline error).

Local files are the way to run on a machine without Hub access: fetch a dataset once where the Hub is
reachable, `save_jsonl_texts` it, and load the file anywhere. Paths ending in ".gz" are read gzipped.
"""
from __future__ import annotations

import codecs
import contextlib
import gzip
import importlib
import json
import os
import re
from typing import Any, Sequence

from xsim.errors import InputError

PILE_10K = "NeelNanda/pile-10k"

OFFLINE_ALTERNATIVES = (
    "Offline alternatives: xsim.data.load_corpus('sotu') (English passages shipped with xsim); "
    "xsim.data.load_text_file / load_jsonl_texts on a local copy (make one where the Hub is reachable with "
    "xsim.data.save_jsonl_texts); the offline tasks 'cities', 'capitals', 'larger_than', 'smaller_than' "
    "of xsim.data.load_task.")

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


class DataUnavailableError(RuntimeError):
  """A data set cannot be loaded here: `datasets` is missing, or the Hub is unreachable and nothing is cached."""


def _open_text(path: str | os.PathLike, mode: str):
  path = os.fspath(path)
  if path.endswith(".gz"):
    return gzip.open(path, mode + "t", encoding="utf-8")
  return open(path, mode, encoding="utf-8")


@contextlib.contextmanager
def _reading(path: str | os.PathLike):
  """`path` opened as UTF-8 text; a byte that is not UTF-8 raises InputError naming its offset (see `_not_utf8`)."""
  try:
    with _open_text(path, "r") as f:
      yield f
  except UnicodeDecodeError as err:
    raise _not_utf8(path) from err


def _not_utf8(path: str | os.PathLike) -> InputError:
  """The error for a file that is not UTF-8, naming the byte offset (and line) of its first bad byte.

  Text-mode reading reports offsets within its current buffer, so the file is decoded again, in binary chunks.
  """
  path = os.fspath(path)
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = lines = 0
  with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
    while True:
      chunk = f.read(1 << 20)
      try:
        decoder.decode(chunk, final=not chunk)  # the final call refuses a character cut off by the file's end
      except UnicodeDecodeError as err:
        # err.object is the bytes of an unfinished character left from the last chunk, then this chunk.
        bad = err.start - (len(err.object) - len(chunk))
        offset, lines = offset + bad, lines + chunk[:max(bad, 0)].count(b"\n")
        break
      offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
  where = "of its decompressed content " if path.endswith(".gz") else ""
  return InputError(f"{path} is not UTF-8 text: byte {offset} {where}(line {lines + 1}) is not valid UTF-8. "
                    "Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or pass the right file.")


def _take(texts: list[str], num_texts: int | None, source: str) -> list[str]:
  if num_texts is None:
    return texts
  if not isinstance(num_texts, int) or num_texts < 1:
    raise ValueError(f"num_texts={num_texts!r} must be a positive int, or None for all texts.")
  if num_texts > len(texts):
    raise ValueError(f"{source} has {len(texts)} texts, fewer than num_texts={num_texts}; ask for fewer.")
  return texts[:num_texts]


def load_text_file(path: str | os.PathLike, separator: str = "line",
                   num_texts: int | None = None) -> list[str]:
  """Passages of a UTF-8 text file, in file order, each stripped of surrounding whitespace.

  separator: "line" (one passage per line) or "blank_line" (passages are blocks separated by blank lines;
  single newlines inside a block are kept). Empty passages are skipped. num_texts: the first n, or all.
  A file that is not UTF-8 raises InputError naming the byte offset of its first bad byte.
  """
  if separator not in ("line", "blank_line"):
    raise ValueError(f"separator={separator!r} is unknown; use 'line' or 'blank_line'.")
  with _reading(path) as f:
    content = f.read().replace("\r\n", "\n")
  parts = content.split("\n") if separator == "line" else _BLANK_LINES.split(content)
  texts = [p.strip() for p in parts if p.strip()]
  return _take(texts, num_texts, os.fspath(path))


def load_jsonl_texts(path: str | os.PathLike, field: str = "text", num_texts: int | None = None) -> list[str]:
  """The string `field` of each JSON object in a JSONL file (one object per line), exactly as stored.

  Blank lines are skipped; a line that is not a JSON object, lacks `field` or holds a non-string there
  raises InputError naming the line; a byte that is not UTF-8, one naming its offset.
  """
  texts = []
  with _reading(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as err:
        raise InputError(f"{os.fspath(path)} line {number} is not valid JSON ({err}).") from err
      if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise InputError(f"{os.fspath(path)} line {number} has no field {field!r} (found {keys}); "
                         "pass field= the name of the text field.")
      if not isinstance(record[field], str):
        raise InputError(f"{os.fspath(path)} line {number}: field {field!r} is "
                         f"{type(record[field]).__name__}, not a string.")
      texts.append(record[field])
  return _take(texts, num_texts, os.fspath(path))


def save_jsonl_texts(path: str | os.PathLike, texts: Sequence[str], field: str = "text") -> None:
  """Writes one JSON object {field: text} per line; `load_jsonl_texts` reads back the identical strings."""
  if isinstance(texts, str):
    raise ValueError("save_jsonl_texts needs a sequence of str, got a single string; wrap it as [text].")
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"texts[{i}] is {type(text).__name__}, not str.")
  with _open_text(path, "w") as f:
    for text in texts:
      f.write(json.dumps({field: text}, ensure_ascii=False) + "\n")


def _offline_error_types() -> tuple[type[BaseException], ...]:
  """Errors `datasets` raises when the Hub cannot be reached or offline mode finds nothing cached.

  OSError covers ConnectionError, requests' errors, huggingface_hub's OfflineModeIsEnabled and datasets'
  DatasetNotFoundError (a FileNotFoundError); huggingface_hub talks over httpx (httpx2 in its newest
  releases), whose transport errors are not OSErrors.
  """
  types: list[type[BaseException]] = [OSError]
  for module_name in ("httpx", "httpx2"):
    try:
      types.append(importlib.import_module(module_name).TransportError)
    except ImportError:
      pass
  return tuple(types)


def load_hf_dataset(name: str, split: str, config: str | None = None, revision: str | None = None) -> Any:
  """`datasets.load_dataset(name, config, split=split, revision=revision)`, or DataUnavailableError.

  The error says whether `datasets` is missing or the Hub is unreachable (offline mode, no network, a gated
  data set without a token) and names the offline alternatives.
  """
  where = f"{name!r}" + (f" (config {config!r})" if config else "") + f", split {split!r}"
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise DataUnavailableError(
        f"loading {where} from the Hugging Face Hub needs the `datasets` package, which is not installed; "
        f"`pip install datasets` on a machine with Hub access. {OFFLINE_ALTERNATIVES}") from err
  try:
    return datasets.load_dataset(name, config, split=split, revision=revision)
  except _offline_error_types() as err:
    raise DataUnavailableError(
        f"could not load {where} from the Hugging Face Hub ({type(err).__name__}: {err}). The Hub is "
        "unreachable, or offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the data set is not "
        "cached, or it is gated and needs `huggingface-cli login`. Load it once where the Hub is reachable "
        f"to cache it, or save it with xsim.data.save_jsonl_texts. {OFFLINE_ALTERNATIVES}") from err


def hf_column(dataset: Any, field: str, name: str) -> list:
  """One column of a loaded data set as a list, or ValueError listing the columns it has."""
  columns = list(dataset.column_names)
  if field not in columns:
    raise ValueError(f"{name!r} has no column {field!r}; its columns are {columns}.")
  return list(dataset[field])


def load_hf_texts(name: str, split: str = "train", field: str = "text", config: str | None = None,
                  num_texts: int | None = None, revision: str | None = None) -> list[str]:
  """The string column `field` of a Hugging Face data set, in data set order (the first num_texts, or all).

  Raises DataUnavailableError when `datasets` is missing or the Hub is unreachable (see load_hf_dataset).
  Large splits can be sliced by `datasets` itself, e.g. split="train[:5000]".
  """
  texts = hf_column(load_hf_dataset(name, split, config, revision), field, name)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"{name!r} column {field!r} row {i} is {type(text).__name__}, not a string.")
  return _take(texts, num_texts, f"{name!r} split {split!r}")


def load_pile_10k(num_texts: int | None = None, revision: str | None = None) -> list[str]:
  """The documents of NeelNanda/pile-10k, the published study's corpus (needs `datasets` and the Hub).

  The study cut these at 128 tokens; cut them by characters or words instead (xsim.data.cut_text).
  """
  return load_hf_texts(PILE_10K, split="train", field="text", num_texts=num_texts, revision=revision)
