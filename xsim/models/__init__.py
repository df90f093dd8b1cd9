"""Flax ports of Llama, Qwen, Gemma and GPT-NeoX causal LMs, loaded from HF checkpoints or GGUF files."""
from xsim.models.config import ModelConfig
from xsim.models.loading import load_model, model_source, read_config
from xsim.models.model import FAMILIES, Model, from_hf_tensors, init_params
from xsim.models.transformer import ForwardOutput, Patch, Span, Steer
