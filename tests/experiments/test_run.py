"""experiments.run end to end on tiny checkpoints: every output, numbers that match the table, resume."""
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import pytest

from experiments import cache, extraction, outputs, run as runner, study, workdir as workdir_lib
from experiments.stages import similarity as similarity_stage
from launch.local import launch
from tests.experiments import tiny_config as tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLES = ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv")
_WRITES = {"on": False, "paths": []}


def _audit(event, args):
  """Records every path opened for writing (or created, renamed onto, removed) while _WRITES is on."""
  if not _WRITES["on"]:
    return
  if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (
      (isinstance(args[1], str) and set(args[1]) & set("wax+")) or (isinstance(args[2], int) and args[2] & (
          os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
    _WRITES["paths"].append(os.fsdecode(args[0]))
  elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "shutil.rmtree"):
    _WRITES["paths"].append(os.fsdecode(args[1] if event in ("os.rename", "os.replace") else args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def tiny_config(model_root):
  return tiny.get_config(model_root)


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  _WRITES.update(on=True, paths=[])
  try:
    summary = runner.run(tiny_config, workdir)
  finally:
    _WRITES["on"] = False
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
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
  relations = {(r["model_a"], r["model_b"]): r["relation"] for r in rows}
  assert relations == {("tiny-llama", "tiny-gemma"): "cross", ("tiny-llama", "tiny-gemma@random"): "random"}
  # 4 x 4 hidden states per model, 3 measures x 2 preprocessings, 2 pairs, 2 seeds
  assert len(rows) == 2 * 3 * 2 * 4 * 4 * 2


def test_every_file_the_run_writes_lies_under_the_workdir(finished_run):
  workdir, _ = finished_run
  root = os.path.realpath(workdir) + os.sep
  written = {os.path.realpath(os.path.abspath(p)) for p in _WRITES["paths"]}
  assert len(written) > 50  # stores, cache entries, tables, figures, report
  # Compiled-code caches of libraries (XLA, matplotlib's font cache) are not the run's output.
  library_caches = (os.path.expanduser("~/.cache/matplotlib"), os.path.expanduser("~/.config/matplotlib"), "/dev/",
                    "/proc/", os.path.realpath(os.environ.get("JAX_COMPILATION_CACHE_DIR", "/dev/")) + os.sep)
  outside = sorted(p for p in written if not (p + os.sep).startswith(root) and "/__pycache__/" not in p
                   and not (p + os.sep).startswith(library_caches))
  assert outside == []


def test_units_are_named_by_their_inputs_and_each_process_counts_its_work(finished_run):
  workdir, summary = finished_run
  # 2 pairs: per seed 2 CKA measures and mutual kNN (with its null and CI, so per seed for every pair) x 2
  # preprocessings x 1 chunk, a maps unit per seed; then the real pair's probe, token-probe and next-token units
  # per seed.
  assert summary["work"]["planned"] == (2 * 6) + (2 * 6) + 4 + 2 * 3
  assert summary["work"]["computed"]["0"] == {"assigned": summary["work"]["planned"],
                                               "computed": summary["work"]["planned"]}


def test_seeds_vary_the_random_baselines_and_splits_but_not_the_real_pair(finished_run):
  workdir, summary = finished_run
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
  grid = lambda pair, seed: np.array([r["value"] for r in rows if (r["model_b"], r["seed"], r["measure"]) == (
      pair, seed, "cka")])
  np.testing.assert_array_equal(grid("tiny-gemma", 0), grid("tiny-gemma", 1))  # the same texts and models
  assert np.abs(grid("tiny-gemma@random", 0) - grid("tiny-gemma@random", 1)).max() > 1e-3  # other random weights
  transfer = outputs.read_table(os.path.join(workdir, "transfer.csv"))
  r2 = lambda seed: np.array([r["r2"] for r in transfer if (r["target"], r["seed"]) == ("tiny-gemma", seed)])
  assert len(r2(0)) == len(r2(1)) == 16 and np.abs(r2(0) - r2(1)).max() > 1e-4  # other splits
  assert summary["seeds"] == [0, 1]
  cache = os.listdir(os.path.join(workdir, "cache", "similarity"))
  knn = lambda b: [f for f in cache if f.startswith(f"tiny-llama__{b}__mutual_knn__")]
  # mutual k-NN has a permutation null and CIs (drawn per seed), so like CKA its units are per seed for every pair
  assert len(knn("tiny-gemma")) == 4 and len(knn("tiny-gemma@random")) == 4
  assert set(summary["pairs"]["tiny-llama|tiny-gemma"]["measures_by_seed"]) == {"0", "1"}


def test_summary_maxima_leave_out_the_embeddings(finished_run):
  workdir, summary = finished_run
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
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
  rows = [r for r in outputs.read_table(os.path.join(workdir, "probes.csv")) if r["task"].startswith("next_token")]
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
  rows = outputs.read_table(os.path.join(workdir, "next_token.csv"))
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
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
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


def test_rerun_reuses_every_cached_result_without_loading_a_model(finished_run, tiny_config, monkeypatch):
  workdir, summary = finished_run
  for module, name in ((similarity_stage, "grid"), (extraction.ModelCache, "get")):
    monkeypatch.setattr(module, name, lambda *a, name=name: pytest.fail(f"{name} called on a rerun"))
  from xsim.activations import ActivationStore
  monkeypatch.setattr(ActivationStore, "write_shard", lambda *a: pytest.fail("activations re-extracted"))
  again = runner.run(tiny_config, workdir)
  work = again.pop("work")
  assert work["computed"]["0"]["computed"] == 0
  summary = dict(summary)
  summary.pop("work")
  assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)


def test_a_damaged_cache_entry_is_named_and_recomputed(finished_run, tiny_config, caplog):
  workdir, _ = finished_run
  entry = sorted(os.listdir(os.path.join(workdir, "cache", "maps")))
  entry = next(os.path.join(workdir, "cache", "maps", e) for e in entry if e.endswith(".json"))
  text = open(entry).read()
  with open(entry, "w") as f:  # a changed digit: valid JSON, wrong number
    f.write(re.sub(r"(\d)(\d)(\D)", lambda m: m.group(1) + str((int(m.group(2)) + 1) % 10) + m.group(3), text, count=1))
  with pytest.raises(cache.CorruptEntry, match="does not match its checksum"):
    cache.read(entry)
  before = {t: open(os.path.join(workdir, t)).read() for t in TABLES}
  caplog.set_level("WARNING")
  runner.run(tiny_config, workdir)
  assert any(entry in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
  assert cache.read(entry) is not None
  assert {t: open(os.path.join(workdir, t)).read() for t in TABLES} == before


def test_changed_config_recomputes_only_what_changed(finished_run, tiny_config, monkeypatch):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.similarity.preprocess = ["none", "standardize", "l2"]
  computed = []
  original = similarity_stage.grid
  monkeypatch.setattr(similarity_stage, "grid", lambda m, p, *a: (computed.append((m, p)), original(m, p, *a))[1])
  runner.run(config, workdir)
  assert sorted(set(computed)) == [("cka", "l2"), ("cka_debiased", "l2"), ("mutual_knn", "l2")]


def test_changed_texts_get_new_activation_stores(finished_run, tiny_config):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.data.num_texts = 40  # a store refuses other inputs, so new texts need new store directories
  before = set(os.listdir(os.path.join(workdir, "activations")))
  s = study.Study.from_config(config)
  texts = study.load_texts(s.data)
  from xsim import data as xdata
  tasks = {"capitals": xdata.load_task("capitals", num_examples=config.probes.num_examples, seed=config.data.seed)}
  infos = {m.name: runner.read_info(m) for m in s.models}
  models = extraction.ModelCache(s.models, 1 << 30)
  stores = extraction.extract_all(s, [], texts, tasks, workdir, None, models, lambda spec: infos[spec.name])
  store = stores.texts["tiny-llama"]
  assert os.path.basename(store.path) not in before and store.manifest["num_texts"] == 40
  assert os.path.basename(stores.tasks[("capitals", "tiny-llama")].path) in before  # the task texts did not change


def test_a_run_killed_mid_way_resumes_to_the_same_results(finished_run, tiny_config, monkeypatch, tmp_path):
  one_process, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.seeds = [0]
  original = similarity_stage.compute

  def crash_at_the_random_pair(settings, ctx, unit):
    if unit.pair.is_random:
      raise KeyboardInterrupt("preempted")
    return original(settings, ctx, unit)

  monkeypatch.setattr(similarity_stage, "compute", crash_at_the_random_pair)
  with pytest.raises(KeyboardInterrupt):
    runner.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "similarity.csv")
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)  # the lock goes with the run
  monkeypatch.setattr(similarity_stage, "compute", original)
  computed = []
  matrix = similarity_stage.grid
  monkeypatch.setattr(similarity_stage, "grid", lambda m, p, *a: (computed.append(a[1].shape), matrix(m, p, *a))[1])
  runner.run(config, str(tmp_path))
  assert len(computed) == 6  # only the random pair's 3 measures x 2 preprocessings; the cross pair was cached
  for table in TABLES:
    resumed = outputs.read_table(os.path.join(tmp_path, table))
    reference = [r for r in outputs.read_table(os.path.join(one_process + "-pristine", table)) if r["seed"] == 0]
    assert len(resumed) == len(reference) > 0
    for a, b in zip(resumed, reference):
      assert a.keys() == b.keys()
      for k in b:
        assert a[k] == (pytest.approx(b[k], abs=1e-6) if isinstance(b[k], float) else b[k]), (table, k)


@pytest.mark.slow
@pytest.mark.parametrize("devices_per_process", [1, 2])  # 2 x 2: several hosts of several devices, as a cluster
def test_two_processes_give_the_one_process_results(finished_run, model_root, tmp_path, devices_per_process):
  workdir, _ = finished_run
  code = launch(["-m", "experiments.run", f"--config=tests/experiments/tiny_config.py:{model_root}",
                 f"--workdir={tmp_path}"], 2, devices_per_process, timeout_s=1200)
  assert code == 0
  work = outputs.read_json(os.path.join(tmp_path, "summary.json"))["work"]
  shares = [work["computed"][str(p)]["computed"] / work["planned"] for p in (0, 1)]
  assert sum(shares) == 1 and all(abs(share - 0.5) <= 0.05 for share in shares), shares  # within 10% of 1/P
  for table in TABLES:
    one = outputs.read_table(os.path.join(workdir + "-pristine", table))
    two = outputs.read_table(os.path.join(tmp_path, table))
    assert len(one) == len(two)
    for a, b in zip(one, two):
      assert a.keys() == b.keys()
      for k in a:
        assert a[k] == (pytest.approx(b[k], abs=1e-5) if isinstance(a[k], float) else b[k]), (table, k)


def test_next_token_settings_leave_the_maps_cached(finished_run, tiny_config, monkeypatch):
  workdir, _ = finished_run
  config = tiny_config.copy_and_resolve_references()
  config.next_token.num_depths = 3
  from xsim.transfer import checkpoint
  monkeypatch.setattr(checkpoint.ChunkStore, "save", lambda *a: pytest.fail("maps refit"))
  runner.run(config, workdir)


def test_a_second_run_on_the_workdir_stops_naming_the_holder(tmp_path):
  with workdir_lib.lock(str(tmp_path), "run-a", process=0):
    with pytest.raises(workdir_lib.LockHeld) as error:
      with workdir_lib.lock(str(tmp_path), "run-b", process=0):
        pass
    message = str(error.value)
    assert f"pid {os.getpid()}" in message and "run-a" in message and "started" in message
    with workdir_lib.lock(str(tmp_path), "run-a", process=1, join_s=1):  # another process of the same run joins
      pass
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  import socket
  import subprocess
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  with open(tmp_path / workdir_lib.LOCK_NAME, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": gone.pid, "run_id": "old", "started": "then"}, f)
  with workdir_lib.lock(str(tmp_path), "new", process=0):
    assert json.load(open(tmp_path / workdir_lib.LOCK_NAME))["run_id"] == "new"


_COMPILE_IN_WORKDIR = """
import sys, jax, numpy as np
from experiments import workdir
events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
with workdir.compilation_cache(sys.argv[1], enabled=sys.argv[2] == "on"):
  jax.jit(lambda x: x * 3.0 + 1.0)(np.arange(7.0)).block_until_ready()
print("hit" if "/jax/compilation_cache/cache_hits" in events else "compiled", jax.config.jax_compilation_cache_dir)
"""


def test_compiled_programs_are_kept_in_the_workdir_for_the_next_run(tmp_path):
  """Without a JAX cache folder of the user's, a run keeps its compiled programs in WORKDIR/cache/xla and puts JAX's
  setting back afterwards; the next process on that workdir loads the program instead of compiling it."""
  import subprocess
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # keep this small program too (default: from 1 s)
  outcome = lambda switch: subprocess.run([sys.executable, "-c", _COMPILE_IN_WORKDIR, str(tmp_path), switch], env=env,
                                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  assert outcome("off") == ["compiled", "None"] and not os.path.exists(tmp_path / "cache")
  assert outcome("on") == ["compiled", "None"]
  assert any(name.startswith("jit__lambda") for name in os.listdir(tmp_path / "cache" / "xla"))
  assert outcome("on") == ["hit", "None"]
  assert outcome("off") == ["compiled", "None"]


_SWALLOWS_ITS_EXIT = """
import os, signal, sys, time
from experiments import run, workdir
with workdir.lock(sys.argv[1], "run", process=0):
  signal.signal(signal.SIGTERM, run.sigterm_handler(sys.argv[1], grace_s=0.5))
  open(os.path.join(sys.argv[1], "ready"), "w").close()
  while True:
    try:
      time.sleep(0.01)
    except BaseException:  # as Python does for an exception raised inside a finalizer
      pass
"""


def test_a_sigterm_whose_exit_is_swallowed_still_ends_the_run_and_releases_the_lock(tmp_path):
  import signal
  import subprocess
  process = subprocess.Popen([sys.executable, "-c", _SWALLOWS_ITS_EXIT, str(tmp_path)], cwd=ROOT, text=True,
                             stderr=subprocess.PIPE)
  while not os.path.exists(tmp_path / "ready"):
    assert process.poll() is None, process.communicate()[1][-2000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGTERM and "rerun the same command to resume" in err, err[-2000:]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_sources_without_enough_usable_texts_say_how_many_and_which(tmp_path):
  path = tmp_path / "texts.jsonl"
  path.write_text("\n".join(json.dumps({"text": t}) for t in ["Hello", "今天天气很好", "Two words here."]) + "\n")
  with pytest.raises(ValueError) as error:
    study.load_texts(study.DataSettings(f"jsonl:{path}", num_texts=2, max_words=None, min_chars=1, seed=0))
  message = str(error.value)
  assert "gave 1 usable texts" in message and "2 of its 3 texts have fewer words" in message and "'Hello'" in message


def test_texts_that_give_no_rows_stop_the_run_naming_the_cause(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.extraction.max_tokens = 2  # below every text: each one is skipped
  with pytest.raises(ValueError, match=r"tiny-llama: none of the 48 texts gave a sample row \(text 0: .*max_tokens=2"):
    runner.run(config, str(tmp_path))


def test_third_party_info_lines_stay_below_the_runs_progress():
  import logging as logging_lib
  from absl import logging
  runner.quiet_third_party_info()
  runner.quiet_third_party_info()  # installing twice keeps one filter
  handler = logging.get_absl_handler()  # absl's records and Python loggers' (JAX's) pass through it
  (flt,) = [f for f in handler.filters if isinstance(f, runner._ThirdPartyBelowProgress)]
  record = lambda name, path, level: logging_lib.LogRecord(name, level, path, 1, "msg", (), None)
  orbax = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
  jax_cache = os.path.join(os.sep, "site-packages", "jax", "_src", "compilation_cache.py")
  ours = os.path.join(os.sep, "repo", "experiments", "run.py")
  assert not flt.filter(record("absl", orbax, logging_lib.INFO))
  assert not flt.filter(record("jax._src.compilation_cache", jax_cache, logging_lib.INFO))
  assert flt.filter(record("absl", orbax, logging_lib.WARNING)) and flt.filter(record("absl", ours, logging_lib.INFO))


def test_keep_maps_false_removes_the_map_checkpoints_and_keeps_the_tables(finished_run, tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  config = tiny_config.copy_and_resolve_references()
  config.transfer.keep_maps = False
  runner.run(config, workdir)
  maps = os.path.join(workdir, "cache", "maps")
  assert [n for n in os.listdir(maps) if os.path.isdir(os.path.join(maps, n))] == []
  assert any(n.endswith(".json") for n in os.listdir(maps))  # the units' verified entries stay
  for table in TABLES:
    assert open(os.path.join(workdir, table)).read() == open(os.path.join(finished_run[0] + "-pristine", table)).read()


def test_a_rerun_with_stages_disabled_shows_only_its_own_tables(finished_run, tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  config = tiny_config.copy_and_resolve_references()
  config.next_token.enabled = False
  config.probes.update(tasks=[], token_classes=0)
  drawn_before = set(os.listdir(os.path.join(workdir, "figures")))
  summary = runner.run(config, workdir)
  assert summary["moved_aside"] == ["probes.csv", "next_token.csv"]
  for name in ("probes.csv", "next_token.csv"):
    assert not os.path.exists(os.path.join(workdir, name)) and os.path.exists(os.path.join(workdir, "previous", name))
  report = open(os.path.join(workdir, "report.md")).read()
  assert "Next-token transfer by patching" not in report and "Probe transfer" not in report
  assert "moved to previous/" in report
  stale = drawn_before - set(os.listdir(os.path.join(workdir, "figures")))  # the probes' figure, no longer drawn
  assert stale and stale <= set(os.listdir(os.path.join(workdir, "previous", "figures")))
  assert f"{len(stale)} figures of an earlier run" in report
  for table in ("similarity.csv", "transfer.csv"):
    assert open(os.path.join(workdir, table)).read() == open(os.path.join(finished_run[0] + "-pristine", table)).read()


def test_cache_entries_swapped_between_units_are_named_and_recomputed(finished_run, tiny_config, tmp_path):
  """Each entry verifies its checksum and that it was written for its own name (the unit's inputs): two entries of
  other units swapped on disk are both intact, yet neither may stand for the other."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  folder = os.path.join(workdir, "cache", "similarity")
  planned = sorted(n for n in os.listdir(folder) if "__cka__none__" in n)  # units the tiny config plans
  first, second = (os.path.join(folder, n) for n in planned[:2])
  a, b = open(first).read(), open(second).read()
  with open(first, "w") as f:
    f.write(b)
  with open(second, "w") as f:
    f.write(a)
  with pytest.raises(cache.CorruptEntry, match="belongs to other inputs"):
    cache.read(first)
  runner.run(tiny_config, workdir)
  for entry in (first, second):  # each recomputed for its own unit (a swapped one would still fail to read)
    assert json.load(open(entry))["written_as"] == os.path.basename(entry) and cache.read(entry) is not None
  for table in TABLES:
    assert open(os.path.join(workdir, table)).read() == open(os.path.join(finished_run[0] + "-pristine", table)).read()


def test_neighbour_measures_carry_a_null_a_p_value_and_a_ci(finished_run):
  workdir, summary = finished_run
  for pair in ("tiny-llama|tiny-gemma", "tiny-llama|tiny-gemma@random"):
    for prep in ("none", "standardize"):
      stats = summary["pairs"][pair]["measures"][f"mutual_knn|{prep}"]
      assert 0 <= stats["null_max_q95"] <= 1 and 0 < stats["p_value"] <= 1 and len(stats["max_ci"]) == 2
  report = open(os.path.join(workdir, "report.md")).read()
  section = report.split("### mutual_knn, preprocess=none")[1].split("###")[0]
  assert "| clears null |" in section and ("| yes |" in section or "| no |" in section)


def test_depth_curves_follow_the_table(finished_run):
  """Each scored source layer's best match and its value at the nearest relative depth, as in similarity.csv, with
  subsampling CIs; drawn in the report's "Along depth" section."""
  workdir, summary = finished_run
  rows = [r for r in outputs.read_table(os.path.join(workdir + "-pristine", "similarity.csv"))
          if (r["model_b"], r["measure"], r["preprocess"], r["seed"]) == ("tiny-gemma", "cka_debiased", "none", 0)
          and min(r["layer_a"], r["layer_b"]) >= 1]
  curve = summary["pairs"]["tiny-llama|tiny-gemma"]["measures"]["cka_debiased|none"]["depth_curve"]
  assert curve["layers_a"] == sorted({r["layer_a"] for r in rows})
  for k, layer in enumerate(curve["layers_a"]):
    mine = [r for r in rows if r["layer_a"] == layer]
    best = max(mine, key=lambda r: r["value"])
    assert curve["best"][k] == pytest.approx(best["value"], abs=1e-12)
    assert curve["best_layer_b"][k] == best["layer_b"]
    nearest = min(mine, key=lambda r: (abs(r["depth_b"] - r["depth_a"]), r["layer_b"]))
    assert (curve["matched"][k], curve["matched_layer_b"][k]) == (pytest.approx(nearest["value"], abs=1e-12),
                                                                   nearest["layer_b"])
    assert curve["best_ci"][0][k] <= curve["best_ci"][1][k] and curve["matched_ci"][0][k] <= curve["matched_ci"][1][k]
  assert "mutual_knn|none" in summary["pairs"]["tiny-llama|tiny-gemma"]["measures"] and "depth_curve" in (
      summary["pairs"]["tiny-llama|tiny-gemma"]["measures"]["mutual_knn|none"])
  report = open(os.path.join(workdir, "report.md")).read()
  assert "## Along depth" in report and "figures/depth__cka_debiased__none.png" in report


def test_the_model_cache_keeps_what_fits_by_the_sizes_read_from_the_configs(tiny_config):
  """A model's parameter bytes come from its config (read_info) and equal what loading it takes; with them, loading
  a small model keeps a loaded one that fits beside it (without them the cache assumes the largest size seen)."""
  s = study.Study.from_config(tiny_config)
  infos = {m.name: runner.read_info(m) for m in s.models}
  cache = extraction.ModelCache(s.models, 0)
  for name in infos:
    cache.get(name)
    assert cache.sizes[name] == infos[name].param_bytes > 0
  big, small = sorted(infos, key=lambda n: -infos[n].param_bytes)
  assert infos[big].param_bytes > infos[small].param_bytes
  both = infos[big].param_bytes + infos[small].param_bytes
  guessed = extraction.ModelCache(s.models, both)
  known = extraction.ModelCache(s.models, both, {n: i.param_bytes for n, i in infos.items()})
  for cache in (guessed, known):
    cache.get(big), cache.get(small)
  assert list(guessed.loaded) == [small] and list(known.loaded) == [big, small]
