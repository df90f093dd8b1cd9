"""Debiased linear CKA over all layer pairs: xsim vs the per-pair loop, pytorch-cka and calibrated-similarity.

  python -m experiments.benchmarks.cka                      # La = Lb = 24, n = 4,096, d = 1,024 / 2,048
  python -m experiments.benchmarks.cka --n 1024 --layers 12 # quicker
  python -m experiments.benchmarks.cka --devices 8          # also grid and null split over 8 forced CPU devices

Workloads, on the same float32 arrays (random, with a shared latent so CKA is clearly positive: pytorch-cka
clamps to [0, 1]):
  grid: xsim `cka_matrix` vs (a) the published study's per-pair loop in NumPy (both Grams rebuilt for every
        pair; its tr(K~L~) is taken as an elementwise sum, not the study's n^3 matmul), timed on
        --loop_pairs pairs and extrapolated, and (b) pytorch-cka's `cka_from_features` (each Gram once,
        batched unbiased HSIC); plus achieved FLOP/s against a plain matmul of the Gram's shape. These
        run in --repeats interleaved rounds (each keeps its best), so load drift hits all of them alike.
  null: xsim `cka_matrix_null` (--permutations of the whole grid) vs calibrated-similarity's
        `calibrate_layers` with pytorch-cka as the pair measure, timed on a --peer_layers square sub-grid
        with one permutation and extrapolated per pair evaluation.
  mesh: with --devices D > 1, `cka_matrix` and `cka_matrix_null` with `mesh=` (Gram tiles, layers and
        permutations split over D forced CPU devices, which share the host's cores) vs one device.
Peers are benchmark-only (`pip install pytorch-cka==1.1.3 calibrated-similarity==0.1.1`).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from xsim import similarity as sim
from xsim.activations.sharding import make_mesh
from xsim.similarity.cka import gram_tiles


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=24, help="La = Lb")
  p.add_argument("--n", type=int, default=4096, help="samples")
  p.add_argument("--dx", type=int, default=1024, help="width of the x model")
  p.add_argument("--dy", type=int, default=2048, help="width of the y model")
  p.add_argument("--chunk", type=int, default=512, help="xsim chunk_size (Gram tile side)")
  p.add_argument("--loop_pairs", type=int, default=3, help="pairs the per-pair loop is timed on")
  p.add_argument("--permutations", type=int, default=200, help="permutations of the whole grid (null)")
  p.add_argument("--peer_layers", type=int, default=2, help="side of the sub-grid calibrated-similarity is timed on")
  p.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds; each contender keeps its best")
  p.add_argument("--skip_peers", action="store_true", help="time xsim and the loop only")
  p.add_argument("--skip_null", action="store_true", help="skip the permutation-null workload")
  p.add_argument("--devices", type=int, default=1, help="forced CPU devices; > 1 also times the mesh= paths")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def make_data(layers: int, n: int, dx: int, dy: int, seed: int, layers_y: int | None = None):
  """-> xs [L, n, dx], ys [Ly, n, dy] (Ly = layers_y or L) float32 sharing a 32-dim latent (CKA well above 0)."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, 32), dtype=np.float32)
  def model(count, d):
    out = rng.standard_normal((count, n, d), dtype=np.float32)
    for layer in out:
      layer += z @ rng.standard_normal((32, d), dtype=np.float32)
    return out
  return model(layers, dx), model(layers_y or layers, dy)


def force_cpu_devices(count: int):
  """Makes the host CPU count as `count` XLA devices; call before JAX's first computation (backends read
  XLA_FLAGS once)."""
  if count > 1:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def best_time(fn, repeats: int, warm_up: bool = True):
  """Optionally one untimed call, then the best of `repeats` timed calls -> (seconds, last result)."""
  out = fn() if warm_up else None
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - start)
  return best, out


def compiled(fn, *args):
  """Ahead-of-time compiled fn for these arguments, so timed calls exclude compilation without a warm-up run."""
  return jax.jit(fn).lower(*args).compile()


