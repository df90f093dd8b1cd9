"""Linear maps for every layer pair: xsim's vmapped optax trainer and ridge path vs one pair at a time.

  python -m experiments.benchmarks.transfer                 # 24 x 24 layers, n = 8,192, d = 1,024 (hours on CPU)
  python -m experiments.benchmarks.transfer --layers 6 --n 4096 --d 512 --steps 100 --batch_size 512
  python -m experiments.benchmarks.transfer --layers 4 --d 2048 --d_target 1536 --steps 100   # 16 pairs, GPU-sized

Workloads, on the same random float32 activations (target layer j, --d_target wide, is a noisy linear map of
source layer j, --d wide):
  optax: `fit_linear_maps(..., Adam(...))` (per chunk of target layers one jitted while-loop, every pair of the
         chunk in one vmapped step) vs the honest alternative: a Python loop over pairs calling a jitted
         single-pair step `steps` times, with xsim's own optimizer step (`train.model_step`), minibatches,
         step count and validation cadence:
           rows:       the step takes the minibatch rows (what a per-pair script does);
           statistics: the step takes the batch statistics xsim uses, computed per pair (this separates the gain
                       of batching pairs from that of the statistics).
         Early stopping is off (patience above the number of evaluations) so every run takes every step.
         xsim's executed matmul FLOP/s is compared with plain float32 matmuls at HIGHEST precision.
  ridge: `fit_linear_maps(..., Ridge(...))` (one SVD per source layer, --lambdas penalties from it) vs a
         per-pair jitted ridge solving (X'X + lambda I) W = X'Y for each lambda, and vs the optax loop.
Accuracy: xsim's float32 ridge map on raw-activation-like features (scales log-spaced over 1e-2..1e2, four
massive dimensions at 1e3; the published untuned penalty 1e-4 / 3000 per row) against float64 NumPy.
Timing is per source layer, each workload right after the others, best of --rounds, so a busy machine slows all
sides alike; the loops run on --loop_targets target layers per source layer and are extrapolated (printed).
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import Precision

from experiments import cli
from xsim import transfer
from xsim.transfer import splits, train


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=24, help="La = Lb")
  p.add_argument("--n", type=int, default=8192, help="rows (60%% train, 20%% val, 20%% test)")
  p.add_argument("--d", type=int, default=1024, help="da, the source width")
  p.add_argument("--d_target", type=int, default=None, help="db, the target width (default: --d)")
  p.add_argument("--steps", type=int, default=200, help="optimizer steps per map")
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--eval_every", type=int, default=25)
  p.add_argument("--penalties", type=int, default=1, help="size of the optax penalty grid (models per pair)")
  p.add_argument("--lambdas", type=int, default=17, help="size of the ridge penalty path")
  p.add_argument("--chunk_sizes", default="", help="comma-separated xsim chunk sizes to time (default: all "
                 "target layers of a source in one chunk)")
  p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds; the best is kept")
  p.add_argument("--sources", type=int, default=None, help="source layers timed (default all); extrapolated")
  p.add_argument("--loop_targets", type=int, default=3,
                 help="target layers per source layer the loops are timed on; extrapolated")
  p.add_argument("--matmul", type=int, default=2048, help="side of the reference square matmul")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  args = p.parse_args(argv)
  args.d_target = args.d_target or args.d
  if min(args.layers, args.n, args.d, args.d_target, args.steps, args.batch_size, args.eval_every, args.penalties, args.lambdas,
         args.loop_targets, args.rounds, args.sources or 1) < 1:
    p.error("sizes and counts must be positive.")
  return args


def make_data(layers: int, n: int, da: int, db: int, seed: int):
  """-> source [L, n, da], target [L, n, db] float32; target layer j is a noisy linear function of source
  layer j."""
  rng = np.random.default_rng(seed)
  source = rng.standard_normal((layers, n, da), dtype=np.float32)
  target = np.empty((layers, n, db), np.float32)
  for j in range(layers):
    mix = rng.standard_normal((da, db), dtype=np.float32) / np.sqrt(da)
    target[j] = source[j] @ mix + rng.standard_normal((n, db), dtype=np.float32)
  return source, target


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def matmul_rate(side: int) -> float:
  """FLOP/s of a float32 [side, side] x [side, side] matmul at HIGHEST precision, best of 3 after a warm-up."""
  a = jnp.asarray(np.random.default_rng(1).standard_normal((side, side), dtype=np.float32))
  mm = jax.jit(lambda a: jnp.dot(a, a, precision=Precision.HIGHEST))
  mm(a).block_until_ready()
  return 2.0 * side**3 / min(timed(lambda: mm(a).block_until_ready())[0] for _ in range(3))


def optax_flops(num_targets: int, models_per_pair: int, split: splits.Split, da: int, db: int,
                settings: train.TrainSettings) -> float:
  """Matmul FLOPs xsim's optax trainer executes for one source layer and `num_targets` target layers: batch
  statistics (or per-step row matmuls), validation and test passes."""
  rows, _ = train.minibatches(settings, len(split.train))
  evaluations = 1 + settings.steps // settings.eval_every + (settings.steps % settings.eval_every != 0)
  per_model = evaluations * 2 * len(split.val) * da * db
  per_pair = per_source = 0
  if train.uses_statistics(settings, len(split.train), da):
    per_model += settings.steps * 2 * db * da * da  # W [db, da] S_b [da, da]
    per_pair = 2 * rows.size * db * da  # Y_b'X_b of every batch
    per_source = 2 * rows.size * da * da  # X_b'X_b of every batch
  else:
    per_model += settings.steps * 4 * rows.shape[1] * da * db  # X_b W' and (residual)'X_b
  per_pair += models_per_pair * per_model + 2 * len(split.test) * da * db
  return per_source + num_targets * per_pair


def make_loop_functions(settings: train.TrainSettings):
  """The per-pair loop's jitted single-model step (for rows or statistics) and its keep-the-best evaluation."""

  @jax.jit
  def step(params, opt_state, batch, penalty):
    return train.model_step(settings, params, opt_state, batch, penalty)

  @jax.jit
  def keep_best(params, best, best_val, x_val, y_val):
    val = train.mse(params, x_val, y_val)
    better = val < best_val
    return jax.tree_util.tree_map(lambda p, b: jnp.where(better, p, b), params, best), jnp.minimum(val, best_val)

  return step, keep_best


