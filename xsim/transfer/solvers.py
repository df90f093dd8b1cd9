"""The map solvers as records: each holds its own options only, so an option that does not apply is refused.

  transfer.solver("ridge", penalties=[0.1, 1.0])   # from a config's method name -> Ridge(penalties=(0.1, 1.0))
  transfer.Adam(steps=500, rank=64)                # or built directly

fit_linear_maps takes one record; `dataclasses.asdict(record)` names the method and every option (a content key).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

# Per-row penalties (ridge lambda = penalty * n_train; see ridge.fit_ridge). Ridge's path is nearly free, so it
# scans finely; each optax penalty trains another copy of every model, so that grid is short.
RIDGE_PENALTIES = tuple(float(p) for p in np.logspace(-5, 3, 17))
OPTAX_PENALTIES = (1e-4, 1e-2, 1.0)


def _penalty_grid(penalties, positive: bool) -> tuple[float, ...]:
  """A penalty grid as a tuple of floats; refuses an empty grid and negative (positive=True: non-positive) values."""
  grid = tuple(float(p) for p in penalties)
  if not grid or min(grid) < 0 or (positive and min(grid) <= 0):
    raise ValueError(f"penalties={grid} must be a non-empty sequence of non-negative values (positive for ridge, "
                     "whose path divides by e + lambda).")
  return grid


@dataclasses.dataclass(frozen=True, kw_only=True)
class Solver:
  """Options every solver takes.

  standardize: scale each layer to unit training-row std (default). False only centres it, which with a fixed tiny
    ridge penalty reproduces the published study's untuned ridge on raw activations.
  chunk_size: target layers fit together per chunk (its memory: maps.py); None for all targets of a source layer.
    With a mesh it must be a multiple of the mesh size.
  """
  standardize: bool = True
  chunk_size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Ridge(Solver):
  """Closed-form ridge (ridge.py) over a penalty grid, chosen per pair on the validation rows (per-row units)."""
  penalties: tuple[float, ...] = RIDGE_PENALTIES
  method: str = dataclasses.field(default="ridge", init=False)

  def __post_init__(self):
    object.__setattr__(self, "penalties", _penalty_grid(self.penalties, positive=True))


@dataclasses.dataclass(frozen=True)
class Procrustes(Solver):
  """Scaled orthogonal maps (procrustes.py); needs da <= db."""
  method: str = dataclasses.field(default="procrustes", init=False)


@dataclasses.dataclass(frozen=True)
class Optax(Solver):
  """Affine maps trained with optax (train.py: minibatches, early stopping on the validation rows), seeded by the
  fit's seed; use Adam or AdamW.

  penalties: grid trained side by side, chosen per pair on the validation rows.
  rank: None for a full weight, else W = up @ down of this rank.
  learning_rate, steps, batch_size, eval_every, patience: train.TrainSettings.
  """
  penalties: tuple[float, ...] = OPTAX_PENALTIES
  rank: Optional[int] = None
  learning_rate: float = 1e-2
  steps: int = 1000
  batch_size: int = 1024
  eval_every: int = 25
  patience: int = 8

  def __post_init__(self):
    object.__setattr__(self, "penalties", _penalty_grid(self.penalties, positive=False))
    for name in ("steps", "batch_size", "eval_every", "patience"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")


@dataclasses.dataclass(frozen=True)
class Adam(Optax):
  """Adam with penalty * sum(W^2) / db in the loss (the minimizer of ridge with the same per-row penalty)."""
  method: str = dataclasses.field(default="adam", init=False)


@dataclasses.dataclass(frozen=True)
class AdamW(Optax):
  """AdamW with decoupled weight decay at rate `penalty`."""
  method: str = dataclasses.field(default="adamw", init=False)


SOLVERS = {kind.method: kind for kind in (Adam, AdamW, Ridge, Procrustes)}
METHODS = tuple(SOLVERS)


def solver(method: str, /, **options) -> Solver:
  """The record of a method name (one of METHODS) and its options, e.g. solver("adam", steps=500)."""
  if method not in SOLVERS:
    raise ValueError(f"method={method!r} is not one of {METHODS}.")
  kind = SOLVERS[method]
  names = [f.name for f in dataclasses.fields(kind) if f.init]
  unknown = sorted(set(options) - set(names))
  if unknown:
    raise ValueError(f"{kind.__name__} (method={method!r}) takes no option {unknown[0]!r}; its options are "
                     f"{', '.join(names)}.")
  return kind(**options)
