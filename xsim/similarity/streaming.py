"""Exact streaming linear CKA: the full-data value (biased or debiased) from batches of rows.

Every term of linear HSIC is a sum over rows of products of features, so batches can add their share of
sum x, X'Y, X'X, Y'Y, the squared row norms r and a few of their products, and `stream_hsic` recovers linear
HSIC of all rows, centered by their overall mean, at the end: the result does not depend on the batch size (peers that
average per-batch estimates, such as minibatch CKA, do). Features are shifted by the first batch's mean
before accumulating, so float32 sums do not cancel when activations sit far from the origin.
Memory is La * Lb * da * db floats (X_a'Y_b for every pair), independent of n.
"""
from __future__ import annotations

import functools
from typing import Iterable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from xsim.similarity import checks
from xsim.similarity.checks import HIGHEST
from xsim.similarity.cka import LinearHsic, cka_from_hsic, hsic_from_traces
from xsim.similarity.preprocess import Preprocess, as_preprocess, preprocess as apply_preprocess

# Options that act on each row alone; the others need statistics of all rows before the first batch.
ROW_WISE = ("none", "center", "l2")


class StreamState(NamedTuple):
  """Running sums over rows of shifted features x = x_raw - shift_x (likewise y); r = squared row norms.

  shift_x [La, da]; count []; sum_x [La, da] = sum x; xtx [La, da, da] = X'X; x_rx [La, da] = X'r_x;
  rx [La] = sum r_x; rxrx [La] = sum r_x^2; the same for y; xty [La, Lb, da, db] = X_a'Y_b;
  x_ry [La, Lb, da] = X_a'r_y; y_rx [La, Lb, db] = Y_b'r_x; rxry [La, Lb] = sum r_x r_y.
  """
  shift_x: jnp.ndarray
  shift_y: jnp.ndarray
  count: jnp.ndarray
  sum_x: jnp.ndarray
  sum_y: jnp.ndarray
  xtx: jnp.ndarray
  yty: jnp.ndarray
  x_rx: jnp.ndarray
  y_ry: jnp.ndarray
  rx: jnp.ndarray
  ry: jnp.ndarray
  rxrx: jnp.ndarray
  ryry: jnp.ndarray
  xty: jnp.ndarray
  x_ry: jnp.ndarray
  y_rx: jnp.ndarray
  rxry: jnp.ndarray


def _row_wise(spec) -> Preprocess:
  p = as_preprocess(spec)
  if p.method not in ROW_WISE:
    raise ValueError(f"streaming CKA supports preprocess in {ROW_WISE}; {p.method!r} needs statistics of all "
                     "rows: compute them in a first pass and transform the batches yourself, or use cka_matrix.")
  return p


def _batch(xs, ys, dtype):
  dtype = checks.compute_dtype(dtype)
  xs, ys = checks.features(xs, "xs", 3, dtype), checks.features(ys, "ys", 3, dtype)
  checks.same_samples(xs, ys, min_n=1)
  return xs, ys


@functools.partial(jax.jit, static_argnames=("prep",))
def _init(xs, ys, prep: Preprocess) -> StreamState:
  xs, ys = apply_preprocess(xs, prep), apply_preprocess(ys, prep)
  (la, _, da), (lb, _, db) = xs.shape, ys.shape
  z = lambda *shape: jnp.zeros(shape, xs.dtype)
  return StreamState(
      shift_x=xs.mean(1), shift_y=ys.mean(1), count=z(), sum_x=z(la, da), sum_y=z(lb, db),
      xtx=z(la, da, da), yty=z(lb, db, db), x_rx=z(la, da), y_ry=z(lb, db), rx=z(la), ry=z(lb),
      rxrx=z(la), ryry=z(lb), xty=z(la, lb, da, db), x_ry=z(la, lb, da), y_rx=z(la, lb, db), rxry=z(la, lb))


def stream_init(xs, ys, *, preprocess: str | Preprocess = "none", dtype=None) -> StreamState:
  """xs: [La, m, da], ys: [Lb, m, db], a first batch -> empty StreamState shifted by this batch's means.

  The batch is not added; pass it to stream_update as well, with the same `preprocess`.
  """
  xs, ys = _batch(xs, ys, dtype)
  return _init(xs, ys, _row_wise(preprocess))


@functools.partial(jax.jit, static_argnames=("prep",))
def _update(s: StreamState, xs, ys, prep: Preprocess) -> StreamState:
  x = apply_preprocess(xs, prep) - s.shift_x[:, None]
  y = apply_preprocess(ys, prep) - s.shift_y[:, None]
  rx, ry = jnp.sum(x * x, -1), jnp.sum(y * y, -1)  # [La, m], [Lb, m]
  ein = functools.partial(jnp.einsum, precision=HIGHEST)
  return StreamState(
      shift_x=s.shift_x, shift_y=s.shift_y, count=s.count + x.shape[1],
      sum_x=s.sum_x + x.sum(1), sum_y=s.sum_y + y.sum(1),
      xtx=s.xtx + ein("amd,ame->ade", x, x), yty=s.yty + ein("bmd,bme->bde", y, y),
      x_rx=s.x_rx + ein("amd,am->ad", x, rx), y_ry=s.y_ry + ein("bmd,bm->bd", y, ry),
      rx=s.rx + rx.sum(1), ry=s.ry + ry.sum(1), rxrx=s.rxrx + jnp.sum(rx * rx, 1),
      ryry=s.ryry + jnp.sum(ry * ry, 1),
      xty=s.xty + ein("amd,bme->abde", x, y), x_ry=s.x_ry + ein("amd,bm->abd", x, ry),
      y_rx=s.y_rx + ein("bme,am->abe", y, rx), rxry=s.rxry + ein("am,bm->ab", rx, ry))


