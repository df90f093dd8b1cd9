"""Similarity of two models' activations: CKA family, neighbour alignment, baselines and statistics.

Every measure takes activation arrays (samples on axis -2) and the same `preprocess` options
(preprocess.py); all are pure JAX functions, float32 by default with full-precision matmuls.
`similarity_grid` computes any of them for every layer pair in one compiled call.
"""
from xsim.resampling import p_value, permutations, subsample_interval
from xsim.similarity.cca import svcca
from xsim.similarity.cka import (LinearHsic, cka, cka_from_hsic, cka_matrix, choose_method, linear_hsic,
                                 minibatch_cka, minibatch_cka_matrix)
from xsim.similarity.cka_null import cka_matrix_null
from xsim.similarity.grid import (GRID_MEASURES, MEASURES, GridMeasure, MeasureInfo, grid_max_ci, grid_measure,
                                  grid_null_max, grid_subsample_max, grid_subsamples, similarity_grid)
from xsim.similarity.kernels import cka_from_grams, gram_linear, gram_rbf, hsic
from xsim.similarity.neighbors import cknna, knn_mask, mutual_knn
from xsim.similarity.preprocess import Preprocess, preprocess
from xsim.similarity.procrustes import procrustes
from xsim.similarity.rsa import rdm, rsa
from xsim.similarity.stats import bootstrap, bootstrap_ci, permutation_null, subsample, subsample_ci
from xsim.similarity.streaming import (StreamState, stream_cka, stream_hsic, stream_init, stream_update,
                                       streaming_cka_matrix)
