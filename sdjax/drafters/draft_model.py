"""A smaller model with the target's vocabulary drafts a chain or a token tree.

The tree (any `TreeShape` in breadth-first order: chain, k-ary, Medusa choices,
Sequoia) is grown one depth level per draft forward. A node's children are its
draft distribution's top-k tokens when greedy, and k tokens sampled *without
replacement* (Gumbel-top-k) when sampling; each child records the distribution it
was drawn from (q with its earlier siblings removed), which is what the lossless
tree verifier needs. A chain is the tree with one child per node.

KV bookkeeping, all static shapes: the draft cache holds `catch_up` (W) tokens
fewer than the target's, and each cycle re-feeds those last W committed tokens (the
"window") together with the root, at their own slots and positions, which rewrites
identical KV. With W = 1 the accepted path (but its last node, whose KV the draft
never computed if it was a leaf) is gathered into place after verification. With
W = max depth + 1 the window alone covers every token a cycle can commit, whoever
drafted it: that is how ensemble members stay in step (`Ensemble`). The pending
region is [window (W slots), node 0, node 1, ...].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig, SpecConfig
from sdjax.drafters.base import DraftTree, add_children, root_filled
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer
from sdjax.trees import TreeShape, chain


@dataclasses.dataclass(frozen=True)
class DraftModel:
    """`num_draft`: chain length (the static maximum when adaptive), unless `tree` is
    given. `adaptive=True` (chains only) follows `transformers`' heuristic per row:
    after a fully accepted chain draft two more tokens next time, otherwise one
    fewer (at least one); levels no row needs are skipped (`lax.cond`)."""

    config: ModelConfig
    num_draft: int = 4
    tree: Optional[TreeShape] = None
    adaptive: bool = False
    catch_up: int = 1

    def __post_init__(self):
        if self.tree is None and self.num_draft < 1:
            raise ValueError("num_draft must be >= 1")
        if self.tree is not None:
            self.tree.check_level_order()
        if self.adaptive and self.tree is not None:
            raise ValueError("adaptive draft length applies to chains, not trees")

    @property
    def shape(self) -> TreeShape:
        return self.tree if self.tree is not None else chain(self.num_draft)

    def check(self, cfg: SpecConfig, draft_params) -> None:
        if draft_params is None:
            raise ValueError("DraftModel needs draft_params")
        if self.config.vocab_size != cfg.model.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({self.config.vocab_size}) differs from the "
                f"target's ({cfg.model.vocab_size}); they must share a tokenizer"
            )

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """State: the draft's KV cache and each row's current draft length."""
        batch, bucket = prompt_tokens.shape
        positions = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        out = Transformer(self.config).apply(
            draft_params, prompt_tokens, positions, KVCache.init(self.config, batch, max_len + 1))
        cache = out.cache.commit(jnp.maximum(prompt_lengths - self.catch_up, 0))
        return cache, jnp.full((batch,), self.shape.max_depth, jnp.int32)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        cache, limit = state
        model = Transformer(self.config)

        def forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
                    logits_from):
            out = model.apply(draft_params, tokens, positions, cache, mask,
                              write_offset=write_offset, pending_positions=pending_positions,
                              logits_from=logits_from)
            return out.logits, out.hidden, out.cache

        cache, tokens, probs = draft_levels(
            forward, self.shape, self.catch_up, cache, sequence, seq_len, key, cfg,
            self.config.vocab_size, skip_past=limit if self.adaptive else None)
        return DraftTree(tokens, probs, limit if self.adaptive else None), (cache, limit)

    def commit(self, state, result, committed_length, features=None):
        """Keeps the window and the accepted path up to W tokens short of the target
        (the last ones are re-fed next cycle), and adapts the draft length."""
        cache, limit = state
        keep = jnp.maximum(committed_length - self.catch_up, 0) - cache.length
        if self.catch_up == 1:  # gather the accepted path (all but its last node) into place
            path = jnp.concatenate([jnp.zeros_like(result.path[:, :1]), 1 + result.path], 1)
            cache = cache.commit(keep, path)
        else:  # the window covered every committed token: nothing moves
            cache = cache.commit(keep)
        if self.adaptive:
            grown = jnp.where(result.num_accepted >= limit, limit + 2, limit - 1)
            limit = jnp.clip(grown, 1, self.shape.max_depth)
        return cache, limit


def window_inputs(cache_length: jax.Array, committed: jax.Array, window: int,
                  sequence: jax.Array):
    """The last `window` committed tokens a draft re-feeds: positions [B, W] (from the
    draft cache's length on), validity [B, W] (short prompts leave gaps), tokens [B, W]."""
    positions = cache_length[:, None] + jnp.arange(window)
    tokens = jnp.take_along_axis(sequence, jnp.minimum(positions, sequence.shape[1] - 1), 1)
    return positions, positions < committed[:, None], tokens


def region_mask(tree_mask: jax.Array, window_valid: jax.Array) -> jax.Array:
    """[B, W + N, W + N] visibility in the pending region [window, tree nodes]: the window
    is causal, every node sees the (valid) window and its ancestors (tree_mask
    [N, N] or [B, N, N])."""
    batch, window = window_valid.shape
    nodes = tree_mask.shape[-1]
    causal = jnp.tril(jnp.ones((window, window), bool))
    top = jnp.broadcast_to(jnp.concatenate([causal, jnp.zeros((window, nodes), bool)], 1),
                           (batch, window, window + nodes))
    bottom = jnp.concatenate([jnp.ones((batch, nodes, window), bool),
                              jnp.broadcast_to(tree_mask, (batch, nodes, nodes))], axis=2)
    valid = jnp.concatenate([window_valid, jnp.ones((batch, nodes), bool)], axis=1)
    return jnp.concatenate([top, bottom], axis=1) & valid[:, None, :]


def draft_levels(forward, shape: TreeShape, window: int, cache, sequence, seq_len, key,
                 cfg: SpecConfig, vocab_size: int, first_features=None, skip_past=None):
    """Drafts the static tree `shape` one depth level per forward; returns (cache,
    tokens [B, N], probs [B, N, V] or None).

    forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
    logits_from) -> (logits of tokens[logits_from:], hidden, cache) runs the draft
    network on some slots of the pending region [window (W slots), node 0, node 1, ...].
    Level 0 feeds the window and the
    root with `first_features` [B, W + 1, F] (None: a network that reads tokens only),
    level d the nodes at depth d, each with the hidden output of its parent (EAGLE).
    With `skip_past` [B], levels no row needs (d >= skip_past) are skipped (lax.cond).
    """
    nodes = shape.num_nodes
    committed = seq_len - 1  # the target's cache length; the root is at this position
    window_pos, window_valid, window_tokens = window_inputs(cache.length, committed, window,
                                                            sequence)
    mask = region_mask(jnp.asarray(shape.ancestor_mask), window_valid)
    region_positions = jnp.concatenate(
        [window_pos, committed[:, None] + jnp.asarray(shape.depth)[None]], axis=1)
    parents = np.maximum(np.asarray(shape.parents), 0)

    def level(d, fed, carry):
        """Feeds nodes `fed` (level 0: the window and the root), drafts the children
        of the nodes fed at depth d."""
        cache, tokens, probs, hidden = carry
        if d == 0:
            slots = np.arange(window + 1)
            fed_tokens = jnp.concatenate([window_tokens, tokens[:, :1]], axis=1)
            features = first_features
        else:
            slots = fed + window
            fed_tokens = tokens[:, fed]
            features = None if hidden is None else hidden[:, parents[fed]]
        logits, out_hidden, cache = forward(
            fed_tokens, features, jnp.take(region_positions, slots, axis=1), cache,
            mask[:, slots], int(slots[0]), region_positions, len(slots) - len(fed))
        tokens, probs = add_children(shape, fed, logits, tokens, probs,
                                     jax.random.fold_in(key, d), cfg)
        if hidden is not None:
            hidden = hidden.at[:, fed].set(out_hidden[:, len(slots) - len(fed):].astype(jnp.float32))
        return cache, tokens, probs, hidden

    tokens, probs = root_filled(sequence, seq_len, nodes, vocab_size, cfg)
    hidden = None
    if first_features is not None:
        hidden = jnp.zeros((seq_len.shape[0], nodes, first_features.shape[-1]), jnp.float32)
    carry = (cache, tokens, probs, hidden)
    for d in range(shape.max_depth):
        step = functools.partial(level, d, np.flatnonzero(shape.depth == d))
        if skip_past is not None and d > 0:
            carry = jax.lax.cond(jnp.any(skip_past > d), step, lambda c: c, carry)
        else:
            carry = step(carry)
    return carry[:3]
