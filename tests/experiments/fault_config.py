"""A small study over the two tiny checkpoints in the folder `arg`, for the fault-injection tests: one seed, one
measure, maps and a probe task, no next-token step; a run takes seconds of work after start-up."""
from tests.experiments import tiny_config


def get_config(arg):
  c = tiny_config.get_config(arg)
  c.data.num_texts = 24
  c.similarity.update(measures=["cka_debiased", "mutual_knn"], preprocess=["none"])
  c.statistics.update(permutations=19, ci_resamples=20)
  c.baselines.random_init = False
  c.probes.num_examples = 32
  c.next_token.enabled = False
  c.seeds = [0]
  return c
