"""Linear transfer between two models' activations: maps for every layer pair, their floors, probes and scores.

  fit = transfer.fit_linear_maps(source, target, transfer.Adam())   # source [La, n, da], target [Lb, n, db]
  fit.r2                                                             # [La, Lb] held-out R^2
  fit.predict(i, j, x)                                               # source layer i -> target layer j
  fit.map_direction(i, j, v)                                         # a direction (steering vector) i -> j

Modules: splits (row split, standardization), ridge / procrustes / train (the three ways to fit a chunk of pairs),
solvers (their options as records: what the sweep is told to fit), maps (the sweep driver), controls (shuffled-pair
and mean floors), probes (logistic and token probes, probe-transfer table), metrics (R^2, next-token scores of
patched logits), steering (steering vectors, their null directions and the mapped vector's efficacy), checkpoint
(verified per-chunk checkpoints); intervals come from xsim.resampling. Every function takes and returns arrays;
models run in xsim.activations.
"""
from xsim.transfer.controls import fit_shuffled_maps, mean_predictor_r2
from xsim.transfer.maps import LinearMapFit, fit_linear_maps
from xsim.transfer.metrics import (kl_divergence, next_token_scores, patching_scores, r2_score, top1_agreement,
                                   topk_accuracy)
from xsim.transfer.probes import (ProbeFit, ProbeTraining, ProbeTransfer, fit_logistic_probes,
                                  fit_token_probes, probe_transfer)
from xsim.transfer.ridge import ridge_path, ridge_weights
from xsim.transfer.solvers import METHODS, Adam, AdamW, Procrustes, Ridge, Solver, solver
from xsim.transfer.splits import Split, make_split
from xsim.transfer.steering import (Efficacy, activation_directions, mean_difference, probe_direction,
                                    random_directions, shuffled_ridge_directions, steering_efficacy, with_norm)

__all__ = [
    "METHODS", "Adam", "AdamW", "Efficacy", "LinearMapFit", "ProbeFit", "ProbeTraining", "ProbeTransfer",
    "Procrustes", "Ridge", "Solver", "Split", "activation_directions", "fit_linear_maps", "fit_logistic_probes",
    "fit_shuffled_maps", "fit_token_probes", "kl_divergence", "make_split", "mean_difference", "mean_predictor_r2",
    "next_token_scores", "patching_scores", "probe_direction", "probe_transfer", "r2_score", "random_directions",
    "ridge_path", "ridge_weights", "shuffled_ridge_directions", "solver", "steering_efficacy", "top1_agreement",
    "topk_accuracy", "with_norm",
]
