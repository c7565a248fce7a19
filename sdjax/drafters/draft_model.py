"""A smaller model with the target's vocabulary drafts a chain of tokens.

The draft keeps its own KV cache, in step with the target's committed tokens: each
cycle it runs num_draft + 1 single-token steps (the last only to cache the KV of
the last draft, so that a fully accepted chain needs no catch-up), and after
verification its cache length is reset to the target's, which drops the KV of
rejected drafts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sdjax.config import ModelConfig, SpecConfig
from sdjax.drafters.base import DraftTree, roots
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer
from sdjax.sampling import warp_logits
from sdjax.trees import TreeShape, chain


@dataclasses.dataclass(frozen=True)
class DraftModel:
    config: ModelConfig
    num_draft: int = 4

    def __post_init__(self):
        if self.num_draft < 1:
            raise ValueError("num_draft must be >= 1")

    @property
    def shape(self) -> TreeShape:
        return chain(self.num_draft)

    def check(self, cfg: SpecConfig) -> None:
        if self.config.vocab_size != cfg.model.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({self.config.vocab_size}) differs from the "
                f"target's ({cfg.model.vocab_size}); they must share a tokenizer"
            )

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len):
        batch, bucket = prompt_tokens.shape
        positions = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        out = Transformer(self.config).apply(
            draft_params, prompt_tokens, positions, KVCache.init(self.config, batch, max_len))
        return out.cache.commit(prompt_lengths)

    def propose(self, draft_params, cache, sequence, seq_len, key, cfg: SpecConfig):
        model = Transformer(self.config)
        ones = jnp.ones(seq_len.shape, jnp.int32)

        def step(carry, step_key):
            cache, token = carry
            out = model.apply(draft_params, token[:, None], cache.length[:, None], cache)
            logits = out.logits[:, 0]
            if cfg.temperature == 0.0:
                probs = None
                token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            else:
                warped = warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p)
                probs = jax.nn.softmax(warped, axis=-1)
                token = jax.random.categorical(step_key, warped).astype(jnp.int32)
            return (out.cache.commit(ones), token), (token, probs)

        root = roots(sequence, seq_len)
        keys = jax.random.split(key, self.num_draft + 1)
        (cache, _), (drafts, probs) = jax.lax.scan(step, (cache, root), keys)
        tokens = jnp.concatenate([root[:, None], drafts[:-1].T], axis=1)
        if probs is not None:  # node i + 1 was drawn from step i's distribution
            probs = jnp.concatenate([probs[:1], probs[:-1]], axis=0).transpose(1, 0, 2)
        return DraftTree(tokens, probs), cache

    def commit(self, cache, result, committed_length):
        return cache.replace(length=committed_length)
