"""extract_activations: pooled rows equal the unpadded forward, align across tokenizers, shard, resume."""
import dataclasses
import json
import logging
import os

import numpy as np
import pytest

import xsim
from xsim import activations as xa
from xsim.activations.rows import sample_rows, tokenize
from tests.activations.tiny import TEXTS, make_model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  left = xsim.load_model(str(make_model_dir(tmp_path_factory.mktemp("sp"), "sentencepiece", "gemma2")))
  right = xsim.load_model(str(make_model_dir(tmp_path_factory.mktemp("bl"), "bytelevel", "llama")))
  assert left.tokenizer.padding_side == "left" and right.tokenizer.padding_side == "right"
  return {"left": left, "right": right}


def _reference_rows(model, texts, pooling, layers):
  """Each text run alone, unpadded; rows pooled in NumPy float64 from the same token positions."""
  rows = []
  for text in texts:
    tok = tokenize(model.tokenizer, text)
    hidden = np.asarray(model.forward(tok.ids[None]).hidden_states, np.float64)[:, 0]  # [L+1, T, D]
    for positions, _, _, _ in sample_rows(tok, text, pooling):
      rows.append(hidden[layers][:, positions].mean(1))
  return np.stack(rows, 1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "last_word", "mean", "words"])
def test_pooled_rows_equal_unbatched_forward(models, side, pooling, tmp_path):
  model = models[side]
  layers = list(range(model.config.num_layers + 1))
  acts = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling=pooling), batch_size=4, store_dir=str(tmp_path),
                                progress=False)
  assert acts.array.shape == (len(layers), acts.num_rows, model.config.hidden_size)
  np.testing.assert_allclose(acts.array, _reference_rows(model, TEXTS, pooling, layers), atol=2e-5, rtol=1e-4)
  assert np.all(np.diff(acts.index["text"]) >= 0)


@pytest.mark.parametrize("pooling", ["last_word", "words"])
def test_tokenizers_agree_on_character_spans(models, pooling, tmp_path):
  a = xa.extract_activations(models["left"], TEXTS, xa.RowSpec(pooling=pooling), store_dir=str(tmp_path / "a"),
                             progress=False)
  b = xa.extract_activations(models["right"], TEXTS, xa.RowSpec(pooling=pooling), store_dir=str(tmp_path / "b"),
                             progress=False)
  ia, ib = xa.paired_rows(a, b)
  assert len(ia) == a.num_rows == b.num_rows  # every row pairs
  for field in ("text", "word", "char_start", "char_end"):
    np.testing.assert_array_equal(a.index[field][ia], b.index[field][ib])
  if pooling == "last_word":  # the last word with punctuation trimmed
    assert [TEXTS[t][s:e] for t, s, e in a.index[["text", "char_start", "char_end"]]][0] == "Paris"


def test_bos_and_first_word_are_excluded_unless_kept(models):
  model = models["left"]
  tok = tokenize(model.tokenizer, TEXTS[0])
  (positions, span, _, _), = sample_rows(tok, TEXTS[0], "mean")
  assert 0 not in positions and span == (3, len(TEXTS[0]))  # "The" is the first word
  (kept, span, _, _), = sample_rows(tok, TEXTS[0], "mean", keep_bos=True)
  assert kept[0] == 0 and span == (0, len(TEXTS[0]))


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_sharded_equals_single_device(models, shape, tmp_path):
  model = models["right"]
  single = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="words"), batch_size=8,
                                  store_dir=str(tmp_path / "one"), progress=False)
  mesh = xa.make_mesh(*shape)
  sharded = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="words"), batch_size=8, mesh=mesh,
                                   store_dir=str(tmp_path / "mesh"), progress=False)
  np.testing.assert_allclose(sharded.array, single.array, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(sharded.index, single.index)


def test_interrupted_run_resumes_to_the_same_store(models, tmp_path, monkeypatch):
  model = models["right"]
  full = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="last_word"), shard_size=3,
                                store_dir=str(tmp_path / "full"), progress=False)
  original = xa.ActivationStore.write_shard
  calls = []

  def crash_after_two(self, k, *args):
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated crash")
    calls.append(k)
    original(self, k, *args)

  monkeypatch.setattr(xa.ActivationStore, "write_shard", crash_after_two)
  with pytest.raises(KeyboardInterrupt):
    xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="last_word"), shard_size=3, store_dir=str(tmp_path / "r"),
                           progress=False)
  monkeypatch.setattr(xa.ActivationStore, "write_shard", original)
  written = []
  monkeypatch.setattr(xa.ActivationStore, "write_shard", lambda self, k, *a: (written.append(k), original(self, k, *a)))
  resumed = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="last_word"), shard_size=3,
                                   store_dir=str(tmp_path / "r"), progress=False)
  assert written == [2]  # only the missing shard ran
  np.testing.assert_array_equal(np.asarray(resumed.array), np.asarray(full.array))
  np.testing.assert_array_equal(resumed.index, full.index)


