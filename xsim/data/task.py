"""The binary classification task a probe is trained and scored on, and seeded (class-balanced) example sampling."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on the labels array is elementwise
class Task:
  """texts: n strings; labels: [n] int64 in {0, 1} (1 = the positive class the description names)."""
  texts: tuple[str, ...]
  labels: np.ndarray
  name: str
  description: str

  def __post_init__(self):
    if isinstance(self.texts, str):
      raise ValueError(f"task {self.name!r}: texts must be a sequence of str, got a single string.")
    texts = tuple(self.texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
      raise ValueError(f"task {self.name!r}: texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str.")
    labels = np.asarray(self.labels)
    if labels.ndim != 1 or labels.shape[0] != len(texts):
      raise ValueError(f"task {self.name!r}: labels must have shape [{len(texts)}] (one per text), "
                       f"got {labels.shape}.")
    if labels.size and not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
      raise ValueError(f"task {self.name!r}: labels must be integers 0/1, got dtype {labels.dtype}.")
    if not np.isin(labels, (0, 1)).all():
      raise ValueError(f"task {self.name!r}: labels must be 0 or 1, got values {np.unique(labels)}.")
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    object.__setattr__(self, "texts", texts)
    object.__setattr__(self, "labels", labels)

  def __len__(self) -> int:
    return len(self.texts)


def sample_examples(texts: Sequence[str], labels: Sequence[int], num_examples: int | None, seed: int,
              balance: bool = True, source: str = "task") -> tuple[list[str], np.ndarray]:
  """Seeded sample of examples (texts, labels): [k] texts and [k] labels in a seeded random order.

  balance=True: equal counts of 0 and 1 (num_examples // 2 negatives and the rest positives, so the
  classes differ by at most one); num_examples=None takes as many of each as the smaller class has.
  balance=False: a uniform sample (all examples when num_examples is None), keeping the source's class mix.
  """
  labels = np.asarray(labels, dtype=np.int64)
  if labels.shape != (len(texts),):
    raise ValueError(f"{source}: {len(texts)} texts but labels of shape {labels.shape}.")
  if num_examples is not None and (isinstance(num_examples, bool) or not isinstance(num_examples, int)
                                   or num_examples < 2):
    raise ValueError(f"num_examples={num_examples!r} must be an int >= 2, or None for all available.")
  rng = np.random.default_rng(seed)
  if balance:
    negatives = rng.permutation(np.flatnonzero(labels == 0))
    positives = rng.permutation(np.flatnonzero(labels == 1))
    if num_examples is None:
      num_neg = num_pos = min(len(negatives), len(positives))
    else:
      num_neg, num_pos = num_examples // 2, num_examples - num_examples // 2
    if num_neg > len(negatives) or num_pos > len(positives) or num_neg + num_pos == 0:
      raise ValueError(
          f"{source} has {len(negatives)} negatives and {len(positives)} positives, too few for a balanced "
          f"set of {num_neg} + {num_pos}; ask for at most {2 * min(len(negatives), len(positives))} "
          "examples, or pass balance=False.")
    chosen = np.concatenate([negatives[:num_neg], positives[:num_pos]])
  else:
    num = len(texts) if num_examples is None else num_examples
    if num > len(texts):
      raise ValueError(f"{source} has {len(texts)} examples, fewer than num_examples={num}.")
    chosen = rng.permutation(len(texts))[:num]
  chosen = rng.permutation(chosen)
  return [texts[i] for i in chosen], labels[chosen]
