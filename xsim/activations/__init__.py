"""Activation extraction aligned across tokenizers: pooled rows by character offsets, sharded, stored."""
from xsim.activations.extract import SITES, extract_activations, model_fingerprint
from xsim.activations.rows import POOLINGS
from xsim.activations.sharding import make_mesh
from xsim.activations.store import (Activations, ActivationStore, CorruptStore, IncompleteStore, StoredArray,
                                    load_store, paired_rows)