def test_mismatched_rerun_is_refused(models, tmp_path):
  model = models["right"]
  xa.extract_activations(model, TEXTS, store_dir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="text_hash"):
    xa.extract_activations(model, TEXTS[::-1], store_dir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="model"):
    xa.extract_activations(models["left"], TEXTS, store_dir=str(tmp_path), progress=False)


def test_stats_record_outlier_dimensions(models, tmp_path):
  acts = xa.extract_activations(models["right"], TEXTS, xa.RowSpec(pooling="words"), store_dir=str(tmp_path),
                                progress=False)
  stats = json.load(open(os.path.join(tmp_path, "stats.json")))
  x = np.asarray(acts.array, np.float64)
  for layer, s in enumerate(stats["layers"]):
    assert s["max_abs"] == pytest.approx(np.abs(x[layer]).max(), rel=1e-6)
    var = x[layer].var(0)
    assert s["top_variance_dims"][0] == int(np.argmax(var))
    assert s["top_variance_share"][0] == pytest.approx(var.max() / var.sum(), rel=1e-4)


def test_overflow_is_an_error_or_a_logged_skip(models, tmp_path):
  model = models["right"]
  long_text = " ".join(["again"] * 40)
  texts = TEXTS[:3] + [long_text]
  with pytest.raises(ValueError, match="max_tokens=60"):
    xa.extract_activations(model, texts, xa.RowSpec(max_tokens=60), store_dir=str(tmp_path / "e"), progress=False)
  acts = xa.extract_activations(model, texts + [long_text], xa.RowSpec(max_tokens=60, on_overflow="skip"), shard_size=2,
                                store_dir=str(tmp_path / "s"), progress=False)  # the last shard gives no row
  assert sorted(set(acts.index["text"])) == [0, 1, 2]
  assert acts.stats["num_rows"] == acts.num_rows == np.asarray(acts.array).shape[1]


def test_texts_past_the_context_are_named_in_one_warning(models, tmp_path, caplog):
  model = models["right"]
  short = dataclasses.replace(model, config=dataclasses.replace(model.config, max_position_embeddings=8))
  lengths = [len(tokenize(model.tokenizer, t).ids) for t in TEXTS]
  over = [i for i, n in enumerate(lengths) if n > 8]
  assert 0 < len(over) < len(TEXTS)
  with caplog.at_level(logging.WARNING):
    acts = xa.extract_activations(short, TEXTS, store_dir=str(tmp_path / "short"), progress=False)
  warnings = [r.getMessage() for r in caplog.records if "max_position_embeddings=8" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"{model.name}: {len(over)} texts")
  assert all(f"text {i}: {lengths[i]} tokens" in warnings[0] for i in over[:5])
  assert sorted(set(acts.index["text"])) == list(range(len(TEXTS)))  # still extracted
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # within the real context (512): no warning
    xa.extract_activations(model, TEXTS, store_dir=str(tmp_path / "full"), progress=False)
  assert not [r for r in caplog.records if "max_position_embeddings" in r.getMessage()]


def test_non_finite_activations_name_the_layer_and_text(models, tmp_path):
  import jax
  model = models["right"]
  params = jax.tree_util.tree_map(lambda x: x, model.params)
  params["params"]["layers"]["block"]["mlp"]["down"]["kernel"] = (
      params["params"]["layers"]["block"]["mlp"]["down"]["kernel"].at[1].set(np.inf))
  broken = xsim.Model(config=model.config, params=params, tokenizer=model.tokenizer, dtype=model.dtype, name="broken")
  with pytest.raises(FloatingPointError, match="broken produced NaN/Inf activations at layer 2 for text 0"):
    xa.extract_activations(broken, TEXTS, store_dir=str(tmp_path), progress=False)


