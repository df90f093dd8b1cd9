"""Blockwise and fused attention against the dense softmax formula in NumPy float64, across several blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xsim.models.layers import blockwise_attention, fused_attention

B, S, K, G, E = 3, 29, 2, 3, 8
LENGTHS = [29, 17, 1]


def _inputs(side: str, seed: int = 0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, S, K, G, E)).astype(np.float32)
  k = rng.normal(size=(B, S, K, E)).astype(np.float32)
  v = rng.normal(size=(B, S, K, E)).astype(np.float32)
  key_mask = np.zeros((B, S), bool)
  for row, n in enumerate(LENGTHS):
    key_mask[row, slice(S - n, S) if side == "left" else slice(0, n)] = True
  return q, k, v, key_mask


def _dense(q, k, v, key_mask, scale, softcap, window):
  """softmax over visible keys in float64 -> (out [B, S, K, G, E], rows with a visible key [B, S])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("bskge,btke->bkgst", q, k) * scale
  if softcap is not None:
    scores = softcap * np.tanh(scores / softcap)
  distance = np.arange(S)[:, None] - np.arange(S)[None, :]
  visible = (distance >= 0) & (distance < (window or S + 1))
  visible = visible[None] & key_mask[:, None, :]  # [B, S, T]
  scores = np.where(visible[:, None, None], scores, -np.inf)
  has_key = visible.any(-1)
  peak = np.where(has_key[:, None, None, :, None], scores.max(-1, keepdims=True), 0.0)
  weights = np.exp(scores - peak)
  probs = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-300)
  return np.einsum("bkgst,btke->bskge", probs, v), has_key


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("block_size", [4, None])  # 8 blocks (3 padded keys), or one
@pytest.mark.parametrize("softcap,window", [(None, None), (2.0, 5), (None, 9)])
def test_matches_dense_softmax(side, block_size, softcap, window):
  q, k, v, key_mask = _inputs(side)
  scale = E ** -0.5
  fn = jax.jit(lambda *a: blockwise_attention(*a, scale=scale, softcap=softcap, block_size=block_size,
                                              window=None if window is None else jnp.int32(window)))
  out = np.asarray(fn(q, k, v, key_mask))
  ref, has_key = _dense(q, k, v, key_mask, scale, softcap, window)
  assert out.shape == q.shape and out.dtype == np.float32
  np.testing.assert_allclose(out[has_key], ref[has_key], atol=2e-6, rtol=1e-5)
  assert has_key[key_mask].all()  # every real query is compared
  # Queries with no visible key (left padding; right padding past a window) give finite zeros, not NaN.
  assert (~has_key).any() or side == "right"
  np.testing.assert_array_equal(out[~has_key], 0.0)


def test_fully_masked_rows_stay_finite_with_large_scores():
  q, k, v, key_mask = _inputs("left", seed=1)
  key_mask[2] = False  # a row that is all padding
  out = np.asarray(blockwise_attention(1e3 * q, k, v, key_mask, scale=1.0, block_size=8))
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[2], 0.0)


def test_global_window_equals_no_window():
  """The window the decoder gives global layers (int32 max) changes nothing."""
  q, k, v, key_mask = _inputs("right")
  plain = blockwise_attention(q, k, v, key_mask, scale=0.3, block_size=8)
  wide = blockwise_attention(q, k, v, key_mask, scale=0.3, block_size=8, window=jnp.int32(np.iinfo(np.int32).max))
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(wide))


def test_bfloat16_inputs_track_float32():
  q, k, v, key_mask = _inputs("right")
  f32 = np.asarray(blockwise_attention(q, k, v, key_mask, scale=E ** -0.5, block_size=8))
  cast = lambda x: jnp.asarray(x, jnp.bfloat16)
  bf16 = blockwise_attention(cast(q), cast(k), cast(v), key_mask, scale=E ** -0.5, block_size=8)
  assert bf16.dtype == jnp.bfloat16
  rel = np.linalg.norm(np.asarray(bf16, np.float32) - f32) / np.linalg.norm(f32)
  assert rel < 0.02, rel


@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_attention_matches_dense_softmax_and_zeroes_pads(side):
  """The jax.nn.dot_product_attention path (XLA's kernel here, cuDNN's on GPUs) with rows rotated to lead with their
  real tokens: real queries as the formula, pad queries 0."""
  q, k, v, key_mask = _inputs(side)
  out = np.asarray(jax.jit(lambda *a: fused_attention(*a, scale=E ** -0.5))(q, k, v, key_mask))
  ref, _ = _dense(q, k, v, key_mask, E ** -0.5, None, None)
  assert out.shape == q.shape and out.dtype == np.float32
  np.testing.assert_allclose(out[key_mask], ref[key_mask], atol=2e-6, rtol=1e-5)
  np.testing.assert_array_equal(out[~key_mask], 0.0)
