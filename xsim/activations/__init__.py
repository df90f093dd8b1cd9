"""Where models run: activations aligned across tokenizers, sharded, stored; next-token patching and steering.

Modules: rows (which tokens make each sample, by character offsets), extract (jitted, sharded, resumable
extraction of what a RowSpec names), store (the verified on-disk store), patching (writing a vector into a model's
residual stream and reading its next-token logits), steering (adding vectors to the residual stream, batched over
interventions and prompts, and reading what follows: next-token mass, later hidden states, perplexity). Meshes (make_mesh, re-exported here) and parameter shardings
live in xsim.sharding.
"""
from xsim.activations.extract import SITES, RowSpec, extract_activations, model_fingerprint
from xsim.activations.rows import POOLINGS
from xsim.activations.store import (Activations, ActivationStore, CorruptStore, IncompleteStore, StoredArray,
                                    load_store, paired_rows)
from xsim.sharding import make_mesh
