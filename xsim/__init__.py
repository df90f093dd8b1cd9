"""xsim: does what we learn from one LLM's activations carry over to another LLM?"""
from xsim.models import Model, ModelConfig, load_model
