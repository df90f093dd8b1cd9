"""xsim: does what we learn from one LLM's activations carry over to another LLM?

Packages: models (Flax ports and loading), activations (running models: extraction, stores, patching),
similarity and transfer (pure functions of activation arrays), data (texts and probe tasks); layer_select (which
layers, for every stage) and distributed (jax.distributed from the environment). The experiment runner lives in
the repository's experiments/ folder.
"""
from xsim.activations import extract_activations
from xsim.models import ForwardOutput, Model, ModelConfig, Patch, load_model
