"""Registry of binary classification tasks for probes: `load_task("cities", num_examples=1000, seed=0)`.

Offline tasks are generated from tables shipped with xsim; the others need Hugging Face `datasets` and the
Hub (or its cache) and raise DataUnavailableError otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from xsim.data import hf_tasks, statements
from xsim.data.task import Task

TASKS: dict[str, Callable[..., Task]] = {
    "cities": statements.cities_task,
    "capitals": statements.capitals_task,
    "larger_than": functools.partial(statements.comparison_task, "larger"),
    "smaller_than": functools.partial(statements.comparison_task, "smaller"),
    "sst2": hf_tasks.sst2_task,
    "ag_news_sports": hf_tasks.ag_news_sports_task,
    "toxigen": hf_tasks.toxigen_task,
}
OFFLINE_TASKS = ("cities", "capitals", "larger_than", "smaller_than")


def load_task(name: str, num_examples: int | None = None, seed: int = 0, **options: Any) -> Task:
  """The task `name` with num_examples examples (all when None), balanced and shuffled with `seed`.

  options go to the task's loader (e.g. split="validation" for sst2, threshold=3.0 for toxigen,
  balance=False for the source's class mix, low/high for larger_than).
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)} (offline: {list(OFFLINE_TASKS)}).")
  return TASKS[name](num_examples=num_examples, seed=seed, **options)


__all__ = ["OFFLINE_TASKS", "TASKS", "Task", "load_task"]
