"""`extract_activations`: pooled activations of every layer, jitted per shape bucket, sharded, stored, resumable.

Per batch, one compiled function runs the model (no logits) and pools on device, so only
[layers, batch, rows, hidden] leaves the device; the next batch is dispatched before the previous one is copied
to host, and texts are tokenized on a background thread.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xsim import layer_select, sharding as shard_lib
from xsim.activations.rows import (INDEX_DTYPE, MIN_SEQ, POOLINGS, TokenizedText, pad_id, padded_length, sample_rows,
                                  tokenize)
from xsim.activations.store import Activations, ActivationStore, shard_stats
from xsim.data.text import text_hash
from xsim.models.model import Model

SITES = ("residual", "attn", "mlp", "final_norm")
STORE_DTYPES = ("float32", "bfloat16", "float16")
OVERFLOWS = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """What a store holds of each text: its rows (see xsim.activations.rows) at which layers and site, in which dtype.

  layers: a layer spec of xsim.layer_select ("all", "depths:K" or hidden-state indices, 0 = embeddings). site:
  "residual", "attn" / "mlp" (block outputs, layers 1..L) or "final_norm" (the one output, whatever layers says).
  A text over max_tokens is an error or skipped (on_overflow); truncate_tokens keeps each text's first N tokens
  (the published protocol's per-tokenizer cut). store_dtype: the dtype rows are stored in (the statistics describe
  the stored values).
  """
  pooling: str = "last"
  layers: Any = "all"  # parsed: "1,4,8" or "[1, 4, 8]" from a command line becomes [1, 4, 8]
  site: str = "residual"
  keep_bos: bool = False
  max_tokens: int = 1024
  on_overflow: str = "error"
  truncate_tokens: Optional[int] = None
  store_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "layers", layer_select.parse(self.layers))

  def problems(self) -> list[str]:
    """Each field whose value cannot be extracted, named with its value and the choices (empty if none)."""
    out = []
    for name, value, choices in (("pooling", self.pooling, POOLINGS), ("site", self.site, SITES),
                                 ("on_overflow", self.on_overflow, OVERFLOWS),
                                 ("store_dtype", self.store_dtype, STORE_DTYPES)):
      if value not in choices:
        out.append(f"{name} {value!r} must be one of {choices}")
    if self.max_tokens < 2:
      out.append(f"max_tokens={self.max_tokens} must be >= 2")
    if self.truncate_tokens is not None and self.truncate_tokens < 1:
      out.append(f"truncate_tokens={self.truncate_tokens} must be >= 1 (or None for no cut)")
    error = layer_select.spec_error(self.layers)
    if error:
      out.append(f"layers: {error}")
    return out


def model_fingerprint(model: Model) -> str:
  """A cheap content hash of a model: its config and a sample of every parameter leaf."""
  digest = hashlib.sha256(repr(model.config).encode())
  for leaf in jax.tree_util.tree_leaves(model.params):
    sample = np.asarray(jax.device_get(leaf.reshape(-1)[:256])).astype(np.float32)
    digest.update(str(leaf.shape).encode())
    digest.update(sample.tobytes())
  return digest.hexdigest()[:16]


# (module, layers, site, mesh) -> jitted pooled forward. A Decoder compares and hashes by its config, dtype and
# precision, so every extraction with one model (texts, random copies, probe tasks, prefixes) reuses the same
# jit and hence its compilations per length bucket. Bounded: a sweep moves on from model to model.
_FORWARDS: collections.OrderedDict = collections.OrderedDict()
_MAX_FORWARDS = 8


def _pooled_forward(module, layers: tuple[int, ...], site: str, mesh: Optional[Mesh], param_shardings):
  """jit(params, ids [B,S], mask [B,S], weights [B,R,S]) -> pooled [len(layers), B, R, D] float32, cached.

  weights[b, r] is 1/k on the k positions row r pools and 0 elsewhere (see _host_batch). param_shardings is
  only read when the function is built: a cached entry has the same module and mesh, hence the same shardings.
  """
  key = (module, layers, site, mesh)
  if key in _FORWARDS:
    _FORWARDS.move_to_end(key)
    return _FORWARDS[key]

  def fn(params, ids, mask, weights):
    out = module.apply(params, ids, mask, compute_logits=False, return_sites=site in ("attn", "mlp"))
    if site == "residual":
      acts = out.hidden_states[jnp.asarray(layers)]
    elif site == "final_norm":
      acts = out.final_hidden[None]
    else:  # block outputs: array layer i is block i (1-based like hidden states)
      acts = (out.attn_out if site == "attn" else out.mlp_out)[jnp.asarray(layers) - 1]
    # Sum in the model dtype with float32 accumulation (no float32 copy of [L, B, S, D] for bfloat16 models):
    # 0/1 is exact in every dtype, and the 1/k scale is applied in float32 after the sum.
    chosen = (weights > 0).astype(acts.dtype)
    sums = jnp.einsum("lbsd,brs->lbrd", acts, chosen, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)
    return sums * weights.max(axis=-1)[None, :, :, None]

  if mesh is None:
    jitted = jax.jit(fn)
  else:
    data = lambda ndim, axis=0: shard_lib.batch_sharding(mesh, ndim, axis)
    batch_shardings = (data(2), data(2), data(3))
    sharded = jax.jit(fn, in_shardings=(param_shardings, *batch_shardings), out_shardings=data(4, 1))
    # The host batch goes onto the mesh first: under jax.distributed, jit refuses NumPy inputs with a sharding.
    jitted = lambda params, *batch: sharded(params, *jax.device_put(batch, batch_shardings))
  _FORWARDS[key] = jitted
  if len(_FORWARDS) > _MAX_FORWARDS:
    _FORWARDS.popitem(last=False)
  return jitted


def _resolve_layers(model: Model, rows: RowSpec) -> list[int]:
  """rows.layers (a layer spec) -> hidden-state indices of `model` for rows.site.

  "attn" / "mlp" are block outputs, 1..L ("all" drops the embeddings); "final_norm" is the one output [L].
  """
  num, layers, site = model.config.num_layers, rows.layers, rows.site
  if site == "final_norm":
    return [num]
  try:
    resolved = layer_select.resolve(layers, num)
  except ValueError as e:
    raise ValueError(f"layers={layers!r} for site {site!r} of {model.name or 'the model'}: {e}") from None
  if site in ("attn", "mlp"):
    if isinstance(layers, str) and layers == "all":
      return resolved[1:]
    if 0 in resolved:
      raise ValueError(f"layers={layers!r}: site {site!r} has block outputs 1..{num} only (0 is the embeddings, "
                       "a residual-stream index); drop 0 or use site='residual'.")
  return resolved


def _prepare(model: Model, texts: Sequence[str], start: int, rows: RowSpec):
  """Tokenizes texts[start:...] into (text index, ids, its rows); logs skipped texts and texts past the context."""
  prepared, too_long = [], []
  context, cut = model.config.max_position_embeddings, rows.truncate_tokens
  for offset, text in enumerate(texts):
    i = start + offset
    tok = tokenize(model.tokenizer, text)
    if cut is not None:  # the published protocol's per-tokenizer cut
      tok = TokenizedText(tok.ids[:cut], tok.spans[:cut], tok.special[:cut])
      text = text[:int(tok.spans[:, 1].max(initial=0))]
    if len(tok.ids) > rows.max_tokens:
      message = (f"Text {i} has {len(tok.ids)} tokens for {model.name}, over max_tokens={rows.max_tokens}; cut "
                 "texts by characters or words before extraction (xsim.data.cut_text) or raise max_tokens.")
      if rows.on_overflow == "error":
        raise ValueError(message)
      logging.warning("Skipping: %s", message)
      continue
    text_rows = sample_rows(tok, text, rows.pooling, rows.keep_bos)
    if text_rows:
      prepared.append((i, tok.ids, text_rows))
      if context is not None and len(tok.ids) > context:
        too_long.append(f"text {i}: {len(tok.ids)} tokens")
  if too_long:  # one warning per call (a shard), naming the first few
    logging.warning("%s: %d texts are longer than its max_position_embeddings=%d (%s%s); positions past it were "
                    "never trained. Cut them with truncate_tokens=%d or xsim.data.cut_text.", model.name,
                    len(too_long), context, ", ".join(too_long[:5]), ", ..." if len(too_long) > 5 else "", context)
  return prepared


def _host_batch(items, batch_size: int, pad: int, left_pad: bool, min_seq: int):
  """ids/mask [B, S] and pooling weights [B, R, S] (S, R bucketed) plus the row index, for <= batch_size texts."""
  seq = padded_length(max(len(ids) for _, ids, _ in items), min_seq)
  num_rows = padded_length(max(len(rows) for _, _, rows in items), 1)
  ids = np.full((batch_size, seq), pad, np.int32)
  mask = np.zeros((batch_size, seq), np.int32)
  weights = np.zeros((batch_size, num_rows, seq), np.float32)
  index = []
  for b, (text_i, tokens, rows) in enumerate(items):
    shift = seq - len(tokens) if left_pad else 0  # gather at explicit indices, whichever side pads
    ids[b, shift:shift + len(tokens)] = tokens
    mask[b, shift:shift + len(tokens)] = 1
    for r, (positions, (c0, c1), word, token) in enumerate(rows):
      weights[b, r, np.asarray(positions) + shift] = 1.0 / len(positions)
      index.append((b, r, (text_i, word, token, c0, c1)))
  return ids, mask, weights, index, int(sum(len(t) for _, t, _ in items))


def extract_activations(model: Model, texts: Sequence[str], rows: RowSpec = RowSpec(), *, batch_size: int = 32,
                        mesh: Optional[Mesh] = None, store_dir: Optional[str] = None, shard_size: int = 1024,
                        distribute: bool = True, progress: bool = True) -> Activations:
  """Activations of `model` on `texts`: the rows, layers and site that `rows` names (see RowSpec).

  Returns Activations with array [len(layers), num_rows, hidden] and index [num_rows] (which text, word, token and
  character span each row is). mesh: a (data, model) Mesh from `xsim.activations.make_mesh`; batch_size must be a
  multiple of its data axis. With jax.distributed initialised (and distribute), each process extracts every
  process_count-th shard of shard_size texts into the shared store_dir and all return the same store. store_dir:
  where shards are written (a temporary directory if None); a rerun resumes.
  """
  problems = rows.problems()
  if problems:
    raise ValueError("; ".join(problems) + ".")
  if model.tokenizer is None:
    raise ValueError(f"{model.name} has no tokenizer; load it with load_tokenizer=True.")
  if not len(texts) or not all(isinstance(t, str) and t.strip() for t in texts):
    raise ValueError("texts must be a non-empty sequence of non-empty strings.")
  if mesh is not None and batch_size % mesh.shape[shard_lib.DATA]:
    raise ValueError(f"batch_size={batch_size} is not a multiple of the mesh's data axis "
                     f"({mesh.shape[shard_lib.DATA]}).")
  layer_list = _resolve_layers(model, rows)
  store_dir = store_dir or tempfile.mkdtemp(prefix="xsim-acts-")
  num_shards = -(-len(texts) // shard_size)
  store = ActivationStore(store_dir, {
      "model": model.name, "model_hash": model_fingerprint(model), "dtype": jnp.dtype(model.dtype).name,
      "pooling": rows.pooling, "keep_bos": rows.keep_bos, "site": rows.site, "layers": layer_list,
      "text_hash": text_hash(texts), "num_texts": len(texts), "shard_size": shard_size, "max_tokens": rows.max_tokens,
      "on_overflow": rows.on_overflow, "truncate_tokens": rows.truncate_tokens, "store_dtype": rows.store_dtype,
      "hidden_size": model.config.hidden_size})
  if store.complete:
    logging.info("Activation store %s is complete; nothing to extract.", store_dir)
    return store.load()

  process, num_processes = (jax.process_index(), jax.process_count()) if distribute else (0, 1)
  todo = [k for k in range(num_shards) if k % num_processes == process and not store.has_shard(k)]
  logging.info("%s: %d of %d shards to extract into %s (process %d/%d).", model.name, len(todo), num_shards,
               store_dir, process, num_processes)
  params, param_shardings = model.params, None
  if mesh is not None:
    param_shardings = shard_lib.param_shardings(params, mesh)
    params = jax.device_put(params, param_shardings)
  fn = _pooled_forward(model.module, tuple(layer_list), rows.site, mesh, param_shardings)
  pad, left_pad = pad_id(model.tokenizer), getattr(model.tokenizer, "padding_side", "right") == "left"
  empty = np.zeros((len(layer_list), 0, model.config.hidden_size), rows.store_dtype)  # a shard that gives no row

  prepare = lambda k: _prepare(model, texts[k * shard_size:(k + 1) * shard_size], k * shard_size, rows)
  bar = _progress(sum(min(shard_size, len(texts) - k * shard_size) for k in todo), model.name) if progress else None
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # tokenizes shard k+1 while shard k runs
    upcoming = pool.submit(prepare, todo[0]) if todo else None
    for n, k in enumerate(todo):
      items = upcoming.result()
      upcoming = pool.submit(prepare, todo[n + 1]) if n + 1 < len(todo) else None
      acts, index = _run_shard(fn, params, items, batch_size, pad, left_pad, bar, empty)
      _check_finite(acts, index, layer_list, model.name)
      store.write_shard(k, acts, index, shard_stats(acts))
  if bar is not None:
    bar.close()
  _wait_for_shards(store, num_shards)
  if process == 0 and not store.complete:
    store.finish(num_shards)
  return _wait_complete(store)


def _run_shard(fn, params, items, batch_size, pad, left_pad, bar, empty):
  """Runs one shard's texts (sorted by length into batches) -> acts [layers, rows, D] in text order and the store's
  dtype (`empty`, [layers, 0, D], when no text gave a row), index."""
  order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
  batches = [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
  pieces, pending = [], None
  start = time.perf_counter()
  for batch in batches:
    ids, mask, weights, index, tokens = _host_batch(batch, batch_size, pad, left_pad, MIN_SEQ)
    result = fn(params, ids, mask, weights)  # dispatched asynchronously
    if pending is not None:
      pieces.append(_collect(*pending))
    pending = (result, index)
    if bar is not None:
      bar.update(len(batch))
      bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}", refresh=False)
      start = time.perf_counter()
  if pending is not None:
    pieces.append(_collect(*pending))
  if not pieces:
    return empty, np.zeros(0, INDEX_DTYPE)
  acts = np.concatenate([p[0] for p in pieces], axis=1)
  index = np.concatenate([p[1] for p in pieces])
  order = np.lexsort((index["token"], index["word"], index["text"]))
  return acts[:, order].astype(empty.dtype), index[order]


def _collect(result, index):
  pooled = np.asarray(result)  # [layers, B, R, D]: the device-to-host copy of this batch
  b = np.asarray([i[0] for i in index])
  r = np.asarray([i[1] for i in index])
  return pooled[:, b, r], np.asarray([i[2] for i in index], INDEX_DTYPE)


def _check_finite(acts: np.ndarray, index: np.ndarray, layers: list[int], name: str) -> None:
  bad = ~np.isfinite(acts).all(-1)
  if bad.any():
    layer, row = map(int, np.argwhere(bad)[0])
    raise FloatingPointError(f"{name} produced NaN/Inf activations at layer {layers[layer]} for text "
                             f"{int(index['text'][row])} (row {row}); try dtype='float32' or 'bfloat16' "
                             "(float16 overflows in some models).")


def _wait_for_shards(store: ActivationStore, num_shards: int, timeout_s: float = 24 * 3600) -> None:
  """With several processes, shards appear from all of them; wait until every one is on disk."""
  deadline = time.time() + timeout_s
  while not all(store.has_shard(k) for k in range(num_shards)):
    if time.time() > deadline:
      raise TimeoutError(f"Shards of {store.path} did not all appear; did another process fail?")
    time.sleep(0.5)


def _wait_complete(store: ActivationStore, timeout_s: float = 3600) -> Activations:
  deadline = time.time() + timeout_s
  while not store.complete:
    store.reload()
    if not store.complete:
      if time.time() > deadline:
        raise TimeoutError(f"{store.path} was not completed by process 0.")
      time.sleep(0.5)
  return store.load()


def _progress(total: int, name: str):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=f"extract {os.path.basename(str(name))}", unit="text")
