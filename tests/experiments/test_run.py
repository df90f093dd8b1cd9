"""experiments.run end to end on tiny checkpoints: every output, numbers that match the table, resume."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments import results, run as runner
from launch.local import launch
from tests.experiments import tiny_config as tiny

TABLES = ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv")


@pytest.fixture(scope="module")
def tiny_config(model_root):
  return tiny.get_config(model_root)


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = runner.run(tiny_config, workdir)
  os.makedirs(workdir + "-pristine")  # the tables as first written; later tests rerun into workdir
  for table in TABLES:
    shutil.copy(os.path.join(workdir, table), workdir + "-pristine")
  return workdir, summary


def test_writes_every_output(finished_run):
  workdir, summary = finished_run
  for name in ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv", "summary.json", "config.json",
               "report.md", "report.html"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert any(f.endswith(".png") for f in os.listdir(os.path.join(workdir, "figures")))
  rows = results.read_table(os.path.join(workdir, "similarity.csv"))
  relations = {(r["model_a"], r["model_b"]): r["relation"] for r in rows}
  assert relations == {("tiny-llama", "tiny-gemma"): "cross", ("tiny-llama", "tiny-gemma@random"): "random"}
  # 4 x 4 hidden states per model, 3 measures x 2 preprocessings, 2 pairs, 2 seeds
  assert len(rows) == 2 * 3 * 2 * 4 * 4 * 2


def test_seeds_vary_the_random_baselines_and_splits_but_not_the_real_pair(finished_run):
  workdir, summary = finished_run
  rows = results.read_table(os.path.join(workdir, "similarity.csv"))
  grid = lambda pair, seed: np.array([r["value"] for r in rows if (r["model_b"], r["seed"], r["measure"]) == (
      pair, seed, "cka")])
  np.testing.assert_array_equal(grid("tiny-gemma", 0), grid("tiny-gemma", 1))  # the same texts and models
  assert np.abs(grid("tiny-gemma@random", 0) - grid("tiny-gemma@random", 1)).max() > 1e-3  # other random weights
  transfer = results.read_table(os.path.join(workdir, "transfer.csv"))
  r2 = lambda seed: np.array([r["r2"] for r in transfer if (r["target"], r["seed"]) == ("tiny-gemma", seed)])
  assert len(r2(0)) == len(r2(1)) == 16 and np.abs(r2(0) - r2(1)).max() > 1e-4  # other splits
  assert summary["seeds"] == [0, 1]
  cache = os.listdir(os.path.join(workdir, "cache", "similarity"))
  knn = lambda b: [f for f in cache if f.startswith(f"tiny-llama__{b}__mutual_knn__")]
  assert len(knn("tiny-gemma")) == 2 and len(knn("tiny-gemma@random")) == 4  # seed-free for the real pair
  assert set(summary["pairs"]["tiny-llama|tiny-gemma"]["measures_by_seed"]) == {"0", "1"}


def test_summary_maxima_leave_out_the_embeddings(finished_run):
  workdir, summary = finished_run
  rows = results.read_table(os.path.join(workdir, "similarity.csv"))
  assert summary["min_layer"] == 1
  for key, stats in summary["pairs"]["tiny-llama|tiny-gemma"]["measures"].items():
    measure, prep = key.split("|")
    cells = [r for r in rows if (r["model_b"], r["measure"], r["preprocess"], r["seed"]) == (
        "tiny-gemma", measure, prep, 0) and r["layer_a"] >= 1 and r["layer_b"] >= 1]
    best = max(cells, key=lambda r: r["value"])
    assert stats["max"] == pytest.approx(best["value"], abs=1e-12)
    assert stats["argmax"] == [best["layer_a"], best["layer_b"]]
    if measure.startswith("cka"):
      assert stats["max_ci"][0] <= stats["max_ci"][1]


def test_token_probe_rows_have_floors_and_ceilings(finished_run):
  workdir, _ = finished_run
  rows = [r for r in results.read_table(os.path.join(workdir, "probes.csv")) if r["task"].startswith("next_token")]
  assert {r["task"] for r in rows} == {"next_token_top1", "next_token_top5"}
  # top-1 / top-5 x 2 seeds x the 3 x 3 depth-matched block outputs (of 4 hidden states), llama -> gemma
  assert len(rows) == 2 * 2 * 3 * 3 and {(r["layer_a"], r["layer_b"]) for r in rows} == {
      (i, j) for i in (1, 2, 3) for j in (1, 2, 3)}
  for r in rows:
    assert 0 <= r["acc_majority"] <= 1 and 0 <= r["acc_shuffled"] <= 1 and r["acc_mapped_lo"] <= r["acc_mapped"]
  top = lambda task, column: max(r[column] for r in rows if r["task"] == task)
  assert top("next_token_top5", "acc_majority") >= top("next_token_top1", "acc_majority")
  assert top("next_token_top5", "acc_target") >= top("next_token_top1", "acc_target")


def test_next_token_rows_have_floors(finished_run):
  workdir, _ = finished_run
  rows = results.read_table(os.path.join(workdir, "next_token.csv"))
  assert rows and {r["relation"] for r in rows} == {"cross"}
  for r in rows:
    assert 0 <= r["top1_mapped"] <= 1 and r["kl_mapped"] >= 0 and r["kl_mean_ablation"] >= 0
    assert r["num_samples"] >= 8
  report = open(os.path.join(workdir, "report.md")).read()
  assert "## Next-token transfer by patching" in report
  assert f"| {rows[0]['kl_mapped']:.3f} |" in report


def test_summary_and_report_match_the_table(finished_run):
  """summary.json holds each seed's statistics over block outputs; the report averages the seeds' grids."""
  workdir, summary = finished_run
  rows = results.read_table(os.path.join(workdir, "similarity.csv"))
  report = open(os.path.join(workdir, "report.md")).read()
  for pair, entry in summary["pairs"].items():
    a, b = pair.split("|")
    for key in entry["measures"]:
      measure, prep = key.split("|")
      grids = {}
      for r in rows:
        if (r["model_a"], r["model_b"], r["measure"], r["preprocess"]) == (a, b, measure, prep) and min(
            r["layer_a"], r["layer_b"]) >= 1:
          grids.setdefault(r["seed"], {})[(r["layer_a"], r["layer_b"])] = r["value"]
      for seed, grid in grids.items():
        stats = entry["measures_by_seed"][str(seed)][key]
        assert stats["max"] == pytest.approx(max(grid.values()), abs=1e-12)
        assert stats["mean"] == pytest.approx(np.mean(list(grid.values())), abs=1e-12)
      assert entry["measures"][key] == entry["measures_by_seed"]["0"][key]
      seed_mean = np.mean([list(g.values()) for g in grids.values()], axis=0)
      line = re.search(rf"^\| {re.escape(a)} vs {re.escape(b)} \|.*$", report.split(f"### {measure}, preprocess={prep}")[1],
                       re.M).group(0)
      assert f"| {seed_mean.max():.3f} |" in line and f"| {seed_mean.mean():.3f} |" in line


def test_rerun_reuses_every_cached_result(finished_run, tiny_config, monkeypatch):
  workdir, summary = finished_run
  monkeypatch.setattr(runner, "similarity_matrix", lambda *a: pytest.fail("similarity recomputed"))
  from xsim.activations import ActivationStore
  monkeypatch.setattr(ActivationStore, "write_shard", lambda *a: pytest.fail("activations re-extracted"))
  again = runner.run(tiny_config, workdir)
  assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)


def test_changed_config_recomputes_only_what_changed(finished_run, tiny_config, monkeypatch):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.similarity.preprocess = ["none", "standardize", "l2"]
  computed = []
  original = runner.similarity_matrix
  monkeypatch.setattr(runner, "similarity_matrix", lambda m, p, *a: (computed.append((m, p)), original(m, p, *a))[1])
  runner.run(config, workdir)
  assert sorted(set(computed)) == [("cka", "l2"), ("cka_debiased", "l2"), ("mutual_knn", "l2")]


def test_changed_texts_get_new_activation_stores(finished_run, tiny_config):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.data.num_texts = 40  # a store refuses other inputs, so new texts need new store directories
  before = set(os.listdir(os.path.join(workdir, "activations")))
  acts = runner.extract_all(config, runner.load_texts(config.data), workdir, None)[0]
  store = acts.models["tiny-llama"]
  assert os.path.basename(store.path) not in before and store.manifest["num_texts"] == 40
  assert os.path.basename(acts.tasks[("capitals", "tiny-llama")].path) in before  # the task texts did not change


def test_a_run_killed_mid_way_resumes_to_the_same_results(finished_run, tiny_config, monkeypatch, tmp_path):
  one_process, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.seeds = [0]
  original = runner.compare_pair

  def crash_at_the_random_pair(cfg, seed, a, b, *args):
    if b.endswith("@random"):
      raise KeyboardInterrupt("preempted")
    return original(cfg, seed, a, b, *args)

  monkeypatch.setattr(runner, "compare_pair", crash_at_the_random_pair)
  with pytest.raises(KeyboardInterrupt):
    runner.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "similarity.csv")
  monkeypatch.setattr(runner, "compare_pair", original)
  computed = []
  matrix = runner.similarity_matrix
  monkeypatch.setattr(runner, "similarity_matrix", lambda m, p, *a: (computed.append(a[1].shape), matrix(m, p, *a))[1])
  runner.run(config, str(tmp_path))
  assert len(computed) == 6  # only the random pair's 3 measures x 2 preprocessings; the cross pair was cached
  for table in TABLES:
    resumed = results.read_table(os.path.join(tmp_path, table))
    reference = [r for r in results.read_table(os.path.join(one_process + "-pristine", table)) if r["seed"] == 0]
    assert len(resumed) == len(reference) > 0
    for a, b in zip(resumed, reference):
      assert a.keys() == b.keys()
      for k in b:
        assert a[k] == (pytest.approx(b[k], abs=1e-6) if isinstance(b[k], float) else b[k]), (table, k)


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(finished_run, model_root, tmp_path):
  workdir, _ = finished_run
  code = launch(["-m", "experiments.run", f"--config=tests/experiments/tiny_config.py:{model_root}",
                 f"--workdir={tmp_path}"], 2, timeout_s=1200)
  assert code == 0
  for table in TABLES:
    one = results.read_table(os.path.join(workdir + "-pristine", table))
    two = results.read_table(os.path.join(tmp_path, table))
    assert len(one) == len(two)
    for a, b in zip(one, two):
      assert a.keys() == b.keys()
      for k in a:
        assert a[k] == (pytest.approx(b[k], abs=1e-5) if isinstance(a[k], float) else b[k]), (table, k)


def test_next_token_settings_leave_the_maps_cached(finished_run, tiny_config, monkeypatch):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.transfer.next_token.num_depths = 3
  from xsim.transfer import checkpoint
  monkeypatch.setattr(checkpoint.ChunkStore, "save", lambda *a: pytest.fail("maps refit"))
  runner.run(config, workdir)
