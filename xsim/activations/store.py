"""On-disk activation store: shards written atomically as they are produced, a manifest that keys the store to
its model and texts, resume by skipping finished shards, and a memory-mapped consolidated array at the end.

Layout of a store directory:
  manifest.json               what the store holds (model, texts hash, pooling, layers, ...) and "complete"
  shards/NNNNN.{acts,index}.npy, shards/NNNNN.stats.npz   one per block of texts, written by whoever made it
  activations.npy [layers, rows, hidden], index.npy [rows], stats.json    after all shards exist
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import numpy as np

from xsim.activations.rows import INDEX_DTYPE

MANIFEST_VERSION = 1
_PROGRESS_KEYS = ("complete", "num_rows")  # written as the store fills; not part of its identity


def atomic_write(path: str, write) -> None:
  """Calls write(tmp_path), then renames tmp onto path, so readers never see a partial file."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _save_npy(path: str, array: np.ndarray) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)
  atomic_write(path, write)


def _save_json(path: str, obj: Any) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
  atomic_write(path, write)


@dataclasses.dataclass
class Activations:
  """Extracted activations. array: [num_layers, num_rows, hidden] (memory-mapped from the store);
  index: [num_rows] records (text, word, token, char_start, char_end, valid) saying what each row is;
  layers: hidden-state index of each array layer; stats: per-layer activation statistics."""
  array: np.ndarray
  index: np.ndarray
  layers: list[int]
  manifest: dict
  stats: dict
  path: str

  @property
  def num_rows(self) -> int:
    return len(self.index)


class ActivationStore:
  """A store directory for one (model, texts, extraction settings) identity."""

  def __init__(self, path: str, identity: dict):
    self.path = path
    self.identity = dict(identity, version=MANIFEST_VERSION)
    manifest_path = os.path.join(path, "manifest.json")
    if os.path.exists(manifest_path):
      with open(manifest_path) as f:
        existing = json.load(f)
      differing = sorted(k for k in set(existing) | set(self.identity)
                         if k not in _PROGRESS_KEYS and existing.get(k) != self.identity.get(k))
      if differing:
        details = "; ".join(f"{k}: stored {existing.get(k)!r}, now {self.identity.get(k)!r}" for k in differing)
        raise ValueError(f"The activation store {path} was made for other inputs ({details}). Refusing to mix "
                         "data: use another store directory or delete this one.")
      self.manifest = existing
    else:
      self.manifest = dict(self.identity, complete=False)
      _save_json(manifest_path, self.manifest)

  @property
  def complete(self) -> bool:
    return bool(self.manifest.get("complete"))

  def _shard(self, k: int, kind: str) -> str:
    return os.path.join(self.path, "shards", f"{k:05d}.{kind}")

  def has_shard(self, k: int) -> bool:
    # The stats file is written last, so its presence means the whole shard is there.
    return os.path.exists(self._shard(k, "stats.npz"))

  def write_shard(self, k: int, acts: np.ndarray, index: np.ndarray, stats: dict[str, np.ndarray]) -> None:
    """acts: [layers, rows, hidden]; index: [rows] INDEX_DTYPE; stats: streaming sums (see `shard_stats`)."""
    _save_npy(self._shard(k, "acts.npy"), acts)
    _save_npy(self._shard(k, "index.npy"), index)

    def write(tmp):
      with open(tmp, "wb") as f:
        np.savez(f, **stats)
    atomic_write(self._shard(k, "stats.npz"), write)

  def consolidate(self, num_shards: int) -> None:
    """Concatenates all shards into activations.npy / index.npy, one shard in memory at a time."""
    indices = [np.load(self._shard(k, "index.npy")) for k in range(num_shards)]
    first = np.load(self._shard(0, "acts.npy"), mmap_mode="r")
    total = sum(len(ix) for ix in indices)
    final = os.path.join(self.path, "activations.npy")

    def write(tmp):
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(first.shape[0], total, first.shape[2]))
      offset = 0
      for k, ix in enumerate(indices):
        out[:, offset:offset + len(ix)] = np.load(self._shard(k, "acts.npy"), mmap_mode="r")
        offset += len(ix)
      out.flush()
      del out
    atomic_write(final, write)
    _save_npy(os.path.join(self.path, "index.npy"), np.concatenate(indices) if indices else np.zeros(0, INDEX_DTYPE))
    stats = [dict(np.load(self._shard(k, "stats.npz"))) for k in range(num_shards)]
    _save_json(os.path.join(self.path, "stats.json"), summarize_stats(stats, self.identity["layers"]))
    self.manifest = dict(self.manifest, complete=True, num_rows=int(total))
    _save_json(os.path.join(self.path, "manifest.json"), self.manifest)

  def load(self) -> Activations:
    if not self.complete:
      raise ValueError(f"The activation store {self.path} is not complete; rerun the extraction to finish it.")
    with open(os.path.join(self.path, "stats.json")) as f:
      stats = json.load(f)
    return Activations(array=np.load(os.path.join(self.path, "activations.npy"), mmap_mode="r"),
                       index=np.load(os.path.join(self.path, "index.npy")), layers=list(self.identity["layers"]),
                       manifest=self.manifest, stats=stats, path=self.path)


