"""Target and draft transformers, their KV cache, and Hugging Face interop."""

from sdjax.models.cache import KVCache
from sdjax.models.families import (
    FAMILIES,
    MissingExtraError,
    UnsupportedModelError,
    family_config,
)
from sdjax.models.hf import LoadedModel, load_hf, save_hf
from sdjax.models.transformer import ModelOutput, Transformer, init_params

__all__ = [
    "FAMILIES", "KVCache", "LoadedModel", "MissingExtraError", "ModelOutput", "Transformer",
    "UnsupportedModelError", "family_config", "init_params", "load_hf", "save_hf",
]
