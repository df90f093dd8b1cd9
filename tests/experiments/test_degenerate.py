"""Degenerate inputs are refused with the model and the cause, or reported undefined: never a number with a p-value."""
import json

import numpy as np
import pytest

from experiments import extraction, run as runner, statistics
from tests.experiments import tiny_config
from xsim.errors import InputError


def test_rows_identical_at_every_layer_are_refused_naming_the_model():
  rows = np.ones((3, 16, 4), np.float32)
  with pytest.raises(InputError, match="tiny-llama: its 16 rows are identical at every layer"):
    extraction.check_spread(rows, "tiny-llama")
  rows[2, 5, 1] = 2.0  # one layer with spread: the others are undefined there, not refused
  extraction.check_spread(rows, "tiny-llama")


def test_a_grid_with_a_non_finite_value_has_no_max_null_or_p_value():
  matrix = np.array([[0.1, 0.2], [np.nan, 0.4]])
  stats = statistics.grid_max(matrix, [0, 1], [0, 1], statistics.StatisticsSettings(min_layer=0),
                              null_max=np.zeros(19), subsample_max=np.zeros(20), n=32)
  assert np.isnan(stats["max"]) and stats["argmax"] is None
  assert stats["p_value"] is None and stats["null_max_q95"] is None and stats["max_ci"] is None


def test_a_run_on_one_text_repeated_stops_naming_the_model(model_root, tmp_path):
  source = tmp_path / "same.jsonl"
  source.write_text("".join(json.dumps({"text": "The same words again and again in every row here."}) + "\n"
                            for _ in range(32)))
  c = tiny_config.get_config(model_root)
  c.data.source, c.data.num_texts = f"jsonl:{source}", 32
  c.seeds = [0]
  with pytest.raises(InputError, match="rows are identical at every layer"):
    runner.run(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "similarity.csv").exists()
