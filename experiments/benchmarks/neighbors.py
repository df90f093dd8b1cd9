"""Mutual k-NN (and the other per-layer measures) over all layer pairs: xsim's similarity_grid vs the per-pair
loop the runner ran.

  python -m experiments.benchmarks.neighbors                # the demo's grid: 31 x 19 layers, n 384, d 576 / 640
  python -m experiments.benchmarks.neighbors --devices 8    # also the grid split over 8 forced CPU devices
  python -m experiments.benchmarks.neighbors --measures mutual_knn,cknna,procrustes,svcca,rsa

Workloads, on the same float32 arrays (random, sharing a 32-dim latent so neighbourhoods overlap):
  grid: `similarity_grid(measure, xs, ys)` (each layer's summary once, e.g. its Gram and k-NN mask; all pair
        overlaps one matmul) vs the loop `[[mutual_knn(x, y, k=k) for y in ys] for x in xs]` (one jitted call
        per pair, both Grams and masks rebuilt), timed on --loop_rows x layers and extrapolated; the values
        are compared (exact for mutual k-NN). With --devices D > 1, also the grid with `mesh=` (layers split
        over D forced CPU devices: on a 2-core host they share the same cores). Contenders run in
        --repeats interleaved rounds, each keeping its best, so load drift hits all of them alike.
  null: `grid_null_max` (--permutations; summaries built once, y's permuted) vs the generic
        `permutation_null` of the grid (every summary rebuilt per permutation), timed on --generic_permutations
        and extrapolated.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments import cli
from experiments.benchmarks.cka import best_time, compiled, force_cpu_devices, make_data


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--la", type=int, default=31, help="x layers (the demo's larger model: 30 blocks + embeddings)")
  p.add_argument("--lb", type=int, default=19, help="y layers")
  p.add_argument("--n", type=int, default=384, help="samples")
  p.add_argument("--dx", type=int, default=576, help="width of the x model")
  p.add_argument("--dy", type=int, default=640, help="width of the y model")
  p.add_argument("--k", type=int, default=10, help="neighbours (mutual_knn, cknna)")
  p.add_argument("--measures", default="mutual_knn", help="comma-separated grid measures (not cka: see cka.py)")
  p.add_argument("--loop_rows", type=int, default=4, help="x layers the per-pair loop is timed on")
  p.add_argument("--devices", type=int, default=1, help="forced CPU devices; > 1 also times the grid with mesh=")
  p.add_argument("--permutations", type=int, default=100, help="permutations of the fast null (0: skip nulls)")
  p.add_argument("--generic_permutations", type=int, default=2, help="permutations the generic null is timed on")
  p.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds; each contender keeps its best")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  a = p.parse_args(argv)
  if min(a.la, a.lb, a.n, a.dx, a.dy, a.k, a.loop_rows, a.devices, a.repeats) < 1:
    p.error("sizes and counts must be positive.")
  return a


def main(argv=None):
  a = parse_args(argv)
  force_cpu_devices(a.devices)  # before JAX's first computation
  import jax
  from xsim import similarity as sim
  from xsim.sharding import make_mesh

  xs_np, ys_np = make_data(a.la, a.n, a.dx, a.dy, a.seed, layers_y=a.lb)
  xs, ys = jax.numpy.asarray(xs_np), jax.numpy.asarray(ys_np)
  mesh = make_mesh(a.devices, 1) if a.devices > 1 else None
  rows_timed = min(a.loop_rows, a.la)
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; {a.la} x {a.lb} layers, n = {a.n}, "
        f"dx = {a.dx}, dy = {a.dy}, k = {a.k}, float32")
  rows = []  # (workload, xsim seconds, alternative, alternative seconds, note)
  for measure in a.measures.split(","):
    options = {"k": a.k} if "k" in sim.MEASURES[measure].options else {}
    pair = getattr(sim, measure)
    grid = compiled(lambda p, q: sim.similarity_grid(measure, p, q, **options), xs, ys)
    contenders = {
        "grid": lambda: np.asarray(grid(xs, ys)),
        "loop": lambda: np.asarray([[float(pair(x, y, **options)) for y in ys] for x in xs[:rows_timed]]),
    }
    if mesh is not None:
      grid_mesh = compiled(lambda p, q: sim.similarity_grid(measure, p, q, mesh=mesh, **options), xs, ys)
      contenders["mesh"] = lambda: np.asarray(grid_mesh(xs, ys))
    contenders["loop"]()  # compiles the per-pair function once, untimed
    best, out = {}, {}
    for _ in range(a.repeats):
      for name, fn in contenders.items():
        seconds, out[name] = best_time(fn, 1, warm_up=False)
        best[name] = min(best.get(name, float("inf")), seconds)
    diff = np.abs(out["loop"] - out["grid"][:rows_timed]).max()
    rows.append((f"{measure} grid", best["grid"], "per-pair loop", best["loop"] * a.la / rows_timed,
                 f"extrapolated from {rows_timed} x layers; max |diff| {diff:.1e}"))
    if mesh is not None:
      rows.append((f"{measure} grid", best["mesh"], "same grid, 1 device", best["grid"],
                   f"mesh {a.devices}x1; max |diff| {np.abs(out['mesh'] - out['grid']).max():.1e}"))

    if a.permutations:
      key = jax.random.PRNGKey(a.seed)
      fast = compiled(lambda p, q: sim.grid_null_max(measure, p, q, key=key, num_permutations=a.permutations,
                                                     mesh=mesh, **options), xs, ys)
      gm = sim.grid_measure(measure, **options)
      generic = compiled(lambda p, q: sim.permutation_null(gm, p, q, key=key, batch_size=None,
                                                           num_permutations=a.generic_permutations), xs, ys)
      t_fast, null = best_time(lambda: np.asarray(fast(xs, ys)), 1, warm_up=False)
      t_generic, _ = best_time(lambda: np.asarray(generic(xs, ys)), 1, warm_up=False)
      p_max = float(sim.p_value(out["grid"].max(), null))
      rows.append((f"{measure} null x{a.permutations}", t_fast, "generic permutation_null",
                   t_generic / a.generic_permutations * a.permutations,
                   f"extrapolated from {a.generic_permutations} permutations; p of the max {p_max:.3f}"))

  print(f"\n{'workload':<24} {'xsim s':>9}  {'alternative':<26} {'alt s':>9} {'alt/xsim':>9}  note")
  for work, t_xsim, alt, t_alt, note in rows:
    print(f"{work:<24} {t_xsim:>9.3f}  {alt:<26} {t_alt:>9.2f} {t_alt / t_xsim:>8.1f}x  {note}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(args=vars(a), device=f"{len(jax.devices())} x {jax.devices()[0].device_kind}",
                     rows=[dict(workload=w, xsim_s=t, alternative=alt, alternative_s=ta, note=note)
                           for w, t, alt, ta, note in rows]), f, indent=1)


if __name__ == "__main__":
  start = time.perf_counter()
  with cli.user_errors():
    main()
  print(f"total {time.perf_counter() - start:.0f} s")
