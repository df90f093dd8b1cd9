"""Bad configs fail before any heavy work, with every problem listed in one error."""
import pytest

from experiments.configs import aligned, demo, seed_protocol, sweep_models, sweep_samples
from experiments.validate import override_error, validate_config, validate_depths


@pytest.mark.parametrize("config", [demo.get_config(), demo.get_config("qwen"), seed_protocol.get_config(),
                                    aligned.get_config(), sweep_models.get_config("2000"),
                                    sweep_samples.get_config("500")])
def test_shipped_configs_validate(config):
  validate_config(config)


def test_every_problem_is_listed():
  c = demo.get_config()
  c.unlock()
  c.surprise = 1
  c.models = [dict(name="a", path="./no/such/model"), dict(name="a", path="smollm2-135m", dtype="float8")]
  c.extraction.pooling = "max"
  c.extraction.layers = "depths:x"
  c.similarity.measures = ["cka", "nonsense"]
  c.similarity.preprocess = ["whiten"]
  c.probes.tasks = ["mystery"]
  c.data.num_texts = 3
  c.transfer.val_fraction = 0.9
  c.seeds = [0, 0]
  c.statistics.min_layer = -1
  c.statistics.ci_resamples = 5
  c.probes.token_classes = 200  # more classes than 384 samples can train
  c.steering.update(concepts=("weddings", "romance"), scales=(0.0, 1.0), num_random=4, num_shuffled=4)
  with pytest.raises(ValueError) as error:
    validate_config(c)
  message = str(error.value)
  for fragment in ("unknown top-level key 'surprise'", "names must be unique", "'./no/such/model'",
                   "dtype 'float8'", "pooling 'max'", "'depths:x'", "'nonsense'", "'whiten'", "'mystery'",
                   "num_texts=3", "fractions", "seeds must be a non-empty list of distinct ints",
                   "min_layer=-1", "ci_resamples", "token_classes=200", "steering concept 'romance'",
                   "steering.scales=[0.0, 1.0]", "num_random + num_shuffled >= 19 null directions"):
    assert fragment in message, fragment


def test_pairs_must_name_listed_models():
  c = seed_protocol.get_config()
  c.pairs = [["llama-3.2-1b", "gpt-5"]]
  with pytest.raises(ValueError, match="gpt-5"):
    validate_config(c)


def test_names_that_would_leave_the_workdir_are_refused():
  c = demo.get_config()
  c.models[0]["name"] = "../../../escaped"
  c.models[1]["name"] = ".hidden"
  with pytest.raises(ValueError) as error:
    validate_config(c)
  assert "'../../../escaped' cannot name files" in str(error.value)
  assert "'.hidden' cannot name files" in str(error.value)


def test_hub_ids_follow_load_model():
  c = demo.get_config()
  c.models[1]["path"] = "gpt2"  # a hub id load_model accepts; the landed rule asked for 'org/name'
  validate_config(c)


def test_depth_dependent_settings_are_checked_against_each_model():
  c = seed_protocol.get_config()
  c.statistics.min_layer = 40
  with pytest.raises(ValueError) as error:
    validate_depths(c, {"llama-3.2-1b": 16, "gemma-2-2b": 26})
  message = str(error.value)
  assert "min_layer=40 leaves no layer of llama-3.2-1b" in message and "gemma-2-2b" in message
  c = demo.get_config()
  c.extraction.layers = "[0, 3, 31]"  # a layer list given on the command line
  with pytest.raises(ValueError, match=r"layers \[31\] are beyond smollm2-135m's hidden states 0..30"):
    validate_depths(c, {"smollm2-135m": 30, "gemma3-270m": 18})
  c.extraction.layers = "[0, 3, 17]"
  validate_depths(c, {"smollm2-135m": 30, "gemma3-270m": 18})


def test_unknown_overrides_list_the_valid_keys():
  c = demo.get_config()
  assert "has no key 'foo' (valid: ['baselines', 'data'" in override_error(c, "foo")
  assert "extraction has no key 'layerz'" in override_error(c, "extraction.layerz")
  assert "models has entries 0..1, not '3'" in override_error(c, "models[3].name")
  assert override_error(c, "models[1].dtype") is None and override_error(c, "next_token.enabled") is None


def test_command_line_overrides_reach_validation_before_any_work(tmp_path):
  """config_flags overrides (list items included) and the ':arg' form, through the real entry point."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=experiments/configs/demo.py:qwen",
       "--config.models.0.dtype=float8", "--config.models[3].path=./nowhere", "--config.data.num_texts=3",
       f"--workdir={tmp_path / 'run'}"], cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr  # a config error: its message, exit code 2
  for fragment in ("Invalid config", "model smollm2-135m: dtype 'float8'",
                   "model qwen-coder-1.5b: No model directory or GGUF file at './nowhere'", "num_texts=3",
                   "probes.token_classes=20 needs at least 2 x token_classes samples, but data.num_texts=3"):
    assert fragment in result.stderr, fragment
  assert not os.path.exists(tmp_path / "run" / "activations")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=experiments/configs/demo.py", "--config.foo=1",
       f"--workdir={tmp_path / 'run'}"], cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "--config.foo: the config has no key 'foo' (valid: [" in result.stderr
  assert result.returncode == 2 and "Traceback" not in result.stderr
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=experiments/configs/demo.py", "--config.data.num_texts=abc",
       f"--workdir={tmp_path / 'run'}"], cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "Invalid command line: flag --config.data.num_texts=abc" in result.stderr


def test_types_ranges_and_cross_field_rules_are_checked_before_any_work():
  c = demo.get_config()
  c.data = dict(c.data, num_texts="384")  # a string where an int belongs, as a config file may give it
  c.seeds = [0, -1]
  c.pairs = [["smollm2-135m", "gemma3-270m"], ["smollm2-135m", "gemma3-270m"]]
  c.similarity.knn_k = 500
  c.models[0]["name"] = "m" * 81
  c.transfer.penalties = [-1.0]
  with pytest.raises(ValueError) as error:
    validate_config(c)
  message = str(error.value)
  for fragment in ("data.num_texts='384' must be an int", "seeds must be a non-empty list of distinct ints in 0..",
                   "more than once", "at most 80 characters", "penalties=(-1.0,)"):
    assert fragment in message, fragment
  c = demo.get_config()
  c.similarity.knn_k = 500
  with pytest.raises(ValueError, match=r"similarity.knn_k=500 must be below data.num_texts=384"):
    validate_config(c)
