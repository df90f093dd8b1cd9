"""How the headline numbers move with the number of samples: the aligned protocol at n = `arg` texts.

  for n in 500 1000 2000 5000 10000; do
    python -m experiments.run --config=experiments/configs/sweep_samples.py:$n --workdir runs/samples_$n
  done
Activations are cached by texts, so each n extracts only its own texts once.
"""
from experiments.configs import aligned


def get_config(arg=None):
  c = aligned.get_config()
  c.data.num_texts = int(arg) if arg else 1000
  # The token probe needs several examples of each class: 500 classes from 5,000 texts, fewer below that.
  c.probes.token_classes = min(500, c.data.num_texts // 10)
  return c