def stream_update(state: StreamState, xs, ys, *, preprocess: str | Preprocess = "none") -> StreamState:
  """Adds a batch xs: [La, m, da], ys: [Lb, m, db] (any m >= 1) to the running sums."""
  xs, ys = _batch(xs, ys, state.count.dtype)
  for name, batch, shift in (("xs", xs, state.shift_x), ("ys", ys, state.shift_y)):
    if (batch.shape[0], batch.shape[2]) != shift.shape:
      raise ValueError(f"{name} batch has shape {batch.shape}; the stream expects [{shift.shape[0]}, m, "
                       f"{shift.shape[1]}] as in stream_init.")
  return _update(state, xs, ys, _row_wise(preprocess))


def _centered_diag_dot(n, mu_x, mu_y, rxry, x_ry, y_rx, xty, rx, ry):
  """sum_i |x_i - mu_x|^2 |y_i - mu_y|^2 from sums of the uncentered rows (x_i . mu_x expanded)."""
  sq_x, sq_y = jnp.sum(mu_x * mu_x, -1), jnp.sum(mu_y * mu_y, -1)
  return (rxry - 2.0 * jnp.sum(mu_y * y_rx, -1) - 2.0 * jnp.sum(mu_x * x_ry, -1)
          + 4.0 * jnp.einsum("...d,...de,...e->...", mu_x, xty, mu_y, precision=HIGHEST)
          + sq_y * rx + sq_x * ry - 3.0 * n * sq_x * sq_y)


@functools.partial(jax.jit, static_argnames=("debiased",))
def _stream_hsic(s: StreamState, debiased: bool) -> LinearHsic:
  n = s.count
  mu_x, mu_y = s.sum_x / n, s.sum_y / n
  outer = lambda a, b: jnp.einsum("...d,...e->...de", a, b)
  frob2 = lambda c: jnp.sum(c * c, (-2, -1))
  mxb, myb = mu_x[:, None], mu_y[None, :]  # broadcast over [La, Lb] pairs
  trace_x, trace_y = s.rx - n * jnp.sum(mu_x * mu_x, -1), s.ry - n * jnp.sum(mu_y * mu_y, -1)
  hsic = functools.partial(hsic_from_traces, n=n, debiased=debiased)
  return LinearHsic(
      xy=hsic(frob2(s.xty - n * outer(mxb, myb)),
              _centered_diag_dot(n, mxb, myb, s.rxry, s.x_ry, s.y_rx, s.xty, s.rx[:, None], s.ry[None, :]),
              trace_x[:, None], trace_y[None, :]),
      xx=hsic(frob2(s.xtx - n * outer(mu_x, mu_x)),
              _centered_diag_dot(n, mu_x, mu_x, s.rxrx, s.x_rx, s.x_rx, s.xtx, s.rx, s.rx), trace_x, trace_x),
      yy=hsic(frob2(s.yty - n * outer(mu_y, mu_y)),
              _centered_diag_dot(n, mu_y, mu_y, s.ryry, s.y_ry, s.y_ry, s.yty, s.ry, s.ry), trace_y, trace_y))


def stream_hsic(state: StreamState, *, debiased: bool = False) -> LinearHsic:
  """StreamState -> LinearHsic of all rows seen, centered by their overall mean (as linear_hsic of cka.py
  computes from all rows at once; this path keeps its float32 error of order d/n x rounding, see cka.py)."""
  if state.count < (4 if debiased else 2):
    raise ValueError(f"the stream holds {int(state.count)} rows; CKA needs at least {4 if debiased else 2}.")
  return _stream_hsic(state, bool(debiased))


def stream_cka(state: StreamState, *, debiased: bool = False) -> jnp.ndarray:
  """-> [La, Lb] linear CKA of all rows seen, identical (up to rounding) to cka_matrix on them at once."""
  return cka_from_hsic(stream_hsic(state, debiased=debiased))


def streaming_cka_matrix(batches: Iterable[tuple], *, debiased: bool = False,
                         preprocess: str | Preprocess = "none", dtype=None) -> jnp.ndarray:
  """batches: iterable of (xs [La, m, da], ys [Lb, m, db]) -> [La, Lb] full-data linear CKA, any batch sizes."""
  state = None
  for xs, ys in batches:
    if state is None:
      state = stream_init(xs, ys, preprocess=preprocess, dtype=dtype)
    state = stream_update(state, xs, ys, preprocess=preprocess)
  if state is None:
    raise ValueError("streaming_cka_matrix got no batches.")
  out = stream_cka(state, debiased=debiased)
  chex.assert_shape(out, state.xty.shape[:2])
  return out
