"""Floors for map scores: maps fit on shuffled pairs, and the training-mean predictor.

A map's R^2 means little without them: with d close to n a map can fit noise, and an untuned map can score
below the mean predictor (the published study's ridge did, STUDY.md point 5).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from jax.sharding import Mesh

from xsim.transfer import maps, metrics, solvers, splits


def fit_shuffled_maps(source, target, solver: solvers.Solver, *, pairs: Union[str, Sequence] = "all",
                      val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                      mesh: Optional[Mesh] = None, checkpoint_dir: Optional[str] = None) -> maps.LinearMapFit:
  """Maps fit exactly like `maps.fit_linear_maps` with the same arguments, after permuting the target's rows (one
  permutation for all target layers), so source and target rows no longer describe the same input. Their held-out
  R^2 is the chance level (about 0 or below) of the real maps.

  Args:
    source: [La, n, da]; target: [Lb, n, db].
    solver, pairs, val_fraction, test_fraction, mesh, checkpoint_dir: as for fit_linear_maps.
    seed: seeds the split and the fit, as for the real maps; the row permutation is drawn from it too.

  Returns:
    LinearMapFit of the shuffled pairing.
  """
  splits.check_layers(target, "target")
  permutation = np.random.default_rng([seed, 1]).permutation(target.shape[1])
  return maps.fit_linear_maps(source, target[:, permutation], solver, pairs=pairs, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed, mesh=mesh, checkpoint_dir=checkpoint_dir)


def mean_predictor_r2(target, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0):
  """Held-out R^2 of predicting each target layer's training-row mean, on the split fit_linear_maps uses.

  Args:
    target: [Lb, n, db].
    val_fraction, test_fraction, seed: as for fit_linear_maps, so the test rows are the same.

  Returns:
    [Lb] R^2, at most 0 (the test rows' own mean would score exactly 0). One pass over the test rows, so it
    takes no mesh.
  """
  splits.check_layers(target, "target")
  split = splits.make_split(target.shape[1], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
  mean, _ = splits.layer_moments(target, split.train, "target")
  test = np.asarray(target[:, split.test], np.float32)
  return np.asarray(metrics.r2_score(test, np.broadcast_to(mean[:, None, :], test.shape)))