def loop_pair(settings, step_fn, batches, schedule, penalty, x_val, y_val, keep_best):
  """Trains one pair the way a per-pair script would: a jitted step called `steps` times from Python.

  batches: the step's argument for each minibatch (rows, or statistics); schedule: minibatch of each step.
  """
  params = train.init_params(settings, x_val.shape[1], y_val.shape[1])
  opt_state = train.make_optimizer(settings, 0.0).init(params)
  best, best_val = params, jnp.float32(jnp.inf)
  for step in range(settings.steps):
    params, opt_state = step_fn(params, opt_state, batches[schedule[step]], penalty)
    if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
      best, best_val = keep_best(params, best, best_val, x_val, y_val)
  return jax.block_until_ready(best)


@jax.jit
def ridge_pair_direct(x_train, y_train, x_val, y_val, x_test, y_test, lambdas):
  """Per-pair ridge the direct way: X'X and X'Y of this pair, one solve per lambda, best on validation."""
  gram = jnp.einsum("na,nb->ab", x_train, x_train, precision=Precision.HIGHEST)
  cross = jnp.einsum("na,nb->ab", x_train, y_train, precision=Precision.HIGHEST)
  eye = jnp.eye(gram.shape[0], dtype=gram.dtype)

  def solve(lam):
    w = jax.scipy.linalg.solve(gram + lam * eye, cross, assume_a="pos")
    return w, jnp.sum((jnp.einsum("na,ab->nb", x_val, w, precision=Precision.HIGHEST) - y_val) ** 2)

  weights, errors = jax.lax.map(solve, lambdas)
  w = weights[jnp.argmin(errors)]
  return transfer.r2_score(y_test, jnp.einsum("na,ab->nb", x_test, w, precision=Precision.HIGHEST))