def test_bad_arguments(models):
  model = models["right"]
  with pytest.raises(ValueError, match="pooling"):
    xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="max"))
  with pytest.raises(ValueError, match=r"layers=\[0, 99\].*beyond"):
    xa.extract_activations(model, TEXTS, xa.RowSpec(layers=[0, 99]))
  with pytest.raises(ValueError, match="depths:K"):
    xa.extract_activations(model, TEXTS, xa.RowSpec(layers="every"))
  with pytest.raises(ValueError, match="site 'mlp' has block outputs 1"):
    xa.extract_activations(model, TEXTS, xa.RowSpec(layers=[0, 1], site="mlp"))
  with pytest.raises(ValueError, match="data axis"):
    xa.extract_activations(model, TEXTS, batch_size=3, mesh=xa.make_mesh(8, 1))


def test_complete_store_reopens_for_the_same_inputs(models, tmp_path):
  model = models["right"]
  first = xa.extract_activations(model, TEXTS, store_dir=str(tmp_path), progress=False)
  again = xa.extract_activations(model, TEXTS, store_dir=str(tmp_path), progress=False)
  opened = xa.load_store(str(tmp_path))
  for acts in (again, opened):
    np.testing.assert_array_equal(np.asarray(acts.array), np.asarray(first.array))
    assert acts.manifest == first.manifest


def test_token_truncation_reproduces_the_published_cut(models, tmp_path):
  """truncate_tokens=N reads the last of each text's first N tokens: a different character per tokenizer."""
  spans = {}
  for side, model in models.items():
    acts = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="last", keep_bos=True, truncate_tokens=6),
                                  store_dir=str(tmp_path / side), progress=False)
    tok = tokenize(model.tokenizer, TEXTS[1])
    assert tuple(acts.index[["char_start", "char_end"]][1]) == tuple(tok.spans[5])
    np.testing.assert_allclose(acts.array[:, 1], np.asarray(model.forward(tok.ids[None, :6]).hidden_states)[:, 0, 5],
                               atol=2e-5, rtol=1e-4)
    spans[side] = acts.index["char_end"]
  assert np.any(spans["left"] != spans["right"])


def test_undistributed_extraction_does_every_shard_itself(models, tmp_path, monkeypatch):
  """In a multi-process run, a call made by one process alone (distribute=False) must not wait for the others."""
  import jax
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  acts = xa.extract_activations(models["right"], TEXTS, shard_size=3, distribute=False, store_dir=str(tmp_path),
                                progress=False)
  assert sorted(set(acts.index["text"])) == list(range(len(TEXTS)))


def test_a_damaged_store_is_named_deleted_and_extracted_again(models, tmp_path, caplog):
  """Through the runner's open_or_extract: a flipped, truncated or deleted chunk is a named error, never a number,
  and the store is extracted again to exactly the original values."""
  from experiments.extraction import ExtractionSettings, open_or_extract
  from tests.activations.test_store import _damage
  model = models["right"]
  settings = ExtractionSettings(pooling="words", layers="all", batch_size=4, max_tokens=1024, keep_bos=False,
                                site="residual")
  path = str(tmp_path / "store")
  loads = []

  def get_model():
    loads.append(1)
    return model

  extract = lambda: open_or_extract(path, get_model, TEXTS, settings, None, progress=False)
  original = extract()
  values = np.asarray(original.array)
  np.testing.assert_array_equal(extract().index, original.index)
  assert len(loads) == 1  # a complete store is reopened without loading the model
  chunk = os.path.join("acts", "00000", "c", "2", "0", "0")
  for n, how in enumerate(["flip", "truncate", "delete"]):
    _damage(os.path.join(path, chunk), how)
    with pytest.raises(xa.CorruptStore, match=f"{chunk}.*{model.name}.*delete {path} and rerun"):
      np.asarray(xa.load_store(path).array)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      again = extract()
    assert len(loads) == n + 2  # the model was loaded to extract again
    assert any(chunk in r.getMessage() and "extracting again" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(again.array), values)
    np.testing.assert_array_equal(again.index, original.index)
    assert again.stats == original.stats


