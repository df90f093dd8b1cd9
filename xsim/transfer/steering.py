"""Steering-vector transfer, the array half: does a steering direction found on a source model, mapped into a target
model through a fitted linear map, move the target like the target's own vector?

  own = steering.mean_difference(target_pos, target_neg)[j]                      # [db] the target's own vector
  mapped = fit.map_direction(i, j, steering.mean_difference(source_pos, source_neg)[i][None])[0]      # [db]
  nulls = steering.with_norm(jnp.concatenate([steering.activation_directions(key, N, target_acts),
                                              steering.shuffled_ridge_directions(...)]), jnp.linalg.norm(mapped))
  # the runner adds each vector to the target's residual stream and scores every prompt (xsim.activations)
  result = steering.steering_efficacy(effect_mapped, effect_own, effect_null, key=key, num_resamples=1000)

Vectors are contrastive mean differences (CAA, Rimsky et al. 2024; ActAdd, Turner et al. 2023) or a binary probe's
weight direction. The null directions carry no transferred signal: random directions (isotropic, or drawn from the
target's activations), and the source vector mapped through ridge maps fit on shuffled pairs, each rescaled to the
mapped vector's norm.
"""
from __future__ import annotations

import dataclasses
import statistics

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import Precision

from xsim import linalg, resampling
from xsim.transfer import probes, splits


def mean_difference(positive, negative) -> np.ndarray:
  """The contrastive steering vector of every layer, mean(positive) - mean(negative) accumulated in float64;
  positive: [L, n1, d], negative: [L, n2, d] activations -> [L, d] float32."""
  splits.check_layers(positive, "positive")
  splits.check_layers(negative, "negative")
  if positive.shape[0] != negative.shape[0] or positive.shape[2] != negative.shape[2]:
    raise ValueError(f"positive {positive.shape} and negative {negative.shape} must have the same layers and width "
                     "([L, n1, d] and [L, n2, d]); take both from the same model and layers.")
  means = [np.mean(np.asarray(x), axis=1, dtype=np.float64) for x in (positive, negative)]
  return (means[0] - means[1]).astype(np.float32)


def probe_direction(probe: probes.ProbeFit) -> np.ndarray:
  """A binary probe's weight direction in raw activation coordinates, the gradient of its logit with respect to the
  raw activation: weights / std, as probes act on standardized features -> [L, d] float32."""
  if probe.weights.shape[2] != 1:
    raise ValueError(f"probe_direction takes a binary probe (one logit); this one has {probe.weights.shape[2]} "
                     "classes. Fit it with transfer.fit_logistic_probes.")
  return (probe.weights[:, :, 0] / probe.std).astype(np.float32)


def shuffled_ridge_directions(source, target, vector, penalty: float, permutations, *,
                              standardize: bool = True) -> jnp.ndarray:
  """The shuffled-pair null of a mapped direction: `vector` mapped through ridge maps fit on row-permuted pairs.

  Map k is the ridge map maps.fit_linear_maps fits with transfer.Ridge(penalties=(penalty,), standardize=...) on
  these rows, with source row r paired with target row permutations[k, r]: rows standardized with their own mean
  and std (splits.layer_moments; the permutation changes neither), no intercept after centring, and
  lambda = penalty * n (ridge.fit_ridge's per-row units). The penalty is fixed, e.g. the real map's
  fit.penalty[i, j], not chosen on validation rows. With standardized rows X = U S V' and Y, the map sends
  u = vector / std_x to u V diag(s / (s^2 + lambda)) U' P_k Y = a' P_k Y, and a [n] does not depend on the
  permutation: one SVD serves every map, then a [num, n] @ [n, db] product.

  Args:
    source: [n, da] the rows the real map was fit on (its training rows, fit.split.train).
    target: [n, db] the same rows of the target layer.
    vector: [da] a raw source-layer direction.
    penalty: positive per-row ridge penalty.
    permutations: [num, n] row orders, e.g. xsim.resampling.permutations(key, num, n).
    standardize: the solver's option (False: rows centred only).

  Returns:
    [num, db] float32 raw target-layer directions, comparable to fit.map_direction(i, j, vector[None]).
  """
  source, target, vector = np.asarray(source), np.asarray(target), np.asarray(vector)
  if source.ndim != 2 or target.ndim != 2 or source.shape[0] != target.shape[0] or source.shape[0] < 2:
    raise ValueError(f"source {source.shape} and target {target.shape} must be [n, da] and [n, db] with the same "
                     "n >= 2 rows (the real map's training rows).")
  n = source.shape[0]
  if vector.shape != (source.shape[1],):
    raise ValueError(f"vector must be [da={source.shape[1]}], got {vector.shape}.")
  if not penalty > 0:
    raise ValueError(f"penalty={penalty} must be positive, like a Ridge solver's penalties.")
  permutations = np.asarray(permutations)
  if permutations.ndim != 2 or permutations.shape[1] != n or not np.array_equal(
      np.sort(permutations, axis=1), np.broadcast_to(np.arange(n), permutations.shape)):
    raise ValueError(f"permutations must be [num, n={n}], each row a permutation of range(n), got shape "
                     f"{permutations.shape}; draw them with xsim.resampling.permutations(key, num, n).")
  every_row = np.arange(n)
  (x_mean, x_std), (y_mean, y_std) = (splits.layer_moments(a[None], every_row, name)
                                      for a, name in ((source, "source"), (target, "target")))
  if not standardize:
    x_std, y_std = np.ones_like(x_std), np.ones_like(y_std)
  return _shuffled_directions(source, target, (x_mean[0], x_std[0]), (y_mean[0], y_std[0]),
                              np.float32(penalty * n), jnp.asarray(vector, jnp.float32),
                              np.argsort(permutations, axis=1))


