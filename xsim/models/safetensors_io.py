"""Lazy, torch-free reading of (sharded) safetensors checkpoints, bfloat16 included.

The format is an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, and
the raw tensor bytes. The header is checked against the file size when the checkpoint is opened, so a truncated
or corrupt file fails there, naming the file and the tensor. Each access maps just that tensor's bytes; the map
is released with the array, so reading a checkpoint tensor by tensor never keeps the whole file resident.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_REDOWNLOAD = "Re-download the checkpoint (or save it again with save_pretrained)."


class SafetensorsCheckpoint(Mapping):
  """Mapping tensor name -> np.ndarray over one or more .safetensors files (read on access).

  `shape(name)` and `file(name)` answer from the headers without reading any tensor data.
  """

  def __init__(self, files: list[str]):
    self._index: dict[str, tuple[str, dict, int]] = {}
    for path in files:
      header, data_start = _read_header(path)
      for name, info in header.items():
        self._index[name] = (path, info, data_start)

  def __getitem__(self, name: str) -> np.ndarray:
    path, info, data_start = self._index[name]
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    if end == start:
      return np.zeros(info["shape"], dtype)
    flat = np.memmap(path, dtype=dtype, mode="r", offset=data_start + start, shape=((end - start) // dtype.itemsize,))
    return flat.reshape(info["shape"])

  def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
    return name in self._index

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._index[name][1]["shape"])

  def file(self, name: str) -> str:
    return self._index[name][0]

  def __iter__(self) -> Iterator[str]:
    return iter(self._index)

  def __len__(self) -> int:
    return len(self._index)


def _read_header(path: str) -> tuple[dict, int]:
  """(tensor name -> {dtype, shape, data_offsets}, byte offset of the data) of one file, checked against its size."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    header_len = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or header_len > size - 8:
      raise ValueError(f"{path} is not a complete safetensors file: its header length field says {header_len} bytes "
                       f"but the file has {size} bytes in all. {_REDOWNLOAD}")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path} has a corrupt safetensors header (not JSON: {e}). {_REDOWNLOAD}") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path} has a corrupt safetensors header (a JSON {type(header).__name__}, not an object). "
                     f"{_REDOWNLOAD}")
  header.pop("__metadata__", None)
  data_start = 8 + header_len
  for name, info in header.items():
    _check_entry(path, name, info, size - data_start)
  return header, data_start


def _check_entry(path: str, name: str, info, data_size: int) -> None:
  """One header entry is well formed and its bytes lie inside the file's `data_size` bytes of tensor data."""
  if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
    raise ValueError(f"{path} has a corrupt safetensors header: the entry of tensor {name!r} is {info!r}, not "
                     f"{{dtype, shape, data_offsets}}. {_REDOWNLOAD}")
  if info["dtype"] not in _DTYPES:
    raise ValueError(f"Tensor {name!r} in {path} has dtype {info['dtype']}, which xsim cannot read.")
  start, end = info["data_offsets"]
  nbytes = math.prod(info["shape"]) * np.dtype(_DTYPES[info["dtype"]]).itemsize
  if not 0 <= start <= end or end - start != nbytes:
    raise ValueError(f"{path} has a corrupt safetensors header: tensor {name!r} of shape {tuple(info['shape'])} "
                     f"({info['dtype']}, {nbytes} bytes) has data offsets [{start}, {end}). {_REDOWNLOAD}")
  if end > data_size:
    raise ValueError(f"{path} is truncated: tensor {name!r} ends at data byte {end} but the file holds only "
                     f"{data_size} bytes of tensor data. {_REDOWNLOAD}")


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
