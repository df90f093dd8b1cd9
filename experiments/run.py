r"""Runs a study from a config: extraction, similarity for all layer pairs, transfer maps, probes, report.

  python -m experiments.run --config experiments/configs/demo.py --workdir runs/demo
  python -m experiments.run --config experiments/configs/demo.py --config.data.num_texts=128 --workdir runs/small
  python -m experiments.run --config experiments/configs/demo.py:qwen --config.models.0.dtype=bfloat16 ...

Every expensive result is cached by content in the workdir (activation stores, per-pair similarity matrices,
per-pair map checkpoints), written atomically, so a rerun after a crash or with an added model does only
what is missing. Under jax.distributed (see launch/), every process extracts its share of texts and process 0
computes the comparisons and writes the tables and report.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import next_token, results
from experiments.validate import validate_config
from xsim.data.text import text_hash

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiments/configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for caches, tables, plots and the report.")


def load_texts(data) -> list[str]:
  """The passages a config's `data` section names, cut by whole words (the same strings for every model)."""
  from xsim import data as xdata
  kind, _, name = data.source.partition(":")
  if kind == "corpus":
    texts = xdata.load_corpus(name, num_passages=None, min_chars=data.min_chars, seed=data.seed)
  elif kind == "jsonl":
    texts = xdata.load_jsonl_texts(name)
  elif kind == "text":
    texts = xdata.load_text_file(name)
  elif kind == "pile10k":
    texts = xdata.load_pile_10k()
  else:
    texts = xdata.load_hf_texts(name)
  texts = [xdata.cut_text(xdata.normalize_whitespace(t), max_words=data.max_words or None) for t in texts]
  texts = [t for t in texts if len(xdata.word_spans(t)) >= 2][: data.num_texts]
  if len(texts) < data.num_texts:
    raise ValueError(f"data.source {data.source} gave {len(texts)} usable texts, fewer than num_texts="
                     f"{data.num_texts}; lower num_texts or use a larger source.")
  return texts


def resolve_layers(spec, num_layers: int):
  """"all" (every hidden state), "depths:K" (K relative depths 0..1 over the block outputs, embeddings excluded,
  as the published study picks them), or an explicit list of hidden-state indices."""
  if isinstance(spec, str) and spec.startswith("depths:"):
    count = int(spec.partition(":")[2])
    return sorted({1 + int(round(d * (num_layers - 1))) for d in np.linspace(0.0, 1.0, count)})
  return spec if isinstance(spec, str) else [int(i) for i in spec]


