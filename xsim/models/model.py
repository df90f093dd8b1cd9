"""`Model`: a ported checkpoint (config, params, tokenizer) with a jitted forward, and the family registry."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from xsim.models import gemma, gpt_neox, llama, qwen
from xsim.models.config import ModelConfig
from xsim.models.convert import convert_checkpoint
from xsim.models.transformer import Decoder, ForwardOutput, Patch, Span, Steer

# HF model_type -> family module (config translation + tensor names).
FAMILIES = {"llama": llama, "mistral": llama, "qwen2": qwen, "qwen3": qwen, "gemma": gemma, "gemma2": gemma,
            "gemma3_text": gemma, "gpt_neox": gpt_neox}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def family_module(hf_config: Any):
  model_type = getattr(hf_config, "model_type", None)
  if model_type not in FAMILIES:
    raise ValueError(f"Unknown architecture {model_type!r}; xsim supports model types {sorted(FAMILIES)} "
                     "(Llama, Mistral, Qwen2/3, Gemma 1/2/3, GPT-NeoX/Pythia).")
  return FAMILIES[model_type]


def resolve_dtype(dtype) -> Any:
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[dtype]
  return jnp.dtype(dtype).type


@dataclasses.dataclass
class Model:
  """A loaded model. `params` is the Flax parameter pytree ({"params": ...}); `forward` is jitted.

  config: xsim's ModelConfig; hf_config: the transformers config it came from; name: where it was loaded from.
  """
  config: ModelConfig
  params: Any
  tokenizer: Any
  dtype: Any
  name: str = ""
  hf_config: Any = None

  @functools.cached_property
  def module(self) -> Decoder:
    # Float32 analysis runs matmuls at full precision: TF32 (JAX's GPU default) visibly moves activations.
    precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
    return Decoder(self.config, dtype=self.dtype, precision=precision)

  @functools.cached_property
  def _forward(self):
    return jax.jit(self.module.apply, static_argnames=("compute_logits", "return_sites"))

  def forward(self, input_ids, attention_mask=None, *, patch: Optional[Patch] = None, steer: Optional[Steer] = None,
              compute_logits: bool = True, return_sites: bool = False, logit_positions=None,
              span: Optional[Span] = None) -> ForwardOutput:
    """input_ids, attention_mask: [B, S] (mask defaults to all ones); logit_positions: [B] to compute logits
    [B, V] at those positions only; patch, steer: interventions on the residual stream (see Patch, Steer); span: run
    only some blocks, from a given residual stream (see Span). See ForwardOutput for the fields."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}.")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}.")
    if logit_positions is not None:
      logit_positions = jnp.asarray(logit_positions, jnp.int32)
    return self._forward(self.params, input_ids, attention_mask, patch, steer, compute_logits=compute_logits,
                         return_sites=return_sites, logit_positions=logit_positions, span=span)

  def with_attention(self, attention: str = "blockwise", block_size: Optional[int] = None) -> "Model":
    """The same model with another attention implementation: ModelConfig.attention ("blockwise" or "fused", cuDNN
    on GPUs) and attention_block_size (None: the platform's default). Results agree up to rounding."""
    return dataclasses.replace(self, config=dataclasses.replace(self.config, attention=attention,
                                                                attention_block_size=block_size))

  def with_random_params(self, seed: int = 0) -> "Model":
    """The same architecture and tokenizer with freshly initialised weights (the random-init baseline)."""
    return dataclasses.replace(self, params=init_params(self.config, self.dtype, seed), name=f"{self.name}@random{seed}")


def _init_fn(config: ModelConfig, dtype):
  module = Decoder(config, dtype=dtype)
  dummy = jnp.ones((1, 2), jnp.int32)
  return lambda rng: module.init(rng, dummy, dummy)


def param_shapes(config: ModelConfig, dtype=jnp.float32) -> dict:
  """path tuple -> shape of every parameter (under "params"), without allocating them."""
  shapes = jax.eval_shape(_init_fn(config, dtype), jax.random.PRNGKey(0))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def init_params(config: ModelConfig, dtype=jnp.float32, seed: int = 0) -> dict:
  """Random parameters (N(0, 0.02) kernels, identity norms) for a config."""
  return jax.jit(_init_fn(config, dtype))(jax.random.PRNGKey(seed))


def from_hf_tensors(hf_config: Any, tensors, dtype, tokenizer=None, name: str = "") -> Model:
  """Builds a Model from a transformers config and a mapping HF tensor name -> array.

  Parameters are converted and placed on the default device one at a time (see `convert_checkpoint`): on CPU
  the placed arrays alias the converted ones, so the peak is about the parameters' size plus one tensor.
  """
  family = family_module(hf_config)
  config = family.config_from_hf(hf_config)
  dtype = resolve_dtype(dtype)
  top, per_layer = family.tensor_specs(config)
  params = convert_checkpoint(config, tensors, top, per_layer, param_shapes(config, dtype), np.dtype(dtype),
                              place=jax.device_put)
  return Model(config=config, params={"params": params}, tokenizer=tokenizer, dtype=dtype, name=name,
               hf_config=hf_config)
