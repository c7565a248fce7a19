"""sdjax: speculative and multi-head decoding for JAX language models."""

from sdjax import data, drafters, sharding, trees, verify
from sdjax.config import ModelConfig, RopeScaling, SpecConfig, from_dict
from sdjax.decode import GenerateOutput, generate, generate_pmapped
from sdjax.models import (
    KVCache, LoadedModel, Transformer, UnsupportedModelError, init_params, load_hf, save_hf,
)

__version__ = "0.1.0"

__all__ = [
    "GenerateOutput", "data", "drafters", "sharding", "trees", "verify", "KVCache", "LoadedModel", "ModelConfig", "RopeScaling", "SpecConfig",
    "Transformer", "UnsupportedModelError", "from_dict", "generate", "generate_pmapped",
    "init_params", "load_hf", "save_hf",
]