def _key(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _store_dir(workdir: str, tag: str, *identity) -> str:
  """An activation store's directory, named by what its contents depend on, so a changed input gets a new store
  (a store refuses to mix inputs) and an unchanged one is found again."""
  return os.path.join(workdir, "activations", f"{tag}-{_key(*identity)}")


class Activations:
  """The stores a run compares: each model's, its random-init copies' (one per seed) and its probe tasks'."""

  def __init__(self):
    self.models, self.random, self.tasks = {}, {}, {}

  def get(self, name: str, seed: int):
    """The store of `name` ("MODEL" or "MODEL@random", whose weights depend on the seed)."""
    base, _, random = name.partition("@")
    return self.random[(base, seed)] if random else self.models[name]


def extract_all(cfg, texts, workdir, mesh):
  """Activations of every model (and its random-init copy per seed) on the texts and on each probe task."""
  from xsim import activations as xa
  from xsim import data as xdata
  import xsim
  ex = cfg.extraction
  tasks = {name: xdata.load_task(name, num_examples=cfg.probes.num_examples, seed=cfg.data.seed)
           for name in cfg.probes.tasks}
  acts, families, stats, num_layers, loaded = Activations(), {}, {}, {}, {}
  for spec in map(dict, cfg.models):
    spec.setdefault("dtype", "float32")
    name = spec["name"]
    start = time.time()
    model = xsim.load_model(spec["path"], dtype=spec["dtype"])
    model.name = name
    families[name] = spec.get("family") or model.config.family.rstrip("0123").replace("gpt_neox", "pythia")
    logging.info("Loaded %s (%s, %d layers) in %.1fs.", name, model.config.family, model.config.num_layers,
                 time.time() - start)
    run = lambda m, ts, tag, *identity: xa.extract_activations(
        m, ts, pooling=ex.pooling, layers=resolve_layers(ex.layers, m.config.num_layers), batch_size=ex.batch_size,
        mesh=mesh, site=ex.site, keep_bos=ex.keep_bos, max_tokens=ex.max_tokens, on_overflow="skip",
        truncate_tokens=ex.get("truncate_tokens"),
        store_dir=_store_dir(workdir, tag, spec, ex.to_dict(), text_hash(ts), *identity))
    acts.models[name] = run(model, texts, name)
    stats[name] = acts.models[name].stats
    num_layers[name] = num_layers[name + "@random"] = model.config.num_layers
    if cfg.baselines.random_init:
      families[name + "@random"] = "random"
      for seed in cfg.seeds:
        random_model = model.with_random_params(seed)
        random_model.name = f"{name}@random"
        acts.random[(name, seed)] = run(random_model, texts, f"{name}@random{seed}", seed)
    for task_name, task in tasks.items():
      acts.tasks[(task_name, name)] = run(model, list(task.texts), f"{name}-task-{task_name}")
    if cfg.transfer.next_token.enabled:  # patching runs the target model again
      loaded[name] = model
  return acts, tasks, families, stats, num_layers, loaded


def model_pairs(cfg, families):
  """(a, b, relation) for the configured pairs (every pair of listed models by default), plus (a, random copy of
  b) baselines."""
  names = [m["name"] for m in cfg.models]
  chosen = cfg.get("pairs") or list(itertools.combinations(names, 2))
  pairs = [(a, b, "within" if families[a] == families[b] else "cross") for a, b in chosen]
  if cfg.baselines.random_init:
    pairs += [(a, f"{b}@random", "random") for a, b, _ in list(pairs)]
  return pairs


def _depths(layer_a: int, layer_b: int, a: str, b: str, num_layers: dict) -> dict:
  """Relative depth = hidden-state index / number of blocks (0 = embeddings, 1 = last block)."""
  return dict(depth_a=layer_a / num_layers[a], depth_b=layer_b / num_layers[b])


def similarity_matrix(measure, prep, xs, ys, k):
  from xsim import similarity as sim
  if measure in ("cka", "cka_debiased"):
    return np.asarray(sim.cka_matrix(xs, ys, debiased=measure == "cka_debiased", preprocess=prep))
  return np.asarray([[float(sim.mutual_knn(x, y, k=k, preprocess=prep)) for y in ys] for x in xs])


def paired_arrays(acts_a, acts_b):
  """(xs [La, n, da], ys [Lb, n, db], row indices into acts_a) of the samples both stores hold, in float32."""
  from xsim import activations as xa
  ia, ib = xa.paired_rows(acts_a, acts_b)
  return np.asarray(acts_a.array[:, ia], np.float32), np.asarray(acts_b.array[:, ib], np.float32), ia


def scored_layers(layers, min_layer: int, model: str) -> np.ndarray:
  """Positions in `layers` (hidden-state indices) that grid summaries use: those >= min_layer."""
  where = np.flatnonzero(np.asarray(layers) >= min_layer)
  if not len(where):
    raise ValueError(f"{model} has no layer >= similarity.min_layer={min_layer} among {list(layers)}; lower it.")
  return where


def compare_pair(cfg, seed, a, b, relation, store_a, store_b, xs, ys, num_layers, workdir):
  """Similarity rows and the pair's per-measure summaries for one seed, from a cache keyed by inputs and settings."""
  s = cfg.similarity
  layers_a, layers_b = store_a.layers, store_b.layers
  rows, measures = [], {}
  for measure, prep in itertools.product(s.measures, s.preprocess):
    # Only the settings this entry depends on, so adding a measure or a preprocessing leaves the rest cached. The
    # seed moves only CKA's null and CI: a real pair's mutual kNN is computed once for all seeds.
    settings = [s.knn_k] if measure == "mutual_knn" else [s.permutations, s.ci_resamples, seed]
    key = _key(store_a.manifest, store_b.manifest, measure, prep, settings, s.min_layer)
    path = os.path.join(workdir, "cache", "similarity", f"{a}__{b}__{measure}__{prep}-{key}.json")
    if results.exists(path):
      entry = results.read_json(path)
    else:
      start = time.time()
      matrix = np.asarray(similarity_matrix(measure, prep, xs, ys, s.knn_k), np.float64)  # summaries == table
      entry = {"matrix": matrix.tolist(), **_statistics(cfg, seed, measure, prep, xs, ys, matrix, layers_a, layers_b,
                                                        a, b)}
      results.write_json(path, entry)
      logging.info("%s vs %s (seed %d): %s/%s over %dx%d layer pairs in %.1fs.", a, b, seed, measure, prep,
                   *matrix.shape, time.time() - start)
    matrix = np.asarray(entry.pop("matrix"))
    measures[f"{measure}|{prep}"] = entry
    for i, j in np.ndindex(matrix.shape):
      rows.append(dict(model_a=a, model_b=b, relation=relation, measure=measure, preprocess=prep,
                       layer_a=layers_a[i], layer_b=layers_b[j], value=float(matrix[i, j]), seed=seed,
                       **_depths(layers_a[i], layers_b[j], a, b, num_layers)))
  return rows, measures


def _statistics(cfg, seed, measure, prep, xs, ys, matrix, layers_a, layers_b, a, b):
  """Max, mean and argmax over the scored layer pairs (both >= similarity.min_layer); for CKA also the
  permutation null of that max and its subsampling CI (rows drawn without replacement, so debiased CKA stays
  unbiased; the percentile bootstrap's duplicated rows inflate it)."""
  from xsim import similarity as sim
  s = cfg.similarity
  ia, ib = scored_layers(layers_a, s.min_layer, a), scored_layers(layers_b, s.min_layer, b)
  scored = matrix[np.ix_(ia, ib)]
  i, j = np.unravel_index(np.argmax(scored), scored.shape)
  out = {"max": float(scored.max()), "mean": float(scored.mean()), "argmax": [layers_a[ia[i]], layers_b[ib[j]]]}
  if measure not in ("cka", "cka_debiased"):
    return out
  debiased = measure == "cka_debiased"
  xs, ys = xs[ia], ys[ib]
  key = jax.random.PRNGKey(seed)
  null = np.asarray(sim.cka_matrix_null(xs, ys, key=key, num_permutations=s.permutations, debiased=debiased,
                                        preprocess=prep))
  null_max = null.reshape(len(null), -1).max(1)
  grid_max = lambda x, y: sim.cka_matrix(x, y, debiased=debiased, preprocess=prep).max()
  low, high = sim.subsample_ci(grid_max, xs, ys, key=jax.random.fold_in(key, 1), num_resamples=s.ci_resamples,
                               batch_size=8)
  out.update(null_max_q95=float(np.quantile(null_max, 0.95)),
             p_value=float((1 + np.sum(null_max >= scored.max())) / (1 + len(null_max))),
             max_ci=[float(low), float(high)])
  return out


def _probe_rows(task, scores, shuffled_scores, a, b, relation, la, lb, num_layers, seed):
  """probes.csv rows of one task: every layer pair's mapped accuracy with its CI, floors and ceilings."""
  return [dict(task=task, source=a, target=b, relation=relation, layer_a=la[i], layer_b=lb[j],
               **_depths(la[i], lb[j], a, b, num_layers),
               acc_mapped=float(scores.mapped[i, j]), acc_mapped_lo=float(scores.mapped_ci[i, j, 0]),
               acc_mapped_hi=float(scores.mapped_ci[i, j, 1]), acc_shuffled=float(shuffled_scores.mapped[i, j]),
               acc_target=float(scores.target[j]), acc_source=float(scores.source[i]),
               acc_majority=float(scores.majority), seed=seed)
          for i, j in np.ndindex(scores.mapped.shape)]


def transfer_pair(cfg, seed, a, b, relation, store_a, store_b, xs, ys, acts, tasks, num_layers, loaded, texts,
                  workdir):
  """Maps a -> b for all layer pairs with their floors, the probe transfer on each task, and next-token transfer
  (patching and the published token probe)."""
  from xsim import transfer
  t = cfg.transfer
  options = dict(method=t.method, val_fraction=t.val_fraction, test_fraction=t.test_fraction, seed=seed,
                 standardize=t.get("standardize", True), penalties=t.get("penalties"))
  # Keyed by the fit's own options only: next-token settings must not invalidate the maps.
  key = _key(store_a.manifest, store_b.manifest, options)
  fit = transfer.fit_linear_maps(xs, ys, checkpoint_dir=os.path.join(workdir, "cache", "maps", f"{a}__{b}-{key}"),
                                 **options)
  shuffled = transfer.fit_shuffled_maps(xs, ys, **options)
  mean_r2 = transfer.mean_predictor_r2(ys, val_fraction=t.val_fraction, test_fraction=t.test_fraction, seed=seed)
  la, lb = store_a.layers, store_b.layers
  rows = [dict(source=a, target=b, relation=relation, method=t.method, layer_a=la[i], layer_b=lb[j],
               **_depths(la[i], lb[j], a, b, num_layers), r2=float(fit.r2[i, j]),
               r2_shuffled=float(shuffled.r2[i, j]), r2_mean=float(mean_r2[j]), seed=seed)
          for i, j in np.ndindex(fit.r2.shape)]
  probe_rows, next_rows = [], []
  if relation == "random":
    return rows, probe_rows, next_rows
  if t.next_token.enabled:
    path = os.path.join(workdir, "cache", "next_token",
                        f"{a}__{b}-{_key(key, t.next_token.to_dict(), text_hash(texts), results.PROBE_COLUMNS)}.json")
    if not results.exists(path):
      start = time.time()
      patch_rows, token = next_token.next_token_transfer(cfg, seed, a, b, relation, loaded[a], loaded[b], texts,
                                                         fit, shuffled, la, lb, workdir)
      results.write_json(path, {"patching": patch_rows, "probes": [] if token is None else [
          row for k, (scores, floor) in token.scores.items()
          for row in _probe_rows(f"next_token_top{k}", scores, floor, a, b, relation, token.layers_a,
                                 token.layers_b, num_layers, seed)]})
      logging.info("%s -> %s (seed %d): next-token patching and token probe in %.1fs.", a, b, seed,
                   time.time() - start)
    cached = results.read_json(path)
    next_rows, probe_rows = cached["patching"], cached["probes"]
  for task_name, task in tasks.items():
    source_task = acts.tasks[(task_name, a)]
    fs, ft, ta = paired_arrays(source_task, acts.tasks[(task_name, b)])
    labels = np.asarray(task.labels)[source_task.index["text"][ta]]
    target_probe = transfer.fit_logistic_probes(ft, labels, seed=seed)
    source_probe = transfer.fit_logistic_probes(fs, labels, seed=seed)
    scores, floor = (transfer.probe_transfer(m, target_probe, source_probe, fs, labels, seed=seed, num_resamples=200)
                     for m in (fit, shuffled))
    probe_rows += _probe_rows(task_name, scores, floor, a, b, relation, la, lb, num_layers, seed)
  return rows, probe_rows, next_rows


def environment() -> dict:
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
  except OSError:
    commit = ""
  import flax
  import transformers
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "xsim_commit": commit, "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "transformers": transformers.__version__,
          "devices": [str(d) for d in jax.devices()], "processes": jax.process_count()}


