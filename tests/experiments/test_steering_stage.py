"""The steering stage end to end on tiny checkpoints: a model steered through a map from an identical copy of itself
gets its own vector back (efficacy 1), and the zero vector changes nothing; with a second, cross-family source the
run answers within vs cross, and its per-pair figures are checked against float64 NumPy on the stored activations."""
import json
import os
import re

import numpy as np

import pytest

from experiments import outputs, run as runner
from xsim import activations as xa
from experiments.stages import steering
from tests.experiments import tiny_config as tiny


@pytest.fixture(scope="module", name="steered_run")
def _steered_run(model_root, tmp_path_factory):
  c = tiny.get_config(model_root)
  llama = os.path.join(model_root, "llama")
  c.models = [dict(name="tiny-llama", path=llama, dtype="float32", family="llama"),
              dict(name="tiny-llama-copy", path=llama, dtype="float32", family="llama")]
  c.pairs = [["tiny-llama-copy", "tiny-llama"]]
  c.baselines.random_init = False
  c.data.num_texts = 160  # more training rows than dimensions (64): the ridge map of a model onto itself is ~I
  c.transfer.penalties = [1e-6]
  c.similarity.update(measures=["cka_debiased"], preprocess=["none", "standardize"])
  c.next_token.enabled = False
  c.probes.update(tasks=[], token_classes=0)
  c.seeds = [0]
  c.steering.update(enabled=True, num_pairs=8, num_prompts=8, num_passages=2, depths=(0.5,), scales=(1.0, 2.0),
                    num_random=10, num_shuffled=9)
  workdir = str(tmp_path_factory.mktemp("steer"))
  runner.run(c, workdir)
  return c, workdir


def test_a_map_onto_an_identical_model_carries_the_own_vector(steered_run):
  _, workdir = steered_run
  rows = outputs.read_table(os.path.join(workdir, "steering.csv"))
  assert sorted({(r["concept"], r["readout"]) for r in rows}) == [("truth", "probe"), ("weddings", "words")]
  assert len(rows) == 2 * 2  # concepts x scales at one depth
  for r in rows:
    assert r["map_r2"] > 0.99, r
    assert r["efficacy"] == pytest.approx(1.0, abs=0.05), r
    assert r["efficacy_lo"] <= r["efficacy"] <= r["efficacy_hi"]
    # A random tiny model holds no concept, so its own vector is no stronger than a random one: the p-value is only
    # one of the 20 values a 19-direction null allows.
    assert round(r["p_value"] * 20) == pytest.approx(r["p_value"] * 20, abs=1e-4) and 0 < r["p_value"] <= 1
    assert r["zero_effect"] == 0.0  # the zero vector's rows are the unsteered forward, bit for bit
    assert r["perplexity_mapped"] == pytest.approx(r["perplexity_own"], rel=0.05)
    assert r["norm"] == pytest.approx(r["scale"] * rows[0]["norm"] / rows[0]["scale"], rel=1e-6) or (
        r["concept"] != rows[0]["concept"])


def test_the_summary_figure_follows_the_perplexity_rule(steered_run):
  c, workdir = steered_run
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  figures = summary["pairs"]["tiny-llama-copy|tiny-llama"]["steering"]["0"]
  rows = outputs.read_table(os.path.join(workdir, "steering.csv"))
  settings = steering.Settings(**{k: v for k, v in c.steering.items()})
  for concept in ("weddings", "truth"):
    chosen = steering.summary_rows(settings, [r for r in rows if r["concept"] == concept])
    assert all(max(r["perplexity_own"], r["perplexity_mapped"]) <= 2.0 for r in chosen)
    assert figures[concept]["layer_pairs"] == [[r["layer_a"], r["layer_b"], r["scale"]] for r in chosen]
    if chosen:
      assert figures[concept]["efficacy"] == pytest.approx(sum(r["efficacy"] for r in chosen) / len(chosen))


def test_a_new_summary_rule_or_fewer_concepts_recompute_nothing(steered_run):
  c, workdir = steered_run
  rerun = c.copy_and_resolve_references()
  rerun.steering.update(concepts=("truth",), max_perplexity_ratio=1.5)
  summary = runner.run(rerun, workdir)
  assert summary["work"]["computed"]["0"] == {"assigned": summary["work"]["planned"], "computed": 0}
  assert list(summary["pairs"]["tiny-llama-copy|tiny-llama"]["steering"]["0"]) == ["truth"]
  rows = outputs.read_table(os.path.join(workdir, "steering.csv"))
  assert {r["concept"] for r in rows} == {"truth"}


@pytest.fixture(scope="module", name="two_sources")
def _two_sources(steered_run, model_root):
  """The steered run again with a cross-family source (tiny Gemma) for the same target: (workdir, the target-side
  steering entries before, after)."""
  c, workdir = steered_run
  more = c.copy_and_resolve_references()
  more.models = list(c.models) + [dict(name="tiny-gemma", path=os.path.join(model_root, "gemma"), dtype="float32",
                                       family="gemma")]
  more.pairs = [["tiny-llama-copy", "tiny-llama"], ["tiny-gemma", "tiny-llama"]]
  more.steering.concepts = ("weddings", "truth")
  target_side = os.path.join(workdir, "cache", "steering-target")
  before = sorted(os.listdir(target_side))
  runner.run(more, workdir)
  return workdir, before, sorted(os.listdir(target_side))


