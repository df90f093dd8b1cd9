"""experiments.run end to end on tiny checkpoints: every output, numbers that match the table, resume."""
import json
import os
import re

import numpy as np
import pytest

from experiments import results, run as runner
from launch.local import launch
from tests.activations.tiny import make_model_dir
from tests.experiments import tiny_config as tiny


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  make_model_dir(root / "llama", "bytelevel", "llama")
  make_model_dir(root / "gemma", "sentencepiece", "gemma2")
  return str(root)


@pytest.fixture(scope="module")
def tiny_config(model_root):
  return tiny.get_config(model_root)


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = runner.run(tiny_config, workdir)
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
  # 4 x 4 hidden states per model, 3 measures x 2 preprocessings, 2 pairs
  assert len(rows) == 2 * 3 * 2 * 4 * 4


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
  workdir, summary = finished_run
  rows = results.read_table(os.path.join(workdir, "similarity.csv"))
  report = open(os.path.join(workdir, "report.md")).read()
  for pair, entry in summary["pairs"].items():
    a, b = pair.split("|")
    for key, stats in entry["measures"].items():
      measure, prep = key.split("|")
      values = np.array([r["value"] for r in rows if (r["model_a"], r["model_b"], r["measure"], r["preprocess"])
                         == (a, b, measure, prep)])
      assert stats["max"] == pytest.approx(values.max(), abs=1e-12)
      assert stats["mean"] == pytest.approx(values.mean(), abs=1e-12)
      line = re.search(rf"^\| {re.escape(a)} vs {re.escape(b)} \|.*$", report.split(f"### {measure}, preprocess={prep}")[1],
                       re.M).group(0)
      assert f"| {values.max():.3f} |" in line and f"| {values.mean():.3f} |" in line


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


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(finished_run, model_root, tmp_path):
  workdir, _ = finished_run
  code = launch(["-m", "experiments.run", f"--config=tests/experiments/tiny_config.py:{model_root}",
                 f"--workdir={tmp_path}"], 2, timeout_s=1200)
  assert code == 0
  for table in ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv"):
    one, two = results.read_table(os.path.join(workdir, table)), results.read_table(os.path.join(tmp_path, table))
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