def load_store(path: str) -> Activations:
  """Opens a complete store directory written by extract_activations."""
  manifest_path = os.path.join(path, "manifest.json")
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"{path} is not an activation store (no manifest.json).")
  with open(manifest_path) as f:
    manifest = json.load(f)
  return ActivationStore(path, {k: v for k, v in manifest.items() if k not in _PROGRESS_KEYS}).load()


def shard_stats(acts: np.ndarray) -> dict[str, np.ndarray]:
  """Streaming statistics of acts [layers, rows, hidden]: per-dim sums, squares and max |x|, and row norms."""
  x = acts.astype(np.float64)
  return {"count": np.asarray(acts.shape[1]), "sum": x.sum(1), "sumsq": (x**2).sum(1),
          "maxabs": np.abs(x).max(1) if acts.shape[1] else np.zeros(x.shape[::2]),
          "norm_sum": np.linalg.norm(x, axis=-1).sum(1)}


def summarize_stats(shards: list[dict], layers: list[int], top_k: int = 5) -> dict:
  """Per-layer summary: max |x|, mean row norm, and the outlier dimensions (largest variance share, max |x|)."""
  count = sum(float(s["count"]) for s in shards)
  total = {k: sum(s[k] for s in shards) for k in ("sum", "sumsq", "norm_sum")}
  maxabs = np.max([s["maxabs"] for s in shards], axis=0)
  mean = total["sum"] / max(count, 1)
  var = np.maximum(total["sumsq"] / max(count, 1) - mean**2, 0)
  share = var / np.maximum(var.sum(-1, keepdims=True), 1e-30)
  out = {"num_rows": int(count), "layers": []}
  for i, layer in enumerate(layers):
    top = np.argsort(-share[i])[:top_k]
    out["layers"].append({
        "layer": int(layer), "max_abs": float(maxabs[i].max()), "mean_norm": float(total["norm_sum"][i] / max(count, 1)),
        "top_variance_dims": [int(d) for d in top], "top_variance_share": [float(share[i, d]) for d in top],
        "top_maxabs_dims": [int(d) for d in np.argsort(-maxabs[i])[:top_k]]})
  return out


def paired_rows(a: Activations, b: Activations) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (ia, ib) of the samples both stores hold, matched on (text, word, char span), in a's order.

  Rows of the same text and word cover the same characters whatever the tokenizer; texts one model skipped
  (over its token budget) drop out of both.
  """
  if a.manifest["pooling"] != b.manifest["pooling"] or a.manifest["text_hash"] != b.manifest["text_hash"]:
    raise ValueError("Paired rows need the same texts and pooling in both stores "
                     f"({a.manifest['pooling']}/{a.manifest['text_hash'][:8]} vs "
                     f"{b.manifest['pooling']}/{b.manifest['text_hash'][:8]}).")
  if a.manifest["pooling"] == "tokens":
    raise ValueError("pooling='tokens' rows are tokenizer-specific and do not pair across models; use 'words'.")
  key = lambda ix: list(zip(ix["text"].tolist(), ix["word"].tolist()))
  where_b = {k: i for i, k in enumerate(key(b.index))}
  ia = [i for i, k in enumerate(key(a.index)) if k in where_b]
  ib = [where_b[k] for k in key(a.index) if k in where_b]
  return np.asarray(ia, np.int64), np.asarray(ib, np.int64)
