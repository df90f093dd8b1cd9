"""Debiased linear CKA over all layer pairs: xsim vs the per-pair loop, pytorch-cka and calibrated-similarity.

  python -m experiments.benchmarks.cka                      # La = Lb = 24, n = 4,096, d = 1,024 / 2,048
  python -m experiments.benchmarks.cka --n 1024 --layers 12 # quicker
  python -m experiments.benchmarks.cka --devices 8          # also grid and null split over 8 forced CPU devices
  python -m experiments.benchmarks.cka --platform gpu --layers 17 --layers_y 29 --n 5000 --dx 2048 --dy 1536 \
      --matmul_side 8192 --peak_tflops 67 --precision_check  # one GPU, against hand-batched PyTorch on it

Workloads, on the same float32 arrays (random, with a shared latent so CKA is clearly positive: pytorch-cka
clamps to [0, 1]):
  grid: xsim `cka_matrix` vs (a) the published study's per-pair loop (both Grams rebuilt for every pair: in
        NumPy on cpu, its tr(K~L~) taken as an elementwise sum, not the study's n^3 matmul; in PyTorch on the
        GPU on gpu), timed on --loop_pairs pairs and extrapolated, and (b) on cpu pytorch-cka's
        `cka_from_features` (each Gram once, batched unbiased HSIC), on gpu hand-batched PyTorch on the GPU
        (each Gram once, every pair's tr(K~L~) as one matmul: the figure of shared/BENCHMARKS.md); plus
        achieved FLOP/s against a float32 matmul at HIGHEST precision (the Gram's shape, or --matmul_side^3).
        These run in --repeats interleaved rounds (each keeps its best), so load drift hits all of them alike.
  null: xsim `cka_matrix_null` (--permutations of the whole grid) vs (cpu) calibrated-similarity's
        `calibrate_layers` with pytorch-cka as the pair measure, timed on a --peer_layers square sub-grid
        with one permutation and extrapolated per pair evaluation.
  mesh: with --devices D > 1 (cpu), `cka_matrix` and `cka_matrix_null` with `mesh=` (Gram tiles, layers and
        permutations split over D forced CPU devices, which share the host's cores) vs one device.
  precision (--precision_check): the hand-batched grid in JAX with matmuls at JAX's default precision (TF32 on
        NVIDIA GPUs) vs HIGHEST: the largest CKA difference that precision makes, and xsim's against HIGHEST.
Peers are benchmark-only on cpu (`pip install pytorch-cka==1.1.3 calibrated-similarity==0.1.1`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from xsim import similarity as sim
from xsim.sharding import make_mesh
from xsim.similarity.cka import gram_tiles


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=24, help="La (and Lb unless --layers_y)")
  p.add_argument("--layers_y", type=int, default=None, help="Lb (default: --layers)")
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
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                 help="gpu: data, xsim and the PyTorch alternatives on the first GPU (no CPU peers)")
  p.add_argument("--matmul_side", type=int, default=None,
                 help="reference matmul [s, s] x [s, s] (default: a Gram's shape [n, d] x [d, n])")
  p.add_argument("--peak_tflops", type=float, default=None, help="the device's float32 peak, for the fraction")
  p.add_argument("--precision_check", action="store_true",
                 help="CKA with JAX's default matmul precision vs HIGHEST (TF32 on NVIDIA GPUs)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  a = p.parse_args(argv)
  a.layers_y = a.layers_y or a.layers
  if a.platform == "gpu" and a.devices > 1:
    p.error("--devices forces CPU devices; on gpu the benchmark uses one GPU.")
  return a


def make_data(layers: int, n: int, dx: int, dy: int, seed: int, layers_y: int | None = None):
  """-> xs [L, n, dx], ys [Ly, n, dy] (Ly = layers_y or L) float32 NumPy arrays sharing a 32-dim latent (CKA well
  above 0)."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, 32), dtype=np.float32)
  def model(count, d):
    out = rng.standard_normal((count, n, d), dtype=np.float32)
    for layer in out:
      layer += z @ rng.standard_normal((32, d), dtype=np.float32)
    return out
  return model(layers, dx), model(layers_y or layers, dy)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def device_data(key, layers: int, layers_y: int, n: int, dx: int, dy: int):
  """make_data's distribution drawn on the default device (GPU-sized inputs in seconds) -> xs, ys float32."""
  kz, kx, ky, kwx, kwy = jax.random.split(key, 5)
  z = jax.random.normal(kz, (n, 32))
  def model(k, kw, count, d):
    return jax.random.normal(k, (count, n, d)) + jnp.einsum("nz,lzd->lnd", z, jax.random.normal(kw, (count, 32, d)))
  return model(kx, kwx, layers, dx), model(ky, kwy, layers_y, dy)


