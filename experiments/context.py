"""What every stage of a run reads: the study's settings, the activation stores, the texts and tasks, the workdir,
the mesh and the models; built once by the runner after extraction."""
from __future__ import annotations

import dataclasses
from typing import Optional

from experiments import extraction
from experiments.study import Pair, Study


@dataclasses.dataclass(eq=False)
class Context:
  """A run's inputs for its stages. pair_data keeps the last pair's arrays for that pair's next unit; layout keeps
  every pair's layout (tabulated by every stage)."""
  study: Study
  stores: extraction.Stores
  texts: list
  tasks: dict
  workdir: str
  mesh: object = None
  models: Optional[extraction.ModelCache] = None
  _data: tuple = (None, None)
  _layouts: dict = dataclasses.field(default_factory=dict)

  @property
  def stats(self):
    """The statistics settings (experiments/statistics.py), the same for every stage."""
    return self.study.statistics

  def settings(self, stage: str):
    """A stage's settings, by its name."""
    return self.study.stages[stage]

  def pair_data(self, pair: Pair, seed: int) -> extraction.PairData:
    key = (pair, self.stores.get(pair.b, seed).path)  # a real pair's arrays are the same for every seed
    if self._data[0] != key:
      self._data = (key, extraction.pair_data(self.stores, pair, seed))
    return self._data[1]

  def layout(self, pair: Pair, seed: int) -> extraction.PairLayout:
    key = (pair, self.stores.get(pair.b, seed).path)
    if key not in self._layouts:
      self._layouts[key] = extraction.pair_layout(self.stores, pair, seed)
    return self._layouts[key]

  def identity(self, pair: Pair, seed: int) -> tuple:
    """What a pair's activations are: its two stores' manifests (models, texts, extraction settings)."""
    return self.stores.get(pair.a, seed).manifest, self.stores.get(pair.b, seed).manifest