def raw_feature_accuracy(n: int, d: int, seed: int) -> tuple[float, float, float]:
  """-> (condition number of the centred training rows, relative error of the weights, of the test-row
  predictions) of xsim's float32 ridge map against float64 NumPy, on one raw-activation-like layer pair."""
  rng = np.random.default_rng(seed)
  scales = np.logspace(-2, 2, d)
  scales[rng.choice(d, 4, replace=False)] = 1e3
  x = ((rng.standard_normal((n, d)) + 3.0 * rng.standard_normal(d)) * scales).astype(np.float32)
  mix = rng.standard_normal((d, d)) / scales[:, None] / np.sqrt(d)  # every dimension matters to the target
  y = (x @ mix + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
  penalty = 1e-4 / 3000
  fit = transfer.fit_linear_maps(x[None], y[None], transfer.Ridge([penalty], standardize=False), seed=seed)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  x_mean = x64[fit.split.train].mean(axis=0)
  xc, yc = x64[fit.split.train] - x_mean, y64[fit.split.train] - y64[fit.split.train].mean(axis=0)
  expected = np.linalg.solve(xc.T @ xc + penalty * len(xc) * np.eye(d), xc.T @ yc)
  weight = fit.params["weight"][0].T.astype(np.float64)
  test = x64[fit.split.test] - x_mean
  relative = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
  return float(np.linalg.cond(xc)), relative(weight, expected), relative(test @ weight, test @ expected)


def main(argv=None):
  a = parse_args(argv)
  L, n, d, db = a.layers, a.n, a.d, a.d_target
  source, target = make_data(L, n, d, db, a.seed)
  penalties = tuple(float(p) for p in np.logspace(-3, -1, a.penalties))
  lambdas = tuple(float(p) for p in np.logspace(-5, 3, a.lambdas))
  chunk_sizes = [int(c) for c in a.chunk_sizes.split(",")] if a.chunk_sizes else [L]
  sources = list(range(min(a.sources or L, L)))
  loop_targets = list(range(min(a.loop_targets, L)))
  settings = train.TrainSettings(optimizer="adam", steps=a.steps, batch_size=a.batch_size,
                                 eval_every=a.eval_every, patience=a.steps + 1, seed=a.seed)
  split = transfer.make_split(n, seed=a.seed)
  rows, schedule = train.minibatches(settings, len(split.train))
  statistics = train.uses_statistics(settings, len(split.train), d)
  print(f"devices: {jax.devices()}; La = Lb = {L}, n = {n} ({len(split.train)} train), da = {d}, db = {db}, "
        f"{a.steps} steps over {rows.shape[0]} batches of {rows.shape[1]} rows, {a.penalties} penalties per pair, "
        f"float32; xsim gradients from {'batch statistics' if statistics else 'rows'}")
  print(f"timing, per source layer and interleaved (so machine load hits every side alike): xsim on all {L} "
        f"targets, the loops on {len(loop_targets)}; {len(sources)} of {L} source layers, best of {a.rounds} "
        f"rounds; totals extrapolated to all {L} x {L} pairs")

  def xsim_fit(layer, solver):
    """Held-out R^2 [L, L] of the maps from source layer `layer` (the maps themselves are dropped)."""
    return transfer.fit_linear_maps(source, target, solver, pairs=[(layer, j) for j in range(L)], seed=a.seed).r2

  optax_options = dict(penalties=penalties, steps=a.steps, batch_size=a.batch_size, eval_every=a.eval_every,
                       patience=a.steps + 1)
  ridge = transfer.Ridge(lambdas, chunk_size=L)

  # The loops get standardized device arrays (standardization is not timed: a gift to the loops).
  step_fn, keep_best = make_loop_functions(settings)
  pair_statistics = jax.jit(train.chunk_statistics)
  lam = jnp.asarray(lambdas, jnp.float32) * len(split.train)

  def standardized_parts(x):
    mean, std = splits.layer_moments(x[None], split.train, "x")
    z = splits.standardize(x, mean[0], std[0])
    return [jax.block_until_ready(z[part]) for part in (split.train, split.val, split.test)]

  target_parts = [standardized_parts(target[j]) for j in loop_targets]

  def row_batches(x_train, y_train):
    return [(x_train[r], y_train[r]) for r in rows]

  def statistics_batches(x_train, y_train):
    stats = pair_statistics(x_train, y_train[None], rows)
    return [train.select_batch(stats, b)._replace(yx=stats.yx[b, 0], y_sum=stats.y_sum[b, 0])
            for b in range(len(rows))]

  def loop(x_parts, make_batches):
    for y_parts in target_parts:
      batches = make_batches(x_parts[0], y_parts[0])  # timed: part of training a pair
      for penalty in penalties:
        loop_pair(settings, step_fn, batches, schedule, penalty, x_parts[1], y_parts[1], keep_best)

  def direct_ridge(x_parts):
    return [float(ridge_pair_direct(x_parts[0], y[0], x_parts[1], y[1], x_parts[2], y[2], lam))
            for y in target_parts]

  def workloads(layer, x_parts):
    jobs = {f"xsim optax, chunk {c}": functools.partial(xsim_fit, layer, transfer.Adam(chunk_size=c, **optax_options))
            for c in chunk_sizes}
    jobs["loop, rows step"] = functools.partial(loop, x_parts, row_batches)
    jobs["loop, statistics step"] = functools.partial(loop, x_parts, statistics_batches)
    jobs["xsim ridge path"] = functools.partial(xsim_fit, layer, ridge)
    jobs["loop, direct ridge"] = functools.partial(direct_ridge, x_parts)
    return jobs

  for job in workloads(0, standardized_parts(source[0])).values():
    job()  # warm-up: compiles every shape the timed runs use
  best = {}  # (workload, source layer) -> seconds
  results = {}
  for _ in range(a.rounds):
    for layer in sources:
      for name, job in workloads(layer, standardized_parts(source[layer])).items():
        elapsed, results[name, layer] = timed(job)
        best[name, layer] = min(best.get((name, layer), np.inf), elapsed)
  names = list(workloads(0, None))
  total = {name: sum(best[name, layer] for layer in sources) * L / len(sources) for name in names}
  for name in ("loop, rows step", "loop, statistics step", "loop, direct ridge"):
    total[name] *= L / len(loop_targets)

  flops = optax_flops(L, a.penalties, split, d, db, settings) * L
  rate_mm, rate_mm_d = matmul_rate(a.matmul), matmul_rate(d)
  print(f"plain matmul: {a.matmul}^3 {rate_mm / 1e9:.1f} GFLOP/s, {d}^3 {rate_mm_d / 1e9:.1f} GFLOP/s")
  for c in chunk_sizes:
    rate = flops / total[f"xsim optax, chunk {c}"]
    print(f"xsim optax, chunk {c}: {flops / 1e12:.2f} TFLOP of matmuls at {rate / 1e9:.1f} GFLOP/s = "
          f"{rate / rate_mm:.0%} of the {a.matmul}^3 matmul, {rate / rate_mm_d:.0%} of the {d}^3 one")
  layer = sources[-1]
  optax_r2 = results[f"xsim optax, chunk {chunk_sizes[0]}", layer][layer, layer]
  ridge_r2 = results["xsim ridge path", layer][layer]
  direct_r2 = results["loop, direct ridge", layer]
  print(f"held-out R^2 of planted pair ({layer}, {layer}): optax {optax_r2:.4f}, ridge {ridge_r2[layer]:.4f}; "
        f"ridge path vs direct solves: max |R^2 diff| {np.max(np.abs(ridge_r2[loop_targets] - direct_r2)):.1e}")

  kappa, weight_error, prediction_error = raw_feature_accuracy(n, d, a.seed)
  print(f"float32 vs float64 ridge map on raw features (kappa {kappa:.0e}, penalty 1e-4 / 3000 per row): relative "
        f"error {weight_error:.1e} in the weights, {prediction_error:.1e} in the test predictions")

  pairs_out = [(f"xsim optax, chunk {c}", alt) for c in chunk_sizes
               for alt in ("loop, rows step", "loop, statistics step")]
  pairs_out += [("xsim ridge path", "loop, direct ridge"), ("xsim ridge path", "loop, rows step")]
  print(f"\n{'xsim':<22} {'s':>8}  {'alternative':<22} {'s':>8} {'alt/xsim':>9}")
  for ours, alt in pairs_out:
    print(f"{ours:<22} {total[ours]:>8.2f}  {alt:<22} {total[alt]:>8.2f} {total[alt] / total[ours]:>8.1f}x")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(args=vars(a), device=str(jax.devices()[0].device_kind), seconds=total,
                     optax_flops=flops, matmul_flops_per_s={str(a.matmul): rate_mm, str(d): rate_mm_d},
                     r2=dict(optax=float(optax_r2), ridge=float(ridge_r2[layer]),
                             ridge_vs_direct=float(np.max(np.abs(ridge_r2[loop_targets] - direct_r2)))),
                     raw_features=dict(condition=kappa, weight_error=weight_error, prediction_error=prediction_error),
                     rows=[dict(xsim=ours, xsim_s=total[ours], alternative=alt, alternative_s=total[alt])
                           for ours, alt in pairs_out]), f, indent=1)


if __name__ == "__main__":
  with cli.user_errors():
    main()
