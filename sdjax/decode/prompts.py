"""Prompt handling and prefill: user prompts in, right-padded id buckets out, and the
target's first forward over them (which `sdjax.bench.cost` times on its own).

Prompts are right-padded to a power-of-two bucket (at least `cfg.min_prompt_bucket`)
so that a new prompt length inside a bucket reuses the compiled loop.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import ModelConfig, SpecConfig
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]


def bucket_length(length: int, min_bucket: int) -> int:
    """Smallest power of two >= length, and at least min_bucket."""
    return max(min_bucket, 1 << max(0, int(length) - 1).bit_length())


PROMPT_TYPES = "text, a list of texts, token ids, or a list of token-id lists"


def _is_id(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _id_row(row, index: int) -> list:
    """One prompt's ids as a list of ints; a TypeError naming what is not an id."""
    if isinstance(row, (np.ndarray, jax.Array)):
        if row.ndim != 1 or not np.issubdtype(row.dtype, np.integer):
            raise TypeError(f"prompt {index} must be a rank-1 integer array, got "
                            f"{row.dtype}{list(row.shape)}")
        return np.asarray(row).tolist()
    if not isinstance(row, (list, tuple)):
        raise TypeError(f"prompt {index} must be a list of token ids, got "
                        f"{type(row).__name__}")
    bad = [t for t in row if not _is_id(t)]
    if bad:
        raise TypeError(f"prompt {index} holds non-integer token ids {bad[:3]} (types "
                        f"{sorted({type(t).__name__ for t in bad})}); prompts are {PROMPT_TYPES}")
    return [int(t) for t in row]


def encode(prompt: Prompt, tokenizer) -> list:
    """Prompt(s) as a list of token-id lists; anything else is a TypeError."""
    texts = None
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        texts = list(prompt)
    if texts is not None:
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer (pass tokenizer=...)")
        return [tokenizer(t)["input_ids"] for t in texts]
    if isinstance(prompt, (np.ndarray, jax.Array)):
        if prompt.ndim not in (1, 2):
            raise ValueError(f"prompt ids must have rank 1 or 2, got shape {prompt.shape}")
        return [_id_row(row, i) for i, row in enumerate(np.atleast_2d(np.asarray(prompt)))]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"a prompt is {PROMPT_TYPES}; got {type(prompt).__name__}")
    if prompt and all(np.ndim(t) == 0 and not isinstance(t, str) for t in prompt):
        return [_id_row(prompt, 0)]  # one prompt of ids (or of things that are not ids)
    if prompt and all(isinstance(r, (list, tuple, np.ndarray, jax.Array)) for r in prompt):
        return [_id_row(row, i) for i, row in enumerate(prompt)]
    if not prompt:
        return []
    raise TypeError(f"a prompt is {PROMPT_TYPES}; got a list of "
                    f"{sorted({type(p).__name__ for p in prompt})}")


def prepare_prompts(prompt: Prompt, cfg: SpecConfig, tokenizer=None,
                    batch_multiple: int = 1) -> Tuple[np.ndarray, np.ndarray, int]:
    """Validated, right-padded prompt ids [B', bucket], lengths [B'], and B.

    B' is the batch B rounded up to `batch_multiple` with one-token dummy rows, so
    that it divides over devices; the caller drops them again.
    """
    rows = encode(prompt, tokenizer)
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    vocab = cfg.model.vocab_size
    for i, row in enumerate(rows):
        bad = [t for t in row if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")
    longest = max(len(r) for r in rows)
    if longest + cfg.max_new_tokens > cfg.seq_limit:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} exceeds the "
            f"model's {cfg.seq_limit} positions; shorten the prompt or the generation"
        )
    bucket = bucket_length(longest, cfg.min_prompt_bucket)
    padded_batch = -(-len(rows) // batch_multiple) * batch_multiple
    tokens = np.zeros((padded_batch, bucket), np.int32)  # padding is never attended to
    lengths = np.ones((padded_batch,), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths, len(rows)


class Prefill(NamedTuple):
    """The target after the prompt."""
    cache: KVCache  # the target's KV of every row's prompt (length = prompt length)
    last_logits: jax.Array  # [B, V] logits at each row's last prompt token
    features: jax.Array  # [B, bucket, F] what drafters read (final or named layers)


def prefill(params, config: ModelConfig, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
            max_len: int, feature_layers: Tuple[int, ...] = (),
            mesh: Optional[Mesh] = None) -> Prefill:
    """The target's forward over right-padded prompts [B, bucket] into a fresh cache
    of `max_len` slots (sharded over `mesh` when given). Jittable."""
    chex.assert_rank(prompt_tokens, 2)
    batch, bucket = prompt_tokens.shape
    chex.assert_shape(prompt_lengths, (batch,))
    chex.assert_type([prompt_tokens, prompt_lengths], int)
    cache = KVCache.init(config, batch, max_len)
    if mesh is not None:
        cache = sharding.constrain_cache(cache, mesh)
    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
    model = Transformer(config)
    out = model.apply(params, prompt_tokens, positions, cache, hidden_layers=feature_layers,
                      logits_from=bucket)  # only the last real token's logits are needed
    last_hidden = out.hidden[jnp.arange(batch), prompt_lengths - 1]
    last = model.apply(params, last_hidden, method=Transformer.lm_logits)
    return Prefill(out.cache.commit(prompt_lengths), last, out.features())
