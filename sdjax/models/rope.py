"""Rotary position embeddings with the `transformers` conventions (rotate-half layout)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig, sliding: bool = False) -> np.ndarray:
    """Per-pair rotation frequencies [head_dim // 2], scaled as `cfg.rope_scaling` says.

    A sliding-window layer of a model with its own local base (`rope_local_theta`,
    Gemma 3) uses that base, unscaled. Computed in numpy at trace time: they depend
    only on the static config.
    """
    dim = cfg.head_dim
    local = sliding and cfg.rope_local_theta is not None
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    scaling = cfg.rope_scaling
    if local:
        return inv_freq
    if scaling.rope_type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, T, H, D] by its positions [B, T] (float32 angles, x's dtype out)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x.dtype)
