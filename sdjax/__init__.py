"""sdjax: speculative and multi-head decoding for JAX language models."""

from sdjax import data, drafters, sharding, trees, verify
from sdjax.config import ModelConfig, RopeScaling, SpecConfig, from_dict
from sdjax.decode import GenerateOutput, generate, generate_pmapped
from sdjax.models import (
    KVCache,
    LoadedModel,
    MissingExtraError,
    Transformer,
    UnsupportedModelError,
    init_params,
    load_hf,
    save_hf,
)
from sdjax.models.gguf import convert_gguf, load_gguf
from sdjax.pretrained import load_pretrained

__version__ = "0.1.0"

__all__ = [
    "GenerateOutput", "KVCache", "LoadedModel", "MissingExtraError", "ModelConfig",
    "RopeScaling", "SpecConfig", "Transformer", "UnsupportedModelError", "convert_gguf",
    "data", "drafters", "from_dict", "generate", "generate_pmapped", "init_params",
    "load_gguf", "load_hf", "load_pretrained", "save_hf", "sharding", "trees", "verify",
]
