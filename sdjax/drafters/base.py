"""The draft tree a drafter hands to the target, and the trivial drafter."""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from sdjax.config import SpecConfig
from sdjax.trees import TreeShape, chain


@flax.struct.dataclass
class DraftTree:
    tokens: jax.Array  # [B, N] node 0 = the root
    probs: Optional[jax.Array] = None  # [B, N, V] what each node was drawn from (sampling)
    limit: Optional[jax.Array] = None  # [B] most drafts a row may accept (adaptive length)


def roots(sequence: jax.Array, seq_len: jax.Array) -> jax.Array:
    """[B] the last committed token of each row."""
    return jnp.take_along_axis(sequence, (seq_len - 1)[:, None], axis=1)[:, 0]


def one_hot_probs(tokens: jax.Array, cfg: SpecConfig) -> Optional[jax.Array]:
    """Draft distributions of a deterministic drafter (none needed when greedy)."""
    if cfg.temperature == 0.0:
        return None
    return jax.nn.one_hot(tokens, cfg.model.vocab_size, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Autoregressive:
    """Drafts nothing: each cycle the target emits one token. The baseline."""

    @property
    def shape(self) -> TreeShape:
        return chain(0)

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len):
        return ()

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        return DraftTree(roots(sequence, seq_len)[:, None]), state

    def commit(self, state, result, committed_length):
        return state
