"""Scores for maps, probes and patched forward passes (R^2, KL, top-1 agreement, top-k accuracy).

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


def patching_scores(clean_logits, patched_logits, next_tokens, batch_size: int = 16) -> dict:
  """Per-sample next_token_scores of a patched pass, as float64 NumPy arrays (means over samples in float64).

  Rows are scored `batch_size` at a time, in the batches patched_logits runs: XLA rounds a reduction over the
  vocabulary differently for different row counts, so the same blocks give the numbers of scoring each batch.

  Args:
    clean_logits: [n, vocab] the target's unpatched logits (xsim.activations.patching.clean_logits).
    patched_logits: [n, vocab] its logits after patching (xsim.activations.patching.patched_logits).
    next_tokens: [n] the true next token of each sample.
    batch_size: rows scored at a time (patched_logits' batch_size).

  Returns:
    dict of [n] float64: `kl`, `top1_agreement`, `next_token_accuracy` and `clean_accuracy` (see next_token_scores).
  """
  blocks = [next_token_scores(clean_logits[start:start + batch_size], patched_logits[start:start + batch_size],
                              next_tokens[start:start + batch_size])
            for start in range(0, len(next_tokens), batch_size)]
  return {name: np.concatenate([np.asarray(b[name], np.float64) for b in blocks]) for name in blocks[0]}
