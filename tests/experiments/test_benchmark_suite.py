"""The benchmark suite: headline figures picked from each script's JSON, targets checked, failures recorded."""
import json
import os

import pytest

from experiments.benchmarks import suite


def _one(headlines, workload_start):
  (h,) = [h for h in headlines if h.workload.startswith(workload_start)]
  return h


def test_forward_and_extract_headlines():
  forward = {"xsim": {"tokens_per_s": 900.0, "fraction_of_peak": None}, "hf": {"tokens_per_s": 600.0},
             "xsim_over_hf": {"median_wall": 1.5}}
  (h,) = suite.forward_headlines(forward, "tiny", "cpu")
  assert (h.xsim, h.alternative, h.ratio, h.target, h.met) == (900.0, 600.0, 1.5, (">=", 1.0), True)
  forward["xsim"]["fraction_of_peak"], forward["hf"]["fraction_of_peak"] = 0.4, 0.3
  rows = suite.forward_headlines(forward, "tiny", "gpu")
  assert rows[0].target is None and rows[1].xsim == 0.4 and rows[1].alternative == 0.3  # no forward target on GPU
  forward["gemm_ceiling"] = dict(xla_s=1.5, torch_s=1.2, xla_over_torch=0.8)
  gemms = _one(suite.forward_headlines(forward, "tiny", "cpu"), "forward: its weight matmuls")
  assert (gemms.xsim, gemms.alternative, gemms.ratio, gemms.target) == (1.5, 1.2, 0.8, None)
  extract = {"xsim_tokens_per_s": 1500.0, "hf_tokens_per_s": 1000.0, "xsim_over_hf": 1.5}
  assert suite.extract_headlines(extract, "s", "cpu")[0].met is False  # >= 1.8 on CPU
  assert suite.extract_headlines(extract, "s", "gpu")[0].met is True  # >= 1.2 on GPU


def test_cka_headlines_pick_each_alternative_and_the_gpu_fraction():
  cka = {"rows": [dict(workload="grid", xsim_s=2.0, alternative="per-pair loop (NumPy)", alternative_s=100.0),
                  dict(workload="grid", xsim_s=2.0, alternative="pytorch-cka 1.1.3", alternative_s=3.0),
                  dict(workload="null x50", xsim_s=1.0, alternative="calibrated-similarity", alternative_s=9.0)],
         "throughput": dict(flops_per_s=40e12, matmul_flops_per_s=50e12, fraction_of_matmul=0.8),
         "precision": dict(xsim_vs_highest=1e-6, default_vs_highest=9e-4)}
  rows = suite.cka_headlines(cka, "s", "cpu")
  loop, peer = _one(rows, "CKA grid vs per-pair"), _one(rows, "CKA grid vs pytorch")
  assert (loop.ratio, loop.target, loop.met) == (50.0, (">=", 35.0), True)
  assert (peer.ratio, peer.met) == (1.5, False)
  assert _one(rows, "CKA null").target is None
  assert _one(rows, "CKA grid: fraction").target is None  # the fraction-of-peak target is the GPU's
  fraction = _one(suite.cka_headlines(cka, "s", "gpu"), "CKA grid: fraction")
  assert (fraction.xsim, fraction.alternative, fraction.ratio, fraction.met) == (40.0, 50.0, 0.8, True)
  precision = _one(rows, "CKA precision")
  assert (precision.xsim, precision.alternative, precision.met) == (1e-6, 9e-4, None)


def test_neighbors_transfer_and_store_headlines():
  neighbors = {"rows": [dict(workload="mutual_knn grid", xsim_s=1.0, alternative="per-pair loop", alternative_s=23.0),
                        dict(workload="mutual_knn null x100", xsim_s=1.0, alternative="generic permutation_null",
                             alternative_s=5.0)]}
  grid, null = suite.neighbors_headlines(neighbors, "s", "cpu")
  assert (grid.ratio, grid.met, null.target) == (23.0, True, None)
  transfer = {"rows": [dict(xsim="xsim optax, chunk 6", xsim_s=2.0, alternative="loop, rows step", alternative_s=3.0),
                       dict(xsim="xsim optax, chunk 6", xsim_s=2.0, alternative="loop, statistics step",
                            alternative_s=5.0)]}
  rows_step, statistics_step = suite.transfer_headlines(transfer, "s", "cpu")
  assert (rows_step.ratio, rows_step.met, statistics_step.target) == (1.5, False, None)
  assert suite.transfer_headlines(transfer, "s", "gpu")[0].target is None
  op = lambda x, n: {"mb": 1.0, "xsim": {"mb_per_s": x}, "npy": {"mb_per_s": n}, "ratio": x / n}
  store = {"results": [{"dtype": "float32", "ops": {"write": op(100.0, 200.0), "full": op(300.0, 100.0),
                                                    "check": {"xsim": {"mb_per_s": 5.0}}}}]}
  write, full = suite.store_headlines(store, "s", "cpu")
  assert (write.ratio, full.ratio) == (0.5, 3.0)


