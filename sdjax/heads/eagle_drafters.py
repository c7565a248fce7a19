"""EAGLE drafters: a static tree (EAGLE-1) and EAGLE-2's dynamic tree, for either kind
of EAGLE network (`eagle` or `eagle3`).

State: the draft's KV cache, a buffer of the target's features by position, and the
target's committed length. Every cycle the draft re-feeds the last W = D + 1
committed tokens with their *true* target features (tokens accepted last cycle were
drafted from the draft's own guesses), then the root, then the tree level by level,
each node with its parent's h. The window covers everything a cycle can commit, so
nothing is gathered after verification: the draft cache simply keeps the window
entries that became committed.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import SpecConfig
from sdjax.drafters.base import one_hot_probs, roots
from sdjax.drafters.levels import draft_levels, region_mask, window_inputs
from sdjax.drafters.vocab import to_target
from sdjax.heads import eagle as eagle_net
from sdjax.heads.common import check_fits, vocab_ids
from sdjax.heads.eagle import EagleConfig, EagleNet
from sdjax.models.cache import KVCache
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import DynamicShape, TreeShape, from_choices, from_parents
from sdjax.validation import check_range

# 11 nodes, depth 5: the top 3 first tokens, the best path 5 deep, a few runners-up.
DEFAULT_EAGLE_TREE = from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0],
                                   [0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0, 0]])


@flax.struct.dataclass
class EagleState:
    """An EAGLE drafter's state between cycles."""
    cache: KVCache  # the draft's KV, `window` tokens behind the target's
    features: jax.Array  # [B, max_len, F] the target's features of every committed token
    committed: jax.Array  # [B] the target cache's length (tokens with features)


@flax.struct.dataclass
class Frontier:
    """EAGLE-2's nodes to expand at the next depth, top_k per row."""

    tokens: jax.Array  # [B, k]
    scores: jax.Array  # [B, k] joint draft log-probability
    index: jax.Array  # [B, k] candidate index (the root is 0)
    fed_parent: jax.Array  # [B, k] the fed node each was drafted from
    hidden: jax.Array  # [B, k, D] the draft's output there (what the children read)


@dataclasses.dataclass(frozen=True)
class EagleDrafter(Drafter):
    """What EAGLE-1 and EAGLE-2 share: the draft network, its cache and feature buffer."""

    eagle: EagleConfig

    @property
    def feature_layers(self):
        return self.eagle.feature_layers

    @property
    def window(self) -> int:
        return self.shape.max_depth + 1

    def check(self, cfg: SpecConfig, draft_params) -> None:
        check_fits(self, draft_params, self.eagle, cfg, "the EAGLE params")
        if max(self.feature_layers, default=0) > cfg.model.num_layers:
            raise ValueError(f"feature layers {self.feature_layers} exceed the target's "
                             f"{cfg.model.num_layers} layers")

    def bind(self, draft_params, target_params):
        return eagle_net.bind(self.eagle, draft_params, target_params)

    def _forward(self, draft_params):
        module = EagleNet(self.eagle)

        def forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
                    logits_from=0):
            return module.apply(draft_params, tokens, features, positions, cache, mask,
                                write_offset, pending_positions, logits_from=logits_from)
        return forward

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """Prefills the draft over the prompt (keeping all but the last W tokens) and
        stores the prompt's target features."""
        batch, bucket = prompt_tokens.shape
        buffer = jnp.zeros((batch, max_len, features.shape[-1]), features.dtype)
        buffer = buffer.at[:, :bucket].set(features)
        positions = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        _, _, cache = EagleNet(self.eagle).apply(
            draft_params, prompt_tokens, eagle_net.shift_features(features), positions,
            KVCache.init(self.eagle.layer, batch, max_len + 1), fuse=True)
        cache = cache.commit(jnp.maximum(prompt_lengths - self.window, 0))
        return EagleState(cache, buffer, prompt_lengths)

    def _first_features(self, draft_params, state, seq_len):
        """Fused target features f_{p-1} [B, W + 1, D] for the window and the root."""
        committed = seq_len - 1
        wanted = jnp.concatenate([state.cache.length[:, None] + jnp.arange(self.window),
                                  committed[:, None]], axis=1) - 1
        raw = jnp.take_along_axis(state.features, jnp.maximum(wanted, 0)[..., None], axis=1)
        raw = jnp.where(wanted[..., None] >= 0, raw, 0)
        return EagleNet(self.eagle).apply(draft_params, raw, method=EagleNet.features)

    def commit(self, state, result, committed_length, features=None):
        """Stores the true features of the newly committed nodes (root and accepted
        path) and keeps the draft cache W tokens behind the target."""
        buffer = state.features
        rows = jnp.arange(buffer.shape[0])[:, None]
        new = jnp.take_along_axis(features, result.path[..., None], axis=1)
        slots = jnp.minimum(state.committed[:, None] + jnp.arange(result.path.shape[1]),
                            buffer.shape[1] - 1)
        buffer = buffer.at[rows, slots].set(new.astype(buffer.dtype))
        cache = state.cache.commit(
            jnp.maximum(committed_length - self.window, 0) - state.cache.length)
        return EagleState(cache, buffer, committed_length)


