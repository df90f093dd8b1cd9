"""A demo-shaped config over two tiny checkpoints (see tests/activations/tiny.py) in the folder `arg`."""
import os

from experiments.configs import demo


def get_config(arg):
  c = demo.get_config()
  c.models = [dict(name="tiny-llama", path=os.path.join(arg, "llama"), dtype="float32", family="llama"),
              dict(name="tiny-gemma", path=os.path.join(arg, "gemma"), dtype="float32", family="gemma")]
  c.data.num_texts = 48
  c.data.max_words = 20
  c.extraction.batch_size = 8
  c.statistics.permutations = 19
  c.statistics.ci_resamples = 20
  c.probes.num_examples = 64
  c.next_token.num_samples = 32
  c.probes.update(token_classes=5, token_samples=48)
  c.seeds = [0, 1]
  c.steering.enabled = False  # tests/experiments/test_steering_stage.py runs it
  return c