def test_half_precision_store(models, tmp_path):
  model = models["right"]
  full = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="words"), store_dir=str(tmp_path / "f32"),
                                progress=False)
  half = xa.extract_activations(model, TEXTS, xa.RowSpec(pooling="words", store_dtype="bfloat16"),
                                store_dir=str(tmp_path / "bf16"), progress=False)
  assert half.array.dtype.name == "bfloat16"
  np.testing.assert_array_equal(np.asarray(half.array, np.float32),
                                np.asarray(full.array).astype(half.array.dtype).astype(np.float32))
  assert half.stats["layers"][-1]["max_abs"] == pytest.approx(
      float(np.abs(np.asarray(half.array, np.float64)[-1]).max()), rel=1e-12)
  with pytest.raises(ValueError, match="store_dtype"):
    xa.extract_activations(model, TEXTS, xa.RowSpec(store_dtype="int8"))


def test_layer_specs_resolve_through_layer_select(models, tmp_path):
  """"depths:K" picks the block outputs layer_select names; lists come back sorted; attn/mlp "all" is 1..L."""
  from xsim import layer_select
  model = models["right"]
  num = model.config.num_layers
  everything = xa.extract_activations(model, TEXTS, store_dir=str(tmp_path / "all"), progress=False)
  depths = xa.extract_activations(model, TEXTS, xa.RowSpec(layers="depths:2"), store_dir=str(tmp_path / "d"),
                                  progress=False)
  assert depths.layers == layer_select.resolve("depths:2", num) == [1, num]
  np.testing.assert_array_equal(np.asarray(depths.array), np.asarray(everything.array)[[1, num]])
  listed = xa.extract_activations(model, TEXTS, xa.RowSpec(layers=(num, 0)), store_dir=str(tmp_path / "l"),
                                  progress=False)
  assert listed.layers == [0, num]
  mlp = xa.extract_activations(model, TEXTS, xa.RowSpec(site="mlp"), store_dir=str(tmp_path / "m"), progress=False)
  assert mlp.layers == list(range(1, num + 1))


def test_a_second_call_with_the_same_model_compiles_nothing(models, tmp_path):
  """The pooled forward is cached by (module, layers, site, mesh): a second call and a copy of the model with
  other weights reuse the first call's compilations."""
  import jax
  model = models["right"]
  compiles = []
  listener = lambda event, duration, **_: compiles.append(event)
  rows, options = xa.RowSpec(pooling="words"), dict(batch_size=4, progress=False)
  xa.extract_activations(model, TEXTS, rows, store_dir=str(tmp_path / "first"), **options)
  random = model.with_random_params(1)  # (initialising compiles)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    xa.extract_activations(model, TEXTS, rows, store_dir=str(tmp_path / "second"), **options)
    xa.extract_activations(random, TEXTS, rows, store_dir=str(tmp_path / "random"), **options)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert "/jax/core/compile/backend_compile_duration" not in compiles, compiles


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("bfloat16", 2**-8)])
def test_pooling_accumulates_in_float32(models, dtype, tolerance):
  """The jitted pooling of one padded batch equals the float64 mean of that batch's hidden states (from the
  model's own forward): to float32 rounding for a float32 model, to bfloat16 rounding for a bfloat16 one (it sums
  bfloat16 activations with float32 accumulation, never a float32 copy)."""
  import jax
  import jax.numpy as jnp
  from xsim.activations import extract
  base = models["right"]
  model = xsim.Model(config=base.config, tokenizer=base.tokenizer, dtype=jnp.dtype(dtype).type, name=dtype,
                     params=jax.tree_util.tree_map(lambda x: x.astype(dtype), base.params))
  layers = tuple(range(model.config.num_layers + 1))
  items = extract._prepare(model, TEXTS, 0, xa.RowSpec(pooling="words"))
  ids, mask, weights, index, _ = extract._host_batch(items, len(items), 0, False, 16)
  pooled = extract._pooled_forward(model.module, layers, "residual", None, None)(model.params, ids, mask, weights)
  assert pooled.dtype == jnp.float32
  hidden = np.asarray(model.forward(ids, mask, compute_logits=False).hidden_states, np.float64)
  expected = np.einsum("lbsd,brs->lbrd", hidden, weights.astype(np.float64))
  b, r = np.asarray([i[0] for i in index]), np.asarray([i[1] for i in index])
  np.testing.assert_allclose(np.asarray(pooled)[:, b, r], expected[:, b, r], rtol=0,
                             atol=tolerance * np.abs(hidden).max())