@jax.jit
def _shuffled_directions(source, target, x_moments, y_moments, lam, vector, inverse):
  """The body of shuffled_ridge_directions; inverse: [num, n] inverse permutations -> [num, db]. The map of
  permutation P sends the direction to sum_r a_r y[P[r]] = sum_s a[P^-1[s]] y_s: P only reorders a."""
  x, y = splits.standardize(source, *x_moments), splits.standardize(target, *y_moments)
  u, s, vt = linalg.svd(x)
  coefficients = jnp.einsum("nk,k,ka,a->n", u, s / (s**2 + lam), vt, vector / x_moments[1],
                            precision=Precision.HIGHEST)
  return jnp.einsum("kn,nb->kb", coefficients[inverse], y, precision=Precision.HIGHEST) * y_moments[1]


def random_directions(key: jax.Array, num: int, d: int) -> jnp.ndarray:
  """-> [num, d] float32 unit vectors, uniform on the sphere (normalized Gaussian draws)."""
  draws = jax.random.normal(key, (num, d), jnp.float32)
  return draws / jnp.linalg.norm(draws, axis=1, keepdims=True)


def activation_directions(key: jax.Array, num: int, activations) -> jnp.ndarray:
  """-> [num, d] float32 unit vectors drawn from the activations' own distribution: Gaussian combinations of the
  centred rows of activations [n, d] (so direction z has covariance proportional to theirs). A null direction of
  this kind is as natural as a contrastive vector, which is itself a difference of row means, but carries no
  concept; an isotropic one (random_directions) mostly moves dimensions the model barely uses."""
  chex.assert_rank(activations, 2)
  rows = jnp.asarray(activations, jnp.float32)
  rows = rows - rows.mean(0)
  draws = jnp.einsum("kn,nd->kd", jax.random.normal(key, (num, rows.shape[0]), jnp.float32), rows,
                     precision=Precision.HIGHEST)
  return draws / jnp.linalg.norm(draws, axis=1, keepdims=True)


def with_norm(vectors, norm) -> jnp.ndarray:
  """vectors: [m, d] with each row rescaled to Euclidean norm `norm` (a scalar or [m]); zero rows stay zero."""
  vectors = jnp.asarray(vectors, jnp.float32)
  chex.assert_rank(vectors, 2)
  lengths = jnp.linalg.norm(vectors, axis=1)
  norm = jnp.broadcast_to(jnp.asarray(norm, jnp.float32), lengths.shape)
  return vectors * (norm / jnp.where(lengths > 0, lengths, 1.0))[:, None]


@dataclasses.dataclass(frozen=True)
class Efficacy:
  """How far a mapped steering vector moves the target, in units of the target's own vector's effect."""
  efficacy: float  # mean(effect_mapped) / mean(effect_own)
  ci_low: float  # prompt and direction noise combined (steering_efficacy); NaN if a subsample's own effect is 0
  ci_high: float
  null_mean: float  # efficacies of the null directions
  null_sd: float
  null_q95: float
  p_value: float  # (1 + #{null efficacy >= efficacy}) / (N + 1)
  null_efficacies: tuple  # [N] each null direction's efficacy, in the order of effect_null
  mapped_effect: float  # mean(effect_mapped)
  own_effect: float  # mean(effect_own)
  n: int  # prompts