def to_torch(x):
  """A JAX array as a torch tensor on the same device: its buffer through DLPack, else a copy through the host."""
  import torch
  try:
    return torch.from_dlpack(x)
  except (BufferError, RuntimeError, TypeError) as e:
    print(f"note: DLPack hand-over failed ({e}); copying through the host")
    device = "cuda" if x.devices().pop().platform == "gpu" else "cpu"
    return torch.from_numpy(np.asarray(x)).to(device)


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


def batched_cka(xs, ys, einsum, off_diagonal):
  """Debiased linear CKA of every layer pair, each Gram built once and every pair's tr(K~L~) one matmul: the
  hand-batched version of shared/BENCHMARKS.md, for any array library's einsum (torch.einsum, or jnp.einsum with
  a precision). xs [La, n, dx], ys [Lb, n, dy], off_diagonal [n, n] (0 on the diagonal, else 1) -> [La, Lb]."""
  n = xs.shape[1]
  k = einsum("aid,ajd->aij", xs, xs) * off_diagonal
  l = einsum("bid,bjd->bij", ys, ys) * off_diagonal
  rk, rl = k.sum(-1), l.sum(-1)  # row sums of K~, L~: [La, n], [Lb, n]
  sk, sl = rk.sum(-1), rl.sum(-1)

  def hsic(cross, rows, sum_k, sum_l):  # Song et al.'s unbiased HSIC
    return (cross + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * rows / (n - 2)) / (n * (n - 3))

  xy = hsic(einsum("aij,bij->ab", k, l), einsum("ai,bi->ab", rk, rl), sk[:, None], sl[None, :])
  xx = hsic(einsum("aij,aij->a", k, k), einsum("ai,ai->a", rk, rk), sk, sk)
  yy = hsic(einsum("bij,bij->b", l, l), einsum("bi,bi->b", rl, rl), sl, sl)
  return xy / (xx[:, None] * yy[None, :]) ** 0.5


def precision_check(xs, ys, got: np.ndarray) -> dict:
  """Largest |CKA| change from JAX's default matmul precision (TF32 on NVIDIA GPUs) against HIGHEST, on the
  hand-batched grid, and xsim's largest difference from the HIGHEST grid."""
  n = xs.shape[1]
  off = 1.0 - jnp.eye(n, dtype=jnp.float32)
  grids = {name: np.asarray(jax.jit(lambda p, q: batched_cka(p, q, functools.partial(jnp.einsum, precision=precision),
                                                             off))(xs, ys))
           for name, precision in (("default", jax.lax.Precision.DEFAULT), ("highest", jax.lax.Precision.HIGHEST))}
  return dict(default_vs_highest=float(np.abs(grids["default"] - grids["highest"]).max()),
              xsim_vs_highest=float(np.abs(got - grids["highest"]).max()))


def executed_flops(la: int, lb: int, n: int, dx: int, dy: int, chunk: int) -> float:
  """FLOPs xsim's gram path runs: Gram tiles on/above the diagonal plus every pair's tile products."""
  tiles, _, side = gram_tiles(n, chunk)
  return 2.0 * len(tiles) * side * side * (la * dx + lb * dy + la * lb)


