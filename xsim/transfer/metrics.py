"""Scores for maps, probes and patched forward passes (R^2, KL, top-1 agreement, top-k accuracy) and bootstrap CIs.

Pure functions of arrays; each reduces only the axes named in its docstring, so callers vmap or mask freely.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def r2_score(y_true, y_pred):
  """Held-out R^2, averaged uniformly over output dimensions.

  Per dimension 1 - SSE / SST with SST about the mean of `y_true` over the rows (scikit-learn's convention), so a
  predictor of any constant scores <= 0 and the mean predictor fit on other rows lands just below 0. Dimensions
  with no variance in `y_true` are left out of the average (their R^2 is undefined).

  Args:
    y_true: [..., n, d] targets.
    y_pred: [..., n, d] predictions.

  Returns:
    [...] R^2.
  """
  y_true = jnp.asarray(y_true, jnp.float32)
  y_pred = jnp.asarray(y_pred, jnp.float32)
  sse = jnp.sum((y_true - y_pred) ** 2, axis=-2)
  sst = jnp.sum((y_true - jnp.mean(y_true, axis=-2, keepdims=True)) ** 2, axis=-2)
  valid = sst > 0
  per_dim = jnp.where(valid, 1.0 - sse / jnp.where(valid, sst, 1.0), 0.0)
  return jnp.sum(per_dim, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1)


def kl_divergence(clean_logits, patched_logits):
  """KL(p_clean || p_patched) in nats, over the last (vocabulary) axis.

  Args:
    clean_logits: [..., vocab] logits of the unpatched forward pass.
    patched_logits: [..., vocab] logits after patching.

  Returns:
    [...] KL divergence, >= 0 and exactly 0 where the two logit rows agree up to a constant.
  """
  log_p = jax.nn.log_softmax(jnp.asarray(clean_logits, jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(jnp.asarray(patched_logits, jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def top1_agreement(clean_logits, patched_logits):
  """1.0 where the patched pass predicts the same top token as the clean one, else 0.0.

  Args:
    clean_logits: [..., vocab].
    patched_logits: [..., vocab].

  Returns:
    [...] float32 in {0, 1}.
  """
  return (jnp.argmax(clean_logits, axis=-1) == jnp.argmax(patched_logits, axis=-1)).astype(jnp.float32)


def topk_accuracy(logits, labels, k=1):
  """1.0 where `labels` is among the k largest logits, else 0.0 (next-token accuracy is k = 1).

  A label counts as within the top k when fewer than k logits are strictly larger than its own, so ties are
  resolved in the label's favour; this needs one pass over the vocabulary instead of a sort.

  Args:
    logits: [..., classes].
    labels: integer class ids in [0, classes), broadcastable to [...].
    k: how many top classes count as a hit.

  Returns:
    [...] float32 in {0, 1}.
  """
  logits = jnp.asarray(logits)
  labels = jnp.broadcast_to(jnp.asarray(labels), logits.shape[:-1])
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)
  num_larger = jnp.sum(logits > label_logit, axis=-1)
  return (num_larger < k).astype(jnp.float32)


def next_token_scores(clean_logits, patched_logits, next_tokens):
  """Per-position scores of a patched forward pass against the clean one and the true next token.

  Args:
    clean_logits: [..., vocab] the target model's unpatched logits.
    patched_logits: [..., vocab] its logits after writing a (mapped) activation into its residual stream.
    next_tokens: [...] the true next token after each position (from the text after the sample position).

  Returns:
    dict of [...] float32: `kl` (KL(clean || patched) in nats), `top1_agreement`, `next_token_accuracy` (of the
    patched pass) and `clean_accuracy` (of the unpatched pass, the ceiling).
  """
  return {
      "kl": kl_divergence(clean_logits, patched_logits),
      "top1_agreement": top1_agreement(clean_logits, patched_logits),
      "next_token_accuracy": topk_accuracy(patched_logits, next_tokens),
      "clean_accuracy": topk_accuracy(clean_logits, next_tokens),
  }


def bootstrap_mean_ci(values, *, num_resamples: int = 1000, level: float = 0.95, seed: int = 0):
  """Percentile bootstrap confidence interval of the mean over the last axis (the rows).

  Unlike xsim.similarity.bootstrap_ci (any measure of two arrays, a JAX key, a tuple of bounds), this takes
  per-row scores, whose resampled means need no recomputation: a resample's mean is counts . values / m with
  counts the multiplicity of each row in the draw, so all resamples cost one [..., m] x [m, R] matmul. Every
  entry of the leading axes is resampled with the same row draws, so intervals of scores taken on the same rows
  (a map, its ceiling, its baseline) are paired.

  Args:
    values: [..., m] per-row scores (e.g. 0/1 hits).
    num_resamples: R, number of bootstrap resamples.
    level: coverage of the interval, in (0, 1).
    seed: seeds the row draws.

  Returns:
    [..., 2] lower and upper bounds.
  """
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95.")
  if num_resamples < 2:
    raise ValueError(f"num_resamples={num_resamples} must be at least 2.")
  values = jnp.asarray(values, jnp.float32)
  num_rows = values.shape[-1]
  draws = np.random.default_rng(seed).integers(0, num_rows, size=(num_resamples, num_rows))
  offsets = num_rows * np.arange(num_resamples)[:, None]  # one bincount for all resamples (XLA's CPU scatter is slow)
  counts = np.bincount((draws + offsets).ravel(), minlength=num_resamples * num_rows).reshape(draws.shape)
  means = jnp.einsum("...m,rm->...r", values, jnp.asarray(counts, jnp.float32),
                     precision=jax.lax.Precision.HIGHEST) / num_rows
  tail = (1.0 - level) / 2.0
  return jnp.moveaxis(jnp.quantile(means, jnp.array([tail, 1.0 - tail]), axis=-1), 0, -1)
