"""The steering stage end to end on tiny checkpoints: a model steered through a map from an identical copy of itself
gets its own vector back (efficacy 1), and the zero vector changes nothing."""
import json
import os

import pytest

from experiments import outputs, run as runner
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
  c.similarity.update(measures=["cka"], preprocess=["none"])
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


def test_pairs_with_one_target_share_its_own_and_random_directions(steered_run, model_root):
  """The target's own vector, random nulls and zero vector are scored once per target layer: a second source for
  the same target adds no target-side entry, and both pairs report the same own effect and random null."""
  c, workdir = steered_run
  more = c.copy_and_resolve_references()
  more.models.append(dict(name="tiny-gemma", path=os.path.join(model_root, "gemma"), dtype="float32",
                          family="gemma"))
  more.pairs = [["tiny-llama-copy", "tiny-llama"], ["tiny-gemma", "tiny-llama"]]
  target_side = os.path.join(workdir, "cache", "steering-target")
  before = sorted(os.listdir(target_side))
  runner.run(more, workdir)
  assert sorted(os.listdir(target_side)) == before and len(before) == 2 * 2  # concepts x (scores, perplexity)
  rows = outputs.read_table(os.path.join(workdir, "steering.csv"))
  for concept in ("weddings", "truth"):
    by_source = {r["source"]: r for r in rows if r["concept"] == concept and r["scale"] == 1.0}
    assert sorted(by_source) == ["tiny-gemma", "tiny-llama-copy"]
    first, second = by_source.values()
    assert first["layer_b"] == second["layer_b"]
    for column in ("own_effect", "random_min", "random_max", "perplexity_own", "perplexity_random"):
      assert first[column] == second[column], column
    assert first["mapped_effect"] != second["mapped_effect"]