def loop_pair(x: np.ndarray, y: np.ndarray) -> float:
  """The study's pattern: both Grams rebuilt, then Song et al.'s HSIC three times (NumPy float32)."""
  n = x.shape[0]
  def hsic(k, l):
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    return (np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2))
            - 2.0 * (k.sum(0) @ l.sum(0)) / (n - 2)) / (n * (n - 3))
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def executed_flops(layers: int, n: int, dx: int, dy: int, chunk: int) -> float:
  """FLOPs xsim's gram path runs: Gram tiles on/above the diagonal plus every pair's tile products."""
  tiles, _, side = gram_tiles(n, chunk)
  return 2.0 * len(tiles) * side * side * (layers * (dx + dy) + layers * layers)


def main(argv=None):
  a = parse_args(argv)
  force_cpu_devices(a.devices)  # before JAX's first computation
  mesh = make_mesh(a.devices, 1) if a.devices > 1 else None
  L, n = a.layers, a.n
  xs_np, ys_np = make_data(L, n, a.dx, a.dy, a.seed)
  xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; La = Lb = {L}, n = {n}, dx = {a.dx}, "
        f"dy = {a.dy}, float32, debiased")
  rows = []  # (workload, xsim seconds, alternative name, alternative seconds, note)

  # Grid. The machine's load drifts, so the contenders run in interleaved rounds and each keeps its best.
  method = sim.choose_method(L, L, n, a.dx, a.dy)
  grid = compiled(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=a.chunk), xs, ys)
  pairs = [(i % L, (7 * i + 3) % L) for i in range(a.loop_pairs)]
  side = max(a.dx, a.dy)
  mm_in = jnp.asarray(np.random.default_rng(1).standard_normal((n, side), dtype=np.float32))
  mm = compiled(lambda m: jnp.dot(m, m.T, precision=jax.lax.Precision.HIGHEST), mm_in)
  contenders = {
      "xsim": lambda: np.asarray(grid(xs, ys)),
      # (a) the study's per-pair loop, on a few pairs (extrapolated below).
      "loop": lambda: [loop_pair(xs_np[i], ys_np[j]) for i, j in pairs],
      "matmul": lambda: mm(mm_in).block_until_ready(),
  }
  if mesh is not None:
    grid_mesh = compiled(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=a.chunk, mesh=mesh), xs, ys)
    contenders["mesh"] = lambda: np.asarray(grid_mesh(xs, ys))
  if not a.skip_peers:
    import torch
    from cka import cka_from_features  # pytorch-cka
    tx, ty = torch.from_numpy(xs_np), torch.from_numpy(ys_np)
    # (b) pytorch-cka: every Gram once, batched unbiased HSIC.
    contenders["pytorch-cka"] = lambda: torch.inference_mode()(cka_from_features)(tx, ty).numpy()
  best, out = {}, {}
  for _ in range(a.repeats):
    for name, fn in contenders.items():
      seconds, out[name] = best_time(fn, 1, warm_up=False)
      best[name] = min(best.get(name, float("inf")), seconds)
  t_xsim, got = best["xsim"], out["xsim"]
  print(f"xsim cka_matrix ({method} path): {t_xsim:.3f} s (best of {a.repeats} interleaved rounds)")
  loop_err = max(abs(v - got[i, j]) for v, (i, j) in zip(out["loop"], pairs))
  rows.append(("grid", t_xsim, "per-pair loop (NumPy)", best["loop"] / len(pairs) * L * L,
               f"extrapolated from {len(pairs)} pairs; max |diff| {loop_err:.1e}"))
  if not a.skip_peers:
    peer = out["pytorch-cka"]
    positive = peer > 0.05  # it clamps to [0, 1]: compare values only where CKA is clearly positive
    rows.append(("grid", t_xsim, "pytorch-cka 1.1.3", best["pytorch-cka"],
                 f"max |diff| {np.abs(peer - got)[positive].max():.1e} on {positive.sum()} pairs > 0.05"))
  if mesh is not None:
    rows.append((f"grid, mesh {a.devices}x1", best["mesh"], "xsim, 1 device", t_xsim,
                 f"max |diff| {np.abs(out['mesh'] - got).max():.1e}"))

  # Throughput against the plain matmul of a Gram's shape, timed in the same rounds.
  rate_mm = 2.0 * n * n * side / best["matmul"]
  if method == "gram":
    run = executed_flops(L, n, a.dx, a.dy, a.chunk)
    naive = 2.0 * n * n * (L * (a.dx + a.dy) + L * L)
    print(f"matmul [{n}, {side}] x [{side}, {n}]: {rate_mm / 1e9:.1f} GFLOP/s; "
          f"xsim runs {run / 1e12:.2f} TFLOP (symmetric tiles) = {run / t_xsim / 1e9:.1f} GFLOP/s "
          f"({run / t_xsim / rate_mm:.0%} of matmul); full-Gram equivalent {naive / t_xsim / 1e9:.1f} GFLOP/s "
          f"({naive / t_xsim / rate_mm:.0%})")

  # Working memory: XLA's temporary buffers for cka_matrix, at this chunk and half of it: one centered copy
  # of the inputs plus tiles that shrink with the chunk; pytorch-cka holds every Gram at once.
  def temp_mib(chunk):
    fn = jax.jit(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=chunk))
    return fn.lower(xs, ys).compile().memory_analysis().temp_size_in_bytes / 2**20
  print(f"xsim temp memory: {temp_mib(a.chunk):.0f} MiB at chunk {a.chunk}, {temp_mib(a.chunk // 2):.0f} MiB at "
        f"{a.chunk // 2} (inputs {(xs.nbytes + ys.nbytes) / 2**20:.0f} MiB); all Grams at once: "
        f"{2 * L * n * n * 4 / 2**20:.0f} MiB")

  # Null: the whole grid under --permutations row permutations.
  if not a.skip_null:
    key = jax.random.PRNGKey(a.seed)
    null_fn = compiled(lambda p, q: sim.cka_matrix_null(
        p, q, key=key, num_permutations=a.permutations, chunk_size=a.chunk), xs, ys)
    t_null, null = best_time(lambda: null_fn(xs, ys).block_until_ready(), 1, warm_up=False)
    p_max = float(sim.p_value(got.max(), np.asarray(null).max((1, 2))))
    print(f"xsim null: {a.permutations} permutations in {t_null:.2f} s; p-value of the max pair {p_max:.4f}")
    if mesh is not None:
      null_mesh = compiled(lambda p, q: sim.cka_matrix_null(
          p, q, key=key, num_permutations=a.permutations, chunk_size=a.chunk, mesh=mesh), xs, ys)
      t_mesh, null_m = best_time(lambda: null_mesh(xs, ys).block_until_ready(), 1, warm_up=False)
      rows.append((f"null, mesh {a.devices}x1", t_mesh, "xsim null, 1 device", t_null,
                   f"max |diff| {np.abs(np.asarray(null_m) - np.asarray(null)).max():.1e}"))
    if not a.skip_peers:
      from calibrated_similarity import calibrate_layers
      s = min(a.peer_layers, L)
      pair = lambda x, y: cka_from_features(x, y)[0, 0]
      with torch.inference_mode():
        start = time.perf_counter()
        calibrate_layers(list(tx[:s]), list(ty[:s]), pair, agg="max", K=1, smax=None)
        per_eval = (time.perf_counter() - start) / (2 * s * s)  # observed grid + one permuted grid
      rows.append((f"null x{a.permutations}", t_null, "calibrated-similarity 0.1.1 + pytorch-cka",
                   per_eval * (a.permutations + 1) * L * L,
                   f"extrapolated from a {s}x{s} grid, 1 permutation"))

  print(f"\n{'workload':<12} {'xsim s':>9}  {'alternative':<42} {'alt s':>10} {'alt/xsim':>9}  note")
  for work, tx_, alt, ta, note in rows:
    print(f"{work:<12} {tx_:>9.3f}  {alt:<42} {ta:>10.2f} {ta / tx_:>8.1f}x  {note}")


if __name__ == "__main__":
  main()
