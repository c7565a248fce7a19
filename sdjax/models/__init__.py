"""Target and draft transformers, their KV cache, and Hugging Face interop."""

from sdjax.models.cache import KVCache
from sdjax.models.hf import LoadedModel, UnsupportedModelError, load_hf, save_hf
from sdjax.models.transformer import ModelOutput, Transformer, init_params

__all__ = [
    "KVCache", "LoadedModel", "ModelOutput", "Transformer", "UnsupportedModelError",
    "init_params", "load_hf", "save_hf",
]