@dataclasses.dataclass(frozen=True)
class Eagle(EagleDrafter):
    """EAGLE-1: the EAGLE draft on a static tree (BFS order), grown level by level."""

    tree: TreeShape = DEFAULT_EAGLE_TREE

    def __post_init__(self):
        super().__post_init__()
        self.tree.check_level_order()

    @property
    def shape(self) -> TreeShape:
        return self.tree

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        cache, tokens, probs, _ = draft_levels(
            self._forward(draft_params), self.tree, self.window, state.cache, sequence, seq_len,
            key, cfg, self.eagle.vocab_size,
            first_features=self._first_features(draft_params, state, seq_len),
            vocab_ids=vocab_ids(draft_params))
        return DraftTree(tokens, probs), state.replace(cache=cache)


@dataclasses.dataclass(frozen=True)
class Eagle2(EagleDrafter):
    """EAGLE-2's context-aware dynamic tree (static sizes, one compilation).

    Expansion: the root's top `top_k` children form depth 1; at each further depth
    the `top_k` frontier nodes of highest joint draft probability (product along
    the path) are fed and each proposes its `top_k` best children, of which the
    best `top_k` by joint probability become the next frontier. Reranking: of all
    drafted candidates the `num_nodes - 1` most probable are verified (a node never
    outranks its parent, so the kept set is a tree). Children are deterministic
    given the context, so under sampling each node's draft distribution is one-hot
    (lossless recursive rejection over a fixed candidate set).

    `min_confidence` > 0 grows the tree adaptively (OPT-Tree style): a depth is
    drafted only while some row's best frontier node has joint probability at least
    that; shallower trees then cost fewer draft forwards.
    """

    depth: int = 5
    top_k: int = 4
    num_nodes: int = 16
    min_confidence: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "depth", 1)
        check_range(self, "top_k", 1)
        check_range(self, "min_confidence", 0, 1)
        candidates = self.top_k + (self.depth - 1) * self.top_k ** 2
        if not 2 <= self.num_nodes <= candidates + 1:
            raise ValueError(f"num_nodes must be in [2, {candidates + 1}] (root + the "
                             f"{candidates} drafted candidates)")

    @property
    def shape(self) -> DynamicShape:
        return DynamicShape(self.num_nodes, self.depth, self.top_k)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        forward = self._forward(draft_params)
        cache = state.cache
        batch, k, window = seq_len.shape[0], self.top_k, self.window
        committed = seq_len - 1
        window_pos, window_valid, window_tokens = window_inputs(cache.length, committed, window,
                                                                sequence)
        fed_nodes = 1 + k * (self.depth - 1)  # the root, then top_k per expanded depth
        # fed_mask[b, i, j]: fed node j is fed node i or its ancestor (filled as fed)
        fed_mask = jnp.broadcast_to(jnp.eye(fed_nodes, dtype=bool), (batch, fed_nodes, fed_nodes))
        fed_depth = np.concatenate([[0], np.repeat(np.arange(1, self.depth), k)])
        region_positions = jnp.concatenate(
            [window_pos, committed[:, None] + jnp.asarray(fed_depth)[None]], axis=1)

        root = roots(sequence, seq_len)
        mask = region_mask(fed_mask, window_valid)
        logits, hidden, cache = forward(
            jnp.concatenate([window_tokens, root[:, None]], 1),
            self._first_features(draft_params, state, seq_len),
            region_positions[:, : window + 1], cache, mask[:, : window + 1], 0, region_positions,
            logits_from=window)
        ids = vocab_ids(draft_params)
        scores, tokens = jax.lax.top_k(jax.nn.log_softmax(logits[:, 0]), k)  # [B, k]
        tokens = to_target(ids, tokens)
        # candidates: tokens, joint log-probability, parent (candidate index; root = 0)
        cand_tokens, cand_scores = [root[:, None], tokens], [jnp.zeros((batch, 1)), scores]
        cand_parents = [jnp.full((batch, 1), -1), jnp.zeros((batch, k), jnp.int32)]
        frontier = Frontier(tokens=tokens, scores=scores,
                            index=jnp.broadcast_to(1 + jnp.arange(k), (batch, k)),
                            fed_parent=jnp.zeros((batch, k), jnp.int32),
                            hidden=jnp.broadcast_to(hidden[:, -1:], (batch, k, hidden.shape[-1])))
        rows = jnp.arange(batch)[:, None]
        for d in range(1, self.depth):
            slots = 1 + (d - 1) * k + np.arange(k)  # fed-node indices of this frontier
            base = sum(c.shape[1] for c in cand_tokens)

            def expand(carry, d=d, slots=slots, base=base):
                cache, fed_mask, frontier = carry
                seen = jnp.take_along_axis(fed_mask, frontier.fed_parent[..., None], axis=1)
                fed_mask = fed_mask.at[:, slots].set(seen | jnp.eye(fed_nodes, dtype=bool)[slots])
                mask = region_mask(fed_mask, window_valid)[:, window + slots]
                logits, hidden, cache = forward(
                    frontier.tokens, frontier.hidden,
                    jnp.take(region_positions, window + slots, axis=1), cache, mask,
                    window + int(slots[0]), region_positions)
                top_scores, top_tokens = jax.lax.top_k(jax.nn.log_softmax(logits), k)
                top_tokens = to_target(ids, top_tokens)
                joint = (frontier.scores[..., None] + top_scores).reshape(batch, k * k)
                children = (top_tokens.reshape(batch, k * k), joint,
                            jnp.repeat(frontier.index, k, axis=1))
                best_scores, best = jax.lax.top_k(joint, k)
                parent = best // k
                frontier = Frontier(tokens=children[0][rows, best], scores=best_scores,
                                    index=base + best, fed_parent=jnp.asarray(slots)[parent],
                                    hidden=hidden[rows, parent])
                return (cache, fed_mask, frontier), children

            def skip(carry):
                """No row is confident: placeholder children that rank last."""
                frontier = carry[2]
                return carry, (jnp.zeros((batch, k * k), jnp.int32),
                               jnp.full((batch, k * k), -jnp.inf),
                               jnp.repeat(frontier.index, k, axis=1))

            carry = (cache, fed_mask, frontier)
            if self.min_confidence > 0.0:
                confident = jnp.any(frontier.scores.max(-1) >= np.log(self.min_confidence))
                carry, children = jax.lax.cond(confident, expand, skip, carry)
            else:
                carry, children = expand(carry)
            cache, fed_mask, frontier = carry
            cand_tokens.append(children[0])
            cand_scores.append(children[1])
            cand_parents.append(children[2])
        tokens, parents = rerank(jnp.concatenate(cand_tokens, 1),
                                 jnp.concatenate(cand_scores, 1),
                                 jnp.concatenate(cand_parents, 1), self.num_nodes)
        return (DraftTree(tokens, one_hot_probs(tokens, cfg),
                          topology=from_parents(parents, self.depth, self.top_k)),
                state.replace(cache=cache))


def rerank(tokens, scores, parents, num_nodes: int):
    """EAGLE-2's reranking: the root and the `num_nodes - 1` candidates of highest joint
    log-probability `scores` [B, C], in candidate (= topological) order. Returns
    (tokens [B, N], parents [B, N] as node indices, -1 at the root)."""
    batch = tokens.shape[0]
    _, best = jax.lax.top_k(scores[:, 1:], num_nodes - 1)  # ties: the parent first
    chosen = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32),
                              jnp.sort(best, axis=1) + 1], axis=1)  # candidate indices
    node_of = jnp.zeros(tokens.shape, jnp.int32).at[
        jnp.arange(batch)[:, None], chosen].set(jnp.arange(num_nodes))
    chosen_parents = jnp.take_along_axis(parents, chosen, axis=1)
    node_parents = jnp.where(chosen_parents < 0, -1, jnp.take_along_axis(
        node_of, jnp.maximum(chosen_parents, 0), axis=1))
    return jnp.take_along_axis(tokens, chosen, axis=1), node_parents
