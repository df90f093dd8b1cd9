"""Similarity of two models' activations: CKA family, neighbour alignment, baselines and statistics.

Every measure takes activation arrays (samples on axis -2) and the same `preprocess` options
(preprocess.py); all are pure JAX functions, float32 by default with full-precision matmuls.
"""
from xsim.similarity.cca import svcca
from xsim.similarity.cka import (LinearTerms, cka, cka_from_terms, cka_matrix, choose_method, hsic_from_terms,
                                 linear_terms, minibatch_cka, minibatch_cka_matrix)
from xsim.similarity.kernels import cka_from_grams, gram_linear, gram_rbf, hsic
from xsim.similarity.neighbors import cknna, knn_mask, mutual_knn
from xsim.similarity.preprocess import Preprocess, preprocess
from xsim.similarity.procrustes import procrustes
from xsim.similarity.rsa import rdm, rsa
from xsim.similarity.stats import (MatrixSummary, bootstrap, bootstrap_ci, cka_matrix_null, max_adjusted_p_values,
                                   p_value, permutation_null, permutations, subsample, subsample_ci, summarize)
from xsim.similarity.streaming import (StreamState, stream_cka, stream_init, stream_terms, stream_update,
                                       streaming_cka_matrix)