def run(cfg, workdir: str) -> dict:
  """Runs the whole study; returns the summary written to workdir/summary.json."""
  from xsim import activations as xa
  from xsim.distributed import initialize_from_env
  initialize_from_env()
  validate_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  mesh = xa.make_mesh(cfg.mesh.data, cfg.mesh.model)
  texts = load_texts(cfg.data)
  logging.info("%d texts from %s.", len(texts), cfg.data.source)
  acts, tasks, families, stats, num_layers, loaded = extract_all(cfg, texts, workdir, mesh)
  if jax.process_index() != 0:
    return {}
  sim_rows, transfer_rows, probe_rows, next_rows, pairs_summary = [], [], [], [], {}
  for a, b, relation in model_pairs(cfg, families):
    arrays = {}
    for seed in cfg.seeds:
      store_a, store_b = acts.get(a, seed), acts.get(b, seed)
      if store_b.path not in arrays:  # a real pair's arrays are the same for every seed: read them once
        arrays = {store_b.path: paired_arrays(store_a, store_b)[:2]}
      xs, ys = arrays[store_b.path]
      rows, measures = compare_pair(cfg, seed, a, b, relation, store_a, store_b, xs, ys, num_layers, workdir)
      sim_rows += rows
      entry = pairs_summary.setdefault(f"{a}|{b}", {"relation": relation, "num_samples": int(xs.shape[1]),
                                                    "measures": measures, "measures_by_seed": {}})
      entry["measures_by_seed"][str(seed)] = measures
      rows, probes, next_token_scores = transfer_pair(cfg, seed, a, b, relation, store_a, store_b, xs, ys, acts,
                                                      tasks, num_layers, loaded, texts, workdir)
      transfer_rows += rows
      probe_rows += probes
      next_rows += next_token_scores
  results.write_table(os.path.join(workdir, "similarity.csv"), results.SIMILARITY_COLUMNS, sim_rows)
  results.write_table(os.path.join(workdir, "transfer.csv"), results.TRANSFER_COLUMNS, transfer_rows)
  if probe_rows:
    results.write_table(os.path.join(workdir, "probes.csv"), results.PROBE_COLUMNS, probe_rows)
  if next_rows:
    results.write_table(os.path.join(workdir, "next_token.csv"), results.NEXT_TOKEN_COLUMNS, next_rows)
  summary = {"pairs": pairs_summary, "ci_level": 0.95, "seeds": list(cfg.seeds),
             "min_layer": cfg.similarity.min_layer, "num_texts": len(texts),
             "activation_stats": {name: s["layers"] for name, s in stats.items()}}
  results.write_json(os.path.join(workdir, "summary.json"), summary)
  results.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
  from experiments import report
  report.write_report(workdir, cfg.to_dict(), environment())
  logging.info("Report: %s", os.path.join(workdir, "report.md"))
  return summary


def bracket_list_indices(argv: list[str]) -> list[str]:
  """--config.models.0.dtype=X -> --config.models[0].dtype=X (config_flags paths index lists with brackets)."""
  def rewrite(arg):
    if not arg.startswith("--config."):
      return arg
    name, eq, value = arg.partition("=")
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name) + eq + value
  return [rewrite(a) for a in argv]


def main(argv):
  del argv
  if _WORKDIR.value is None or _CONFIG.value is None:
    raise app.UsageError("Pass --config=experiments/configs/NAME.py and --workdir=DIR.")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  sys.argv = bracket_list_indices(sys.argv)  # config_flags reads its overrides from sys.argv
  app.run(main)
