"""Lazy, torch-free reading of (sharded) safetensors checkpoints, bfloat16 included.

The format is an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, and
the raw tensor bytes; tensors are memory-mapped, so only what is read is paged in.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsCheckpoint(Mapping):
  """Mapping tensor name -> np.ndarray over one or more .safetensors files (read on access)."""

  def __init__(self, files: list[str]):
    self._index: dict[str, tuple[str, dict, int]] = {}
    for path in files:
      with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
      header.pop("__metadata__", None)
      for name, info in header.items():
        if info["dtype"] not in _DTYPES:
          raise ValueError(f"Tensor {name!r} in {path} has dtype {info['dtype']}, which xsim cannot read.")
        self._index[name] = (path, info, 8 + header_len)

  def __getitem__(self, name: str) -> np.ndarray:
    path, info, data_start = self._index[name]
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    if end == start:
      return np.zeros(info["shape"], dtype)
    flat = np.memmap(path, dtype=dtype, mode="r", offset=data_start + start, shape=((end - start) // dtype.itemsize,))
    return flat.reshape(info["shape"])

  def __iter__(self) -> Iterator[str]:
    return iter(self._index)

  def __len__(self) -> int:
    return len(self._index)


def checkpoint_files(directory: str) -> list[str]:
  """The safetensors files of a HF model directory (single file or sharded with an index)."""
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(directory, s))]
    if missing:
      raise FileNotFoundError(f"{index} lists shards that are missing: {missing}. Re-download the checkpoint.")
    return [os.path.join(directory, s) for s in shards]
  single = os.path.join(directory, "model.safetensors")
  return [single] if os.path.exists(single) else []
