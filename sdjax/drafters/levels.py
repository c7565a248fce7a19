"""Drafting a tree one depth level per draft forward, with a window of re-fed tokens:
what every draft network that reads its own KV cache shares (draft models, EAGLE).

The pending region of the draft's cache is [window (W slots), node 0, node 1, ...]:
each cycle re-feeds the last W committed tokens (rewriting identical KV) with the
root, then the tree's levels, all at static shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import SpecConfig
from sdjax.drafters.base import add_children, root_filled
from sdjax.trees import TreeShape


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
                 cfg: SpecConfig, vocab_size: int, first_features=None, skip_past=None,
                 vocab_ids=None, min_confidence: float = 0.0, accept_prob=None,
                 stop_threshold: float = 1.0, own_text=None, input_ids=None):
    """Drafts the static tree `shape` one depth level per forward; returns (cache,
    tokens [B, N], probs [B, N, V] or None, limit [B] or None).

    forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
    logits_from) -> (logits of tokens[logits_from:], hidden, cache) runs the draft
    network on some slots of the pending region [window (W slots), node 0, node 1, ...].
    Level 0 feeds the window and the
    root with `first_features` [B, W + 1, F] (None: a network that reads tokens only),
    level d the nodes at depth d, each with the hidden output of its parent (EAGLE).
    With `skip_past` [B], levels no row needs (d >= skip_past) are skipped (lax.cond).
    With `min_confidence` > 0 a row stops drafting (Kangaroo's early stop) at the first
    level whose most probable child has a draft probability below it; `limit` [B] is
    then how many drafted tokens each row proposes (`DraftTree.limit`: a length fixed
    by the draft alone, so truncating there stays lossless), and levels no row needs
    are skipped too. `accept_prob` (SpecDec++; chains) maps the network's hidden
    output for the fed node [B, 1, D] to the chance [B, 1] that the target accepts it;
    a row stops at the first depth d where 1 - prod_{k <= d} p_k > stop_threshold
    (limit = d), likewise. `vocab_ids` [K]: the network's logits are over that reduced
    draft vocabulary. A network with a tokenizer of its own (`CrossVocabDraft`) reads
    its window from `own_text` = (its text of the sequence [B, S'], lengths [B]), whose
    last token is the root's, and is fed tree tokens as `input_ids[token]`.
    """
    nodes = shape.num_nodes
    text, text_len = (sequence, seq_len) if own_text is None else own_text
    committed = text_len - 1  # the cache length before the root, which is at this position
    window_pos, window_valid, window_tokens = window_inputs(cache.length, committed, window,
                                                            text)
    as_input = (lambda t: t) if input_ids is None else (lambda t: jnp.take(input_ids, t))
    mask = region_mask(jnp.asarray(shape.ancestor_mask), window_valid)
    region_positions = jnp.concatenate(
        [window_pos, committed[:, None] + jnp.asarray(shape.depth)[None]], axis=1)
    parents = np.maximum(np.asarray(shape.parents), 0)

    def level(d, fed, carry):
        """Feeds nodes `fed` (level 0: the window and the root), drafts the children
        of the nodes fed at depth d."""
        cache, tokens, probs, hidden, limit, survival = carry
        if d == 0:
            slots = np.arange(window + 1)
            fed_tokens = jnp.concatenate([window_tokens, as_input(tokens[:, :1])], axis=1)
            features = first_features
        else:
            slots = fed + window
            fed_tokens = as_input(tokens[:, fed])
            features = None if hidden is None else hidden[:, parents[fed]]
        logits, out_hidden, cache = forward(
            fed_tokens, features, jnp.take(region_positions, slots, axis=1), cache,
            mask[:, slots], int(slots[0]), region_positions, len(slots) - len(fed))
        tokens, probs = add_children(shape, fed, logits, tokens, probs,
                                     jax.random.fold_in(key, d), cfg, vocab_ids)
        if hidden is not None:
            fed_hidden = out_hidden[:, len(slots) - len(fed):]
            hidden = hidden.at[:, fed].set(fed_hidden.astype(jnp.float32))
        if min_confidence > 0:
            confidence = jax.nn.softmax(logits.astype(jnp.float32), -1).max(axis=(1, 2))
            limit = jnp.where((limit > d) & (confidence < min_confidence), d, limit)
        if accept_prob is not None and d > 0:  # the root (d = 0) is the target's own token
            survival = survival * accept_prob(out_hidden[:, -1:])[:, 0]
            limit = jnp.where((limit > d) & (1.0 - survival > stop_threshold), d, limit)
        return cache, tokens, probs, hidden, limit, survival

    tokens, probs = root_filled(sequence, seq_len, nodes, vocab_size, cfg)
    hidden = None
    if first_features is not None:
        hidden = jnp.zeros((seq_len.shape[0], nodes, first_features.shape[-1]), jnp.float32)
    limit = skip_past
    if limit is None and (min_confidence > 0 or accept_prob is not None):
        limit = jnp.full(seq_len.shape, shape.max_depth, jnp.int32)
    survival = None if accept_prob is None else jnp.ones(seq_len.shape, jnp.float32)
    carry = (cache, tokens, probs, hidden, limit, survival)
    for d in range(shape.max_depth):
        step = functools.partial(level, d, np.flatnonzero(shape.depth == d))
        if limit is not None and d > 0:
            carry = jax.lax.cond(jnp.any(carry[4] > d), step, lambda c: c, carry)
        else:
            carry = step(carry)
    return carry[:3] + (carry[4],)