def steering_efficacy(effect_mapped, effect_own, effect_null, *, key: jax.Array, num_resamples: int,
                      level: float = 0.95) -> Efficacy:
  """The mapped vector's efficacy E = mean(effect_mapped) / mean(effect_own), its interval and its null.

  Effects are per-prompt (steered minus unsteered score). The interval holds two independent sources of noise:
  the prompts, through the basic subsampling interval [low, high] of the ratio (num_resamples subsets of n // 2
  prompts, the same subsets for numerator and denominator: resampling.subsets and subsample_interval), and the
  direction, through the sd of the null directions' efficacies (how far a direction of this norm that carries no
  transferred signal moves the target). Their half-widths add in quadrature:
    [E - sqrt(h_low^2 + h_dir^2), E + sqrt(h_high^2 + h_dir^2)],
    h_low = max(E - low, 0), h_high = max(high - E, 0), h_dir = z * null_sd, z = Phi^-1((1 + level) / 2).
  The p-value is one-sided (resampling.p_value): a null direction at least as effective as the mapped vector.

  Args:
    effect_mapped: [n] effects of the mapped source vector.
    effect_own: [n] effects of the target's own vector; its mean must be finite and non-zero.
    effect_null: [N, n] effects of N >= 2 null directions (random and shuffled-map directions of equal norm).
    key: draws the prompt subsets.
    num_resamples: number of subsets (at least 2).
    level: coverage of the interval, in (0, 1).

  Returns:
    Efficacy (accumulated in float64).
  """
  mapped, own, null = (np.asarray(a, np.float64) for a in (effect_mapped, effect_own, effect_null))
  if mapped.ndim != 1 or own.shape != mapped.shape or null.ndim != 2 or null.shape[1] != mapped.shape[0]:
    raise ValueError(f"effect_mapped {mapped.shape}, effect_own {own.shape} and effect_null {null.shape} must be "
                     "[n], [n] and [N, n] per-prompt effects on the same prompts.")
  n = mapped.shape[0]
  if n < 4:
    raise ValueError(f"n={n} prompts are too few: the interval subsamples n // 2 >= 2 of them; use at least 4.")
  if null.shape[0] < 2:
    raise ValueError(f"effect_null holds {null.shape[0]} null direction(s); the null's sd needs at least 2.")
  for name, a in (("effect_mapped", mapped), ("effect_own", own), ("effect_null", null)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} holds NaN or inf; drop the prompts whose scores are undefined.")
  own_effect = own.mean()
  if own_effect == 0 or not np.isfinite(own_effect):
    raise ValueError(f"mean(effect_own) = {own_effect}: efficacy, a ratio to the target's own vector's effect, needs "
                     "a finite non-zero one; pick another layer, scale or vector.")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  if num_resamples < 2:
    raise ValueError(f"num_resamples={num_resamples} must be at least 2.")

  estimate = mapped.mean() / own_effect
  rows = np.asarray(resampling.subsets(key, num_resamples, n))
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = mapped[rows].mean(axis=1) / own[rows].mean(axis=1)
  null_efficacy = null.mean(axis=1) / own_effect
  null_sd = null_efficacy.std(ddof=1)
  if np.all(np.isfinite(ratios)):
    low, high = (float(b) for b in resampling.subsample_interval(estimate, ratios, n, level=level))
    direction = statistics.NormalDist().inv_cdf((1.0 + level) / 2.0) * null_sd
    ci_low = estimate - np.hypot(max(estimate - low, 0.0), direction)
    ci_high = estimate + np.hypot(max(high - estimate, 0.0), direction)
  else:
    ci_low = ci_high = np.nan
  return Efficacy(efficacy=float(estimate), ci_low=float(ci_low), ci_high=float(ci_high),
                  null_mean=float(null_efficacy.mean()), null_sd=float(null_sd),
                  null_q95=float(np.quantile(null_efficacy, 0.95)),
                  p_value=float(resampling.p_value(estimate, null_efficacy)),
                  null_efficacies=tuple(float(v) for v in null_efficacy), mapped_effect=float(mapped.mean()),
                  own_effect=float(own_effect), n=n)
