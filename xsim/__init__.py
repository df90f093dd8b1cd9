"""xsim: does what we learn from one LLM's activations carry over to another LLM?

Packages: models (Flax ports and loading), activations (running models: extraction, stores, patching),
similarity and transfer (pure functions of activation arrays), data (texts and probe tasks). Below them all:
layer_select (which layers, for every stage), sharding (meshes and splitting work over devices), resampling
(permutations, subsets, intervals, p-values), io (atomic, synced writes), linalg (SVDs safe on CPU) and
distributed (jax.distributed from the environment). The experiment runner lives in the repository's experiments/ folder.
"""
from xsim.activations import extract_activations
from xsim.models import ForwardOutput, Model, ModelConfig, Patch, Span, Steer, load_model
from xsim.sharding import make_mesh