def test_pairs_with_one_target_share_its_own_and_random_directions(two_sources):
  """The target's own vector, random nulls and zero vector are scored once per target layer: a second source for
  the same target adds no target-side entry, and both pairs report the same own effect and random null."""
  workdir, before, after = two_sources
  assert after == before and len(before) == 2 * 2  # concepts x (scores, perplexity)
  rows = outputs.read_table(os.path.join(workdir, "steering.csv"))
  for concept in ("weddings", "truth"):
    by_source = {r["source"]: r for r in rows if r["concept"] == concept and r["scale"] == 1.0}
    assert sorted(by_source) == ["tiny-gemma", "tiny-llama-copy"]
    first, second = by_source.values()
    assert first["layer_b"] == second["layer_b"]
    for column in ("own_effect", "random_min", "random_max", "perplexity_own", "perplexity_random"):
      assert first[column] == second[column], column
    assert first["mapped_effect"] != second["mapped_effect"]


def _debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear debiased CKA in float64 (Song et al. 2012's unbiased HSIC on column-centred rows)."""
  def hsic(k, l):
    n = len(k)
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    return (np.trace(k @ l) + ones @ k @ ones * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ k @ l @ ones) / (n * (n - 3))
  x, y = x - x.mean(0), y - y.mean(0)
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_the_reports_per_pair_figures_agree_with_float64_on_the_stored_activations(two_sources):
  """Every pair's max debiased CKA in the answer and report.md equals the max over the scored layer pairs of a
  float64 NumPy recomputation from the run's activation stores, at the same layer pair."""
  workdir = two_sources[0]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  report = open(os.path.join(workdir, "report.md")).read()
  folder = os.path.join(workdir, "activations")
  store = lambda model: xa.load_store(os.path.join(folder, next(
      n for n in os.listdir(folder) if re.fullmatch(rf"{re.escape(model)}-[0-9a-f]{{12}}", n))))
  figures = {f["figure"]: f for f in summary["answer"]["figures"]}
  for prep, name in (("none", "raw"), ("standardize", "standardized")):
    scale = (lambda x: x) if prep == "none" else (lambda x: (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1))
    per_pair = figures[f"max debiased CKA ({name})"]["pairs"]
    assert sorted(p["relation"] for p in per_pair) == ["cross", "within"]
    for entry in per_pair:
      source, target = entry["pair"].split(" → ")
      a, b = store(source), store(target)
      rows_a, rows_b = xa.paired_rows(a, b)
      xs, ys = np.asarray(a.array, np.float64)[:, rows_a], np.asarray(b.array, np.float64)[:, rows_b]
      grid = {(la, lb): _debiased_cka(scale(xs[i]), scale(ys[j]))  # hidden-state indices; min_layer 1
              for i, la in enumerate(a.layers) for j, lb in enumerate(b.layers) if min(la, lb) >= 1}
      best = max(grid, key=grid.get)
      assert entry["value"] == pytest.approx(grid[best], abs=1e-5), (entry, name)
      # The reported layer pair is a maximizer (a model and its copy tie at 1 on the whole diagonal).
      assert grid[tuple(entry["layers"])] == pytest.approx(grid[best], abs=1e-5)
      la, lb = entry["layers"]
      assert re.search(rf"\| {re.escape(entry['pair'])} \| {entry['relation']} \| max debiased CKA \({name}\) \| "
                       rf"{grid[best]:.3f} \| {la}, {lb} ", report), (entry, name)


def test_contrasts_are_extracted_while_extraction_holds_the_model(steered_run, tmp_path, monkeypatch):
  """The stage's prefetch part takes every model's contrast activations during extraction, so a steering unit
  loads its target alone: never the source, which it needs for nothing else."""
  from experiments import extraction
  c, _ = steered_run
  fresh = c.copy_and_resolve_references()
  fresh.steering.update(concepts=("weddings",), scales=(1.0,))
  loads, steering_now = [], [False]
  real_get, real_compute = extraction.ModelCache.get, steering.compute

  def get(self, name):
    if name not in self.loaded:
      loads.append((name, steering_now[0]))
    return real_get(self, name)

  def compute(*args):
    steering_now[0] = True
    try:
      return real_compute(*args)
    finally:
      steering_now[0] = False
  monkeypatch.setattr(extraction.ModelCache, "get", get)
  monkeypatch.setattr(steering, "compute", compute)
  monkeypatch.setattr(runner, "_memory_budget", lambda: 0)  # every model is freed once done with, as large ones are
  runner.run(fresh, str(tmp_path))
  assert [name for name, during in loads if during] == ["tiny-llama"]  # the target, freed after extraction
  assert {name for name, during in loads if not during} == {"tiny-llama", "tiny-llama-copy"}
  assert len(outputs.read_table(str(tmp_path / "steering.csv"))) == 1