def test_load_and_long_text_headlines():
  side = lambda name, peak: dict(model="m", side=name, baseline=100, peak=peak, param_bytes=1000, wall_s=2.0)
  memory, wall = suite.load_headlines({"rows": [side("xsim", 1100), side("transformers", 2100)]}, "s", "cpu")
  assert (memory.xsim, memory.alternative, memory.ratio, wall.ratio) == (1.0, 2.0, 0.5, 1.0)
  long_text = {"sides": {"hf": dict(peak_rss_mib=1000.0, seconds=2.0), "xsim": dict(peak_rss_mib=1400.0, seconds=2.4)},
               "xsim_over_hf": dict(peak_rss_mib=1.4, seconds=1.2)}
  peak, time = suite.long_text_headlines(long_text, "s", "cpu")
  assert (peak.met, time.met) == (True, False)  # <= 1.5x memory, <= 1.0x time
  long_text["sides"]["hf"]["device_peak_mib"], long_text["sides"]["xsim"]["device_peak_mib"] = 500.0, 250.0
  long_text["xsim_over_hf"]["device_peak_mib"] = 0.5
  peak, time = suite.long_text_headlines(long_text, "s", "gpu")
  assert (peak.workload, peak.xsim, peak.target, time.target) == ("long texts: device peak memory", 250.0, None, None)


def test_sweep_headlines_check_shares_and_equal_tables():
  row = lambda devices, processes, seconds, shares, diff: dict(
      devices=devices, processes=processes, seconds=seconds, speedup=10.0 / seconds, max_abs_difference=diff,
      share_of_units={str(p): s for p, s in enumerate(shares)})
  sweep = {"args": {"protocol": "demo"}, "rows": [row(1, 1, 10.0, [1.0], 0.0), row(8, 1, 5.0, [1.0], 3e-7),
                                                  row(1, 2, 6.0, [0.6, 0.4], 2e-6)]}
  rows = suite.sweep_headlines(sweep, "s", "cpu")
  share = _one(rows, "sweep: largest share")
  assert (share.xsim, share.alternative, share.met) == (0.6, 0.5, False)  # 0.6 > 1.1 / 2
  equal = [h for h in rows if h.workload.startswith("sweep: tables")]
  assert [h.met for h in equal] == [True, True]
  assert _one(rows, "sweep: 8 device(s)").ratio == 2.0
  seed = {"args": {"protocol": "seed"}, "rows": [row(1, 1, 150.0, [1.0], 0.0)]}
  (stage,) = suite.sweep_headlines(seed, "s", "gpu")
  assert (stage.xsim, stage.target, stage.met) == (150.0, ("<=", 180.0), True)


def test_steering_headlines():
  steering = {"args": {"tolerance": 1e-3}, "interventions": 36, "prompts": 4, "max_abs_difference": 2e-5,
              "sides": {"xsim": dict(seconds=2.0), "hf": dict(seconds=3.0)}, "hf_over_xsim": 1.5}
  time, agreement = suite.steering_headlines(steering, "s", "cpu")
  assert (time.workload, time.xsim, time.alternative, time.ratio, time.target) == (
      "steering: token log mass, 36 interventions x 4 prompts", 2.0, 3.0, 1.5, None)
  assert (agreement.xsim, agreement.target, agreement.met) == (2e-5, ("<=", 1e-3), True)


def test_every_benchmark_has_sizes_and_a_headline_function():
  for platform in ("cpu", "gpu"):
    for smoke in (False, True):
      names = {run.name for run in suite.runs(platform, smoke)}
      assert names == set(suite.NAMES) == set(suite.HEADLINES), (platform, smoke)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_every_run_parses_with_its_script(platform):
  """Each run's arguments at full and smoke sizes are ones its script accepts: the full gpu sizes run nowhere
  before a device is lent, so a typo there would cost that device's first try."""
  import importlib
  for smoke in (False, True):
    for run in suite.runs(platform, smoke):
      script = importlib.import_module(f"experiments.benchmarks.{run.name}")
      args = script.parse_args([*run.argv, "--out", "x.json"])
      assert args.out == "x.json", (run.name, run.size)
      if "--platform" in run.argv:
        assert args.platform == platform, (run.name, run.size)


@pytest.mark.parametrize("shape", ["llama-3.2-1b", "qwen2.5-1.5b", "smollm2-135m"])
def test_gpu_shapes_are_models_xsim_reads(shape, tmp_path):
  """The real-shape random checkpoints of the GPU runs: xsim reads their configs (no weights written here)."""
  import transformers
  from experiments.benchmarks.forward import SHAPES
  from xsim.models import read_config
  config_class, arguments = SHAPES[shape]
  getattr(transformers, config_class)(**arguments).save_pretrained(tmp_path)
  config = read_config(str(tmp_path))
  assert (config.num_layers, config.hidden_size) == (arguments["num_hidden_layers"], arguments["hidden_size"])


