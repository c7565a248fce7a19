"""Helpers every drafter shares (roots, level-by-level children), and the trivial drafter."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import SpecConfig
from sdjax.drafters.vocab import to_target, widen
from sdjax.protocols import Drafter, DraftTree
from sdjax.sampling import warp_logits
from sdjax.trees import TreeShape, chain


def roots(sequence: jax.Array, seq_len: jax.Array) -> jax.Array:
    """[B] the last committed token of each row."""
    return jnp.take_along_axis(sequence, (seq_len - 1)[:, None], axis=1)[:, 0]


def choose_children(logits: jax.Array, width: int, key: jax.Array, cfg: SpecConfig,
                    vocab_ids: Optional[jax.Array] = None):
    """Children tokens [B, n, width] of n nodes with draft logits [B, n, V], and the
    distribution each child was drawn from ([B, n, width, V], None when greedy).
    With `vocab_ids` [K] the logits are over a reduced draft vocabulary [B, n, K]
    (`sdjax.drafters.vocab`): tokens and distributions come back in target ids."""
    if vocab_ids is not None:
        tokens, dists = choose_children(logits, width, key, cfg)
        if dists is not None:
            dists = widen(dists, vocab_ids, cfg.model.vocab_size)
        return to_target(vocab_ids, tokens), dists
    if cfg.temperature == 0.0:
        return jax.lax.top_k(logits, width)[1].astype(jnp.int32), None
    warped = warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p)
    gumbel = jax.random.gumbel(key, warped.shape)
    tokens = jax.lax.top_k(warped + gumbel, width)[1].astype(jnp.int32)
    q = jax.nn.softmax(warped, axis=-1)
    taken = jax.nn.one_hot(tokens, q.shape[-1], dtype=q.dtype)  # [B, n, width, V]
    earlier = jnp.cumsum(taken, axis=2) - taken  # siblings drawn before each child
    remaining = q[:, :, None, :] * (1.0 - earlier)
    total = remaining.sum(-1, keepdims=True)
    return tokens, remaining / jnp.where(total > 0, total, 1.0)


def add_children(shape: TreeShape, fed: np.ndarray, logits: jax.Array, tokens: jax.Array,
                 probs: Optional[jax.Array], key: jax.Array, cfg: SpecConfig,
                 vocab_ids: Optional[jax.Array] = None):
    """Fills in the children of tree nodes `fed` (one level) from their draft logits
    [B, len(fed), V] (or [.., K] over `vocab_ids`): tokens [B, N] and, when sampling,
    probs [B, N, V]."""
    kids = shape.children[fed]  # [n, K], -1 padded
    width = int((kids >= 0).sum(axis=1).max())
    chosen, dists = choose_children(logits, width, key, cfg, vocab_ids)
    has = kids[:, :width] >= 0
    tokens = tokens.at[:, kids[:, :width][has]].set(chosen[:, has])
    if probs is not None:
        probs = probs.at[:, kids[:, :width][has]].set(dists[:, has])
    return tokens, probs


def root_filled(sequence: jax.Array, seq_len: jax.Array, num_nodes: int, vocab_size: int,
                cfg: SpecConfig):
    """The (tokens [B, N], probs [B, N, V] or None when greedy) a tree drafted level by
    level starts from: every node holds the root until its level is drafted."""
    batch = seq_len.shape[0]
    tokens = jnp.broadcast_to(roots(sequence, seq_len)[:, None], (batch, num_nodes))
    probs = None if cfg.temperature == 0.0 else jnp.zeros((batch, num_nodes, vocab_size),
                                                           jnp.float32)
    return tokens, probs


def one_hot_probs(tokens: jax.Array, cfg: SpecConfig) -> Optional[jax.Array]:
    """Draft distributions of a deterministic drafter (none needed when greedy)."""
    if cfg.temperature == 0.0:
        return None
    return jax.nn.one_hot(tokens, cfg.model.vocab_size, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class Autoregressive(Drafter):
    """Drafts nothing: each cycle the target emits one token. The baseline."""

    @property
    def shape(self) -> TreeShape:
        return chain(0)

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return ()

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        return DraftTree(roots(sequence, seq_len)[:, None]), state

    def commit(self, state, result, committed_length, features=None):
        return state