def main(argv=None):
  a = parse_args(argv)
  force_cpu_devices(a.devices)  # before JAX's first computation
  gpu = a.platform == "gpu"
  mesh = make_mesh(a.devices, 1) if a.devices > 1 else None
  la, lb, n = a.layers, a.layers_y, a.n
  if gpu:
    import torch
    torch.set_float32_matmul_precision("highest")  # no TF32 in the alternatives either
    xs, ys = jax.block_until_ready(device_data(jax.random.PRNGKey(a.seed), la, lb, n, a.dx, a.dy))
    tx, ty = to_torch(xs), to_torch(ys)
    off = 1.0 - torch.eye(n, dtype=torch.float32, device=tx.device)
  else:
    xs_np, ys_np = make_data(la, n, a.dx, a.dy, a.seed, layers_y=lb)
    xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
  device = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
  print(f"devices: {device}; La = {la}, Lb = {lb}, n = {n}, dx = {a.dx}, dy = {a.dy}, float32, debiased")
  rows = []  # (workload, xsim seconds, alternative name, alternative seconds, note)

  # Grid. The machine's load drifts, so the contenders run in interleaved rounds and each keeps its best.
  method = sim.choose_method(la, lb, n, a.dx, a.dy)
  grid = compiled(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=a.chunk), xs, ys)
  pairs = [(i % la, (7 * i + 3) % lb) for i in range(a.loop_pairs)]
  mm_shape = (a.matmul_side, a.matmul_side, a.matmul_side) if a.matmul_side else (n, max(a.dx, a.dy), n)
  mm_a = jnp.asarray(np.random.default_rng(1).standard_normal(mm_shape[:2], dtype=np.float32))
  mm_b = jnp.asarray(np.random.default_rng(2).standard_normal(mm_shape[1:], dtype=np.float32))
  mm = compiled(lambda p, q: jnp.dot(p, q, precision=jax.lax.Precision.HIGHEST), mm_a, mm_b)
  contenders = {"xsim": lambda: np.asarray(grid(xs, ys)), "matmul": lambda: mm(mm_a, mm_b).block_until_ready()}
  if gpu:
    with torch.inference_mode():
      batched_cka(tx[:1], ty[:1], torch.einsum, off)  # warm-up: cuBLAS handles and kernels
    contenders["loop"] = torch.inference_mode()(
        lambda: [float(batched_cka(tx[i:i + 1], ty[j:j + 1], torch.einsum, off)[0, 0]) for i, j in pairs])
    contenders["batched"] = torch.inference_mode()(lambda: batched_cka(tx, ty, torch.einsum, off).cpu().numpy())
  else:
    # (a) the study's per-pair loop, on a few pairs (extrapolated below).
    contenders["loop"] = lambda: [loop_pair(xs_np[i], ys_np[j]) for i, j in pairs]
  if mesh is not None:
    grid_mesh = compiled(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=a.chunk, mesh=mesh), xs, ys)
    contenders["mesh"] = lambda: np.asarray(grid_mesh(xs, ys))
  if not (a.skip_peers or gpu):
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
  rows.append(("grid", t_xsim, f"per-pair loop ({'PyTorch, GPU' if gpu else 'NumPy'})",
               best["loop"] / len(pairs) * la * lb,
               f"extrapolated from {len(pairs)} pairs; max |diff| {loop_err:.1e}"))
  if gpu:
    rows.append(("grid", t_xsim, "hand-batched PyTorch, GPU", best["batched"],
                 f"max |diff| {np.abs(out['batched'] - got).max():.1e}"))
  elif not a.skip_peers:
    peer = out["pytorch-cka"]
    positive = peer > 0.05  # it clamps to [0, 1]: compare values only where CKA is clearly positive
    rows.append(("grid", t_xsim, "pytorch-cka 1.1.3", best["pytorch-cka"],
                 f"max |diff| {np.abs(peer - got)[positive].max():.1e} on {positive.sum()} pairs > 0.05"))
  if mesh is not None:
    rows.append((f"grid, mesh {a.devices}x1", best["mesh"], "xsim, 1 device", t_xsim,
                 f"max |diff| {np.abs(out['mesh'] - got).max():.1e}"))

  # Throughput against a plain float32 matmul at HIGHEST precision, timed in the same rounds.
  throughput = dict(matmul_shape=list(mm_shape), matmul_flops_per_s=2.0 * np.prod(mm_shape) / best["matmul"])
  rate_mm = throughput["matmul_flops_per_s"]
  print(f"matmul [{mm_shape[0]}, {mm_shape[1]}] x [{mm_shape[1]}, {mm_shape[2]}] at HIGHEST: "
        f"{rate_mm / 1e9:.1f} GFLOP/s" + (f" = {rate_mm / (a.peak_tflops * 1e12):.0%} of the stated peak"
                                          if a.peak_tflops else ""))
  if method == "gram":
    run = executed_flops(la, lb, n, a.dx, a.dy, a.chunk)
    naive = 2.0 * n * n * (la * a.dx + lb * a.dy + la * lb)
    throughput.update(executed_flops=run, flops_per_s=run / t_xsim, fraction_of_matmul=run / t_xsim / rate_mm,
                      full_gram_flops_per_s=naive / t_xsim)
    if a.peak_tflops:
      throughput["fraction_of_peak"] = run / t_xsim / (a.peak_tflops * 1e12)
    print(f"xsim runs {run / 1e12:.2f} TFLOP (symmetric tiles) = {run / t_xsim / 1e9:.1f} GFLOP/s "
          f"({run / t_xsim / rate_mm:.0%} of the matmul); full-Gram equivalent {naive / t_xsim / 1e9:.1f} GFLOP/s "
          f"({naive / t_xsim / rate_mm:.0%})")
    if gpu:
      throughput["batched_flops_per_s"] = naive / best["batched"]
      print(f"hand-batched PyTorch: {naive / best['batched'] / 1e9:.1f} GFLOP/s "
            f"({naive / best['batched'] / rate_mm:.0%} of the matmul)")

  # Working memory: XLA's temporary buffers for cka_matrix, at this chunk and half of it: one centered copy
  # of the inputs plus tiles that shrink with the chunk; all Grams at once (pytorch-cka, hand-batched) is more.
  def temp_mib(chunk):
    fn = jax.jit(lambda p, q: sim.cka_matrix(p, q, debiased=True, chunk_size=chunk))
    return fn.lower(xs, ys).compile().memory_analysis().temp_size_in_bytes / 2**20
  memory = dict(temp_mib=temp_mib(a.chunk), temp_mib_half_chunk=temp_mib(a.chunk // 2),
                inputs_mib=(xs.nbytes + ys.nbytes) / 2**20, all_grams_mib=(la + lb) * n * n * 4 / 2**20)
  print(f"xsim temp memory: {memory['temp_mib']:.0f} MiB at chunk {a.chunk}, {memory['temp_mib_half_chunk']:.0f} "
        f"MiB at {a.chunk // 2} (inputs {memory['inputs_mib']:.0f} MiB); all Grams at once: "
        f"{memory['all_grams_mib']:.0f} MiB")

  precision = None
  if a.precision_check:
    precision = precision_check(xs, ys, got)
    print(f"precision: max |CKA default - CKA HIGHEST| = {precision['default_vs_highest']:.1e} (hand-batched in "
          f"JAX); xsim vs HIGHEST {precision['xsim_vs_highest']:.1e}")

  # Null: the whole grid under --permutations row permutations.
  null_figures = None
  if not a.skip_null:
    key = jax.random.PRNGKey(a.seed)
    null_fn = compiled(lambda p, q: sim.cka_matrix_null(
        p, q, key=key, num_permutations=a.permutations, chunk_size=a.chunk), xs, ys)
    t_null, null = best_time(lambda: null_fn(xs, ys).block_until_ready(), 1, warm_up=False)
    p_max = float(sim.p_value(got.max(), np.asarray(null).max((1, 2))))
    null_figures = dict(permutations=a.permutations, seconds=t_null, p_value_of_max=p_max)
    print(f"xsim null: {a.permutations} permutations in {t_null:.2f} s; p-value of the max pair {p_max:.4f}")
    if mesh is not None:
      null_mesh = compiled(lambda p, q: sim.cka_matrix_null(
          p, q, key=key, num_permutations=a.permutations, chunk_size=a.chunk, mesh=mesh), xs, ys)
      t_mesh, null_m = best_time(lambda: null_mesh(xs, ys).block_until_ready(), 1, warm_up=False)
      rows.append((f"null, mesh {a.devices}x1", t_mesh, "xsim null, 1 device", t_null,
                   f"max |diff| {np.abs(np.asarray(null_m) - np.asarray(null)).max():.1e}"))
    if not (a.skip_peers or gpu):
      from calibrated_similarity import calibrate_layers
      s = min(a.peer_layers, la, lb)
      pair = lambda x, y: cka_from_features(x, y)[0, 0]
      with torch.inference_mode():
        start = time.perf_counter()
        calibrate_layers(list(tx[:s]), list(ty[:s]), pair, agg="max", K=1, smax=None)
        per_eval = (time.perf_counter() - start) / (2 * s * s)  # observed grid + one permuted grid
      rows.append((f"null x{a.permutations}", t_null, "calibrated-similarity 0.1.1 + pytorch-cka",
                   per_eval * (a.permutations + 1) * la * lb,
                   f"extrapolated from a {s}x{s} grid, 1 permutation"))

  print(f"\n{'workload':<12} {'xsim s':>9}  {'alternative':<42} {'alt s':>10} {'alt/xsim':>9}  note")
  for work, tx_, alt, ta, note in rows:
    print(f"{work:<12} {tx_:>9.3f}  {alt:<42} {ta:>10.2f} {ta / tx_:>8.1f}x  {note}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(args=vars(a), device=device, method=method, best_seconds=best, throughput=throughput,
                     memory=memory, precision=precision, null=null_figures,
                     rows=[dict(workload=w, xsim_s=t, alternative=alt, alternative_s=ta, note=note)
                           for w, t, alt, ta, note in rows]), f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
