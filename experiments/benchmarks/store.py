"""Activation store write and read speed: xsim's checksummed zarr store vs the previous .npy store layout.

    python -m experiments.benchmarks.store                                   # 30 x 4096 x 576, float32 and float16
    python -m experiments.benchmarks.store --rows 1024 --repeats 2 --out store.json     # quicker

Data: [layers, rows, hidden] normal random values, written as shards of --shard_rows rows (one row per text, as
pooling="last" gives), with the same precomputed shard statistics handed to both sides.
  xsim: ActivationStore.write_shard per shard (a zarr v3 array per shard, a CRC32C per chunk, SHA-256 of index and
        statistics) and finish(); reads through load_store(path).array, which checks every chunk it reads.
  npy:  the layout before checksums, reimplemented here: np.save of each shard's activations, index and
        statistics (each written to a temporary file and renamed), then one consolidated activations.npy written
        through a memmap, index.npy and stats.json; reads through np.load(mmap_mode="r").
Reads: the whole array, half of the rows (`array[:, rows]`, rows sorted as paired_rows gives them) and one layer,
each into a NumPy array in the stored dtype; "check" is load_store(read_all=True), the whole-store check that the
runner's open_or_extract does on opening (the npy layout has nothing to check). Timings alternate the sides within
each repeat and report medians; reads are warm (one untimed full read of each side first, so both are in the page
cache).
MB/s counts the array's bytes in the stored dtype; ratio = xsim MB/s / npy MB/s (above 1: xsim faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from experiments import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=30)
  p.add_argument("--rows", type=int, default=4096)
  p.add_argument("--hidden", type=int, default=576)
  p.add_argument("--shard_rows", type=int, default=1024)
  p.add_argument("--dtypes", default="float32,float16")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=None, help="where the stores are written (a temporary directory if unset)")
  p.add_argument("--out", default=None, help="also write the results as JSON here")
  args = p.parse_args(argv)
  if min(args.layers, args.rows, args.hidden, args.shard_rows, args.repeats) < 1:
    p.error("--layers, --rows, --hidden, --shard_rows and --repeats must be positive.")
  return args


def _shards(x: np.ndarray, shard_rows: int):
  """[(acts [layers, rows_k, hidden], index [rows_k], stats)] per shard, stats computed once for both sides."""
  from xsim.activations.rows import INDEX_DTYPE
  from xsim.activations.store import shard_stats
  out = []
  for start in range(0, x.shape[1], shard_rows):
    acts = x[:, start:start + shard_rows]
    index = np.zeros(acts.shape[1], INDEX_DTYPE)
    index["text"] = np.arange(start, start + acts.shape[1])
    out.append((acts, index, shard_stats(acts)))
  return out


def write_xsim(path: str, shards, layers: list[int], dtype: str) -> None:
  from xsim.activations.store import ActivationStore
  store = ActivationStore(path, {"model": "benchmark", "layers": layers, "hidden_size": shards[0][0].shape[2],
                                 "store_dtype": dtype})
  for k, (acts, index, stats) in enumerate(shards):
    store.write_shard(k, acts, index, stats)
  store.finish(len(shards))


def write_npy(path: str, shards, layers: list[int], dtype: str) -> None:
  """The store layout before checksums: .npy shards, then a consolidated memmapped activations.npy."""
  from xsim.activations.store import summarize_stats
  from xsim.io import atomic_write

  def save(name, write, mode="wb"):
    def write_file(tmp):
      with open(tmp, mode) as f:
        write(f)
    atomic_write(os.path.join(path, name), write_file)

  for k, (acts, index, stats) in enumerate(shards):
    save(f"shards/{k:05d}.acts.npy", lambda f: np.save(f, acts))
    save(f"shards/{k:05d}.index.npy", lambda f: np.save(f, index))
    save(f"shards/{k:05d}.stats.npz", lambda f: np.savez(f, **stats))
  indices = [np.load(os.path.join(path, f"shards/{k:05d}.index.npy")) for k in range(len(shards))]
  total = sum(len(ix) for ix in indices)

  def consolidate(tmp):
    first = shards[0][0]
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(first.shape[0], total, first.shape[2]))
    offset = 0
    for k, ix in enumerate(indices):
      out[:, offset:offset + len(ix)] = np.load(os.path.join(path, f"shards/{k:05d}.acts.npy"), mmap_mode="r")
      offset += len(ix)
    out.flush()
    del out
  atomic_write(os.path.join(path, "activations.npy"), consolidate)
  save("index.npy", lambda f: np.save(f, np.concatenate(indices)))
  stats = [dict(np.load(os.path.join(path, f"shards/{k:05d}.stats.npz"))) for k in range(len(shards))]
  save("stats.json", lambda f: json.dump(summarize_stats(stats, layers), f, indent=1, sort_keys=True), "w")


def open_xsim(path: str):
  from xsim.activations.store import load_store
  return load_store(path).array


def open_npy(path: str):
  return np.load(os.path.join(path, "activations.npy"), mmap_mode="r")


READS = {"full": lambda a, rows, layer: np.array(a),
         "half rows": lambda a, rows, layer: np.asarray(a[:, rows]),
         "one layer": lambda a, rows, layer: np.array(a[layer])}


def _timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return result, time.perf_counter() - wall, time.process_time() - cpu


def _disk_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bench_dtype(x32: np.ndarray, dtype: str, args: argparse.Namespace, workdir: str) -> dict:
  """Median seconds (wall and CPU) per side and operation for one stored dtype."""
  from xsim.activations.store import load_store
  x = x32.astype(dtype)
  layers = list(range(x.shape[0]))
  shards = _shards(x, args.shard_rows)
  rng = np.random.default_rng(args.seed)
  rows = np.sort(rng.choice(x.shape[1], x.shape[1] // 2, replace=False))
  layer = x.shape[0] // 2
  sides = {"xsim": (write_xsim, open_xsim), "npy": (write_npy, open_npy)}
  times = {side: {} for side in sides}
  disk = {}
  for repeat in range(args.repeats):
    order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
    paths = {side: os.path.join(workdir, f"{side}-{dtype}-{repeat}") for side in sides}
    for side in order:
      _, wall, cpu = _timed(lambda: sides[side][0](paths[side], shards, layers, dtype))
      times[side].setdefault("write", []).append((wall, cpu))
      disk[side] = _disk_bytes(paths[side])
    for side in order:  # untimed: both sides' files in the page cache before timing
      np.array(sides[side][1](paths[side]))
    for name, read in READS.items():
      for side in order:
        array = sides[side][1](paths[side])
        out, wall, cpu = _timed(lambda: read(array, rows, layer))
        expected = {"full": x, "half rows": x[:, rows], "one layer": x[layer]}[name]
        if not np.array_equal(out, expected):
          raise AssertionError(f"{side} read {name} differs from the data written")
        times[side].setdefault(name, []).append((wall, cpu))
        del out
    _, wall, cpu = _timed(lambda: load_store(paths["xsim"], read_all=True))
    times["xsim"].setdefault("check", []).append((wall, cpu))
    for path in paths.values():
      shutil.rmtree(path)
  sizes = {"write": x.nbytes, "full": x.nbytes, "half rows": x[:, rows].nbytes, "one layer": x[layer].nbytes,
           "check": x.nbytes}
  result = {"dtype": dtype, "shape": list(x.shape), "bytes": int(x.nbytes), "disk_bytes": disk, "ops": {}}
  for op, size in sizes.items():
    entry = {"mb": size / 1e6}
    for side in sides:
      if op in times[side]:
        wall = statistics.median(t[0] for t in times[side][op])
        cpu = statistics.median(t[1] for t in times[side][op])
        entry[side] = {"seconds": wall, "cpu_seconds": cpu, "mb_per_s": size / 1e6 / wall}
    if "npy" in entry:
      entry["ratio"] = entry["xsim"]["mb_per_s"] / entry["npy"]["mb_per_s"]
    result["ops"][op] = entry
  return result


def main(argv=None) -> None:
  args = parse_args(argv)
  x32 = np.random.default_rng(args.seed).normal(size=(args.layers, args.rows, args.hidden)).astype(np.float32)
  with tempfile.TemporaryDirectory(prefix="xsim-bench-store-", dir=args.workdir) as workdir:
    results = [bench_dtype(x32, dtype, args, workdir) for dtype in args.dtypes.split(",")]
  print(f"[layers, rows, hidden] = [{args.layers}, {args.rows}, {args.hidden}], shards of {args.shard_rows} rows, "
        f"median of {args.repeats} alternating repeats, warm page cache; {os.cpu_count()} CPUs")
  print(f"{'dtype':<9}{'operation':<11}{'MB':>8}{'xsim MB/s':>11}{'npy MB/s':>10}{'ratio':>7}"
        f"{'xsim cpu s':>12}{'npy cpu s':>11}")
  for r in results:
    for op, entry in r["ops"].items():
      npy = entry.get("npy")
      print(f"{r['dtype']:<9}{op:<11}{entry['mb']:>8.1f}{entry['xsim']['mb_per_s']:>11.0f}"
            f"{npy['mb_per_s'] if npy else float('nan'):>10.0f}{entry.get('ratio', float('nan')):>7.2f}"
            f"{entry['xsim']['cpu_seconds']:>12.3f}{npy['cpu_seconds'] if npy else float('nan'):>11.3f}")
    disk = {side: f"{size / 1e6:.1f} MB" for side, size in r["disk_bytes"].items()}
    print(f"{r['dtype']:<9}on disk: xsim {disk['xsim']}, npy {disk['npy']} (npy keeps its shards beside the "
          "consolidated copy)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
