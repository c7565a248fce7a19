"""Model families as presets of `ModelConfig` feature flags.

A family is data, not a code path: `transformer.py` reads only the flags, so a new
family that combines known features is one entry here (and its checkpoint naming in
`hf.py`). Keys are `transformers` model types.
"""

from __future__ import annotations

from typing import Any, Dict

from sdjax.config import ModelConfig

_GEMMA = dict(norm_offset=1.0, sandwich_norms=True, scale_embeddings=True,
              tie_embeddings=True, activation="gelu_pytorch_tanh")

FAMILIES: Dict[str, Dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": dict(qkv_bias=True),
    "gpt2": dict(norm="layer", position_embedding="learned", fused_qkv=True,
                 gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True,
                 tie_embeddings=True),
    "gemma2": _GEMMA,
    "gemma3_text": dict(_GEMMA, qk_norm=True),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which command installs it."""


def family_config(model_type: str, **fields) -> ModelConfig:
    """A ModelConfig of the family `model_type` (a `transformers` model type): the
    family's feature flags, then `fields` (sizes, and any flag to override)."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    return ModelConfig(**{**FAMILIES[model_type], "hf_model_type": model_type, **fields})