@pytest.mark.parametrize("shape", ["llama-3.2-1b", "smollm2-135m"])
def test_gemm_ceiling_times_every_weight_matmul_of_the_forward(shape, tmp_path):
  """projection_gemms lists the matmuls whose FLOPs are the config's count without attention scores."""
  import transformers
  from experiments.benchmarks.forward import SHAPES, projection_gemms
  from xsim.models import read_config
  config_class, arguments = SHAPES[shape]
  getattr(transformers, config_class)(**arguments).save_pretrained(tmp_path)
  config = read_config(str(tmp_path))
  flops = sum(2 * count * k * n for count, k, n in projection_gemms(config))
  scores = config.num_layers * 2 * config.num_heads * config.head_dim * 128  # 2 x (q.k and p.v) at 128 tokens
  assert flops == config.flops_per_token(128) - scores


def test_a_failing_run_is_recorded_with_its_output(tmp_path):
  for sub in ("raw", "logs"):
    os.makedirs(tmp_path / sub)
  record = suite.run_one(suite.Run("store", "bad size", ("--rows", "0")), 0, str(tmp_path), "cpu", 120)
  assert record["status"] == "failed" and record["error"] == "exit code 2"
  assert "--rows" in record["output_tail"]
  table = suite.markdown(dict(machine=dict(platform="cpu", cpu_count=2, date="d", commit="c",
                                           versions=dict(jax="j", torch="t", transformers="tr")),
                              smoke=False, seconds=1.0, load_average=dict(before=[1.0], after=[1.0]), runs=[record]))
  assert "| store | bad size | failed: exit code 2" in table


def test_only_runs_one_benchmark_end_to_end(tmp_path):
  result = suite.main(["--only", "store", "--smoke", "--out_dir", str(tmp_path)])
  (record,) = result["runs"]
  assert record["status"] == "ok", record.get("output_tail")
  assert [h["workload"] for h in record["headlines"]] == ["store float32: write", "store float32: full"]
  assert all(h["xsim"] > 0 and h["alternative"] > 0 for h in record["headlines"])
  with open(tmp_path / "benchmarks.json") as f:
    assert json.load(f)["machine"]["cpu_count"] == os.cpu_count()
  assert "| store | store float32: write; smoke |" in (tmp_path / "benchmarks.md").read_text()


def test_rehearsal_takes_the_gpu_runs_to_the_cpu(monkeypatch):
  from experiments.benchmarks import devices
  args = suite.parse_args(["--rehearse"])
  assert (args.platform, args.smoke, args.rehearse) == ("gpu", True, True)
  env = suite.child_env("gpu", rehearse=True)
  assert (env[devices.REHEARSAL], env["JAX_PLATFORMS"]) == ("1", "cpu")
  assert devices.REHEARSAL not in suite.child_env("gpu") and "XLA_PYTHON_CLIENT_MEM_FRACTION" in suite.child_env("gpu")
  monkeypatch.delenv(devices.REHEARSAL, raising=False)
  assert (devices.jax_platform("gpu"), devices.torch_device("gpu"), devices.jax_platform("cpu")) == (
      "cuda", "cuda", "cpu")
  monkeypatch.setenv(devices.REHEARSAL, "1")
  assert (devices.jax_platform("gpu"), devices.torch_device("gpu"), devices.on_gpu("gpu")) == ("cpu", "cpu", False)


@pytest.mark.slow
def test_the_gpu_only_runs_pass_their_rehearsal_on_the_cpu(tmp_path):
  """forward, extract and long_text at the gpu platform's smoke sizes (bfloat16, the trained tokenizer, fused
  attention) run end to end on the CPU: what launch/gpu_benchmarks.sh --rehearse checks before a device is lent."""
  result = suite.main(["--rehearse", "--only", "forward", "extract", "long_text", "--out_dir", str(tmp_path)])
  assert [(r["name"], r["status"]) for r in result["runs"]] == [
      ("forward", "ok"), ("extract", "ok"), ("long_text", "ok")], [r.get("output_tail") for r in result["runs"]]
  forward, extract, long_text = (r["figures"] for r in result["runs"])
  assert (forward["platform"], forward["dtype"]) == ("gpu", "bfloat16")
  assert (extract["args"]["dtype"], extract["args"]["tokenizer"]) == ("bfloat16", "trained")
  assert (long_text["args"]["dtype"], long_text["args"]["attention"]) == ("bfloat16", "fused")
  assert "(gpu, rehearsed on the CPU)" in (tmp_path / "benchmarks.md").read_text()
