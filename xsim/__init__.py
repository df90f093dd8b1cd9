"""xsim: does what we learn from one LLM's activations carry over to another LLM?"""
from xsim.activations import extract_activations
from xsim.models import ForwardOutput, Model, ModelConfig, Patch, load_model
