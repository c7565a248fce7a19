"""REST (He et al. 2024): drafts retrieved from a datastore of real text.

Each cycle, each row's longest context suffix (from `max_query` tokens down to
`min_query`) that occurs in the datastore is found by binary search of its suffix
array (`sdjax.drafters.datastore`); the `depth` tokens that followed up to
`num_matches` of its occurrences (all of them, or that many spread evenly over the
sorted range) are counted as a trie, and the `num_nodes - 1` most frequent prefixes
(shallower first on ties, so every chosen prefix's parent is chosen too) become this
cycle's tree. Pure array code with static shapes; no host callback.

With `context = c > 0` the row's own text is a second source (as in SAM-decoding):
the continuations of its `c` latest longest earlier matches in its prompt and generated
text (prompt lookup's search) join the trie, each counted `num_matches` times (at least
as often as all datastore matches together), so the row's own repeats come first and
the datastore's continuations fill the rest of the tree.

The drafts are deterministic given the context, so under sampling the tree is verified
by tree rejection sampling with one-hot draft laws: the output follows the target's
law exactly (the reference implementation's pick of the best row is not exact).
Rows with fewer distinct prefixes, or no match at all, pad the tree with children of
the root that repeat the root's token; verification treats them as any other draft.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sdjax.drafters.base import one_hot_probs, roots
from sdjax.drafters.datastore import Datastore, match_range, windows
from sdjax.drafters.prompt_lookup import PromptLookup
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import DynamicShape
from sdjax.trees.topology import from_parents


def most_frequent_prefixes(continuations: jax.Array, weights: jax.Array, count: int):
    """The `count` most frequent distinct prefixes of the continuations [B, M, D]
    (-1: no token), each row counted `weights` [B, M] times (0: ignored), as trie
    nodes in an order where parents precede children: (tokens [B, count], parents
    [B, count], 1 + the index of the parent node, 0 for the root; real [B, count],
    False where fewer prefixes exist). Ties go to the shallower prefix, then the
    earlier row."""
    batch, rows, depth = continuations.shape
    present = jnp.cumprod((continuations >= 0) & (weights > 0)[..., None], axis=-1)
    present = present.astype(bool)
    # same[b, m, n, d]: rows m and n share their first d + 1 tokens (n's present)
    same = jnp.cumprod(continuations[:, :, None] == continuations[:, None], axis=-1)
    same = same.astype(bool) & present[:, None]
    frequency = jnp.einsum("bmnd,bn->bmd", same.astype(jnp.int32), weights)
    first = jnp.argmax(same, axis=2)  # the first row with m's prefix: its representative
    row, level = jnp.arange(rows)[:, None], jnp.arange(depth)
    representative = present & (first == row)
    score = frequency * (depth * rows) + (depth - 1 - level) * rows + (rows - 1 - row)
    best, ids = jax.lax.top_k(jnp.where(representative, score, -1).reshape(batch, -1), count)
    chosen_row, chosen_level = ids // depth, ids % depth
    take = lambda x, m, d: x[jnp.arange(batch)[:, None], m, d]
    tokens = take(continuations, chosen_row, chosen_level)
    parent_id = take(first, chosen_row, jnp.maximum(chosen_level - 1, 0)) * depth + (
        chosen_level - 1)
    parent = 1 + jnp.argmax(ids[:, None, :] == parent_id[:, :, None], axis=-1)
    real = best >= 0
    return tokens, jnp.where(real & (chosen_level > 0), parent, 0), real


def prefix_tree(continuations: jax.Array, weights: jax.Array, sequence: jax.Array,
                seq_len: jax.Array, num_nodes: int, cfg) -> DraftTree:
    """The tree of the `num_nodes - 1` most frequent prefixes of each row's
    continuations [B, M, D] (`most_frequent_prefixes`) under its root, with one-hot
    draft laws. Rows with fewer distinct prefixes pad it with children of the root
    that repeat the root's token."""
    tokens, parents, real = most_frequent_prefixes(continuations, weights, num_nodes - 1)
    root = roots(sequence, seq_len)[:, None]
    tokens = jnp.concatenate([root, jnp.where(real, tokens, root)], axis=1)
    parents = jnp.concatenate([jnp.full_like(root, -1), parents], axis=1)
    topology = from_parents(parents, continuations.shape[2], num_nodes - 1)
    return DraftTree(tokens, one_hot_probs(tokens, cfg), topology=topology)


@dataclasses.dataclass(frozen=True)
class Rest(Drafter):
    """Drafts the most frequent continuations of the context in a datastore (the
    draft params: `sdjax.drafters.datastore.load_datastore(folder)`)."""
    # Small trees by default: on a CPU the verify forward's cost grows with the nodes
    # (Gemma 3 270M: 8 nodes 1.19x a one-token step, 16 nodes 1.49x; BENCHMARKS.md).
    num_nodes: int = 8  # tree nodes, the root included
    depth: int = 6  # tokens retrieved after each match: the tree's depth bound
    max_query: int = 16  # longest context suffix searched
    min_query: int = 2
    num_matches: int = 64  # occurrences counted into the trie
    context: int = 0  # the row's own latest matches counted in too (0: the datastore only)

    def __post_init__(self):
        super().__post_init__()
        if self.num_nodes < 2 or self.depth < 1 or self.num_matches < 1 or self.context < 0:
            raise ValueError("need num_nodes >= 2, depth >= 1, num_matches >= 1 and "
                             "context >= 0")
        if not 1 <= self.min_query <= self.max_query:
            raise ValueError("need 1 <= min_query <= max_query")
        rows = self.num_matches + self.context
        if self.num_matches * (1 + self.context) * self.depth * rows >= 2**31:
            raise ValueError("num_matches, context and depth too large: the trie's int32 "
                             "scores would overflow")
        if self.num_nodes - 1 > self.num_matches * self.depth:
            raise ValueError(f"num_nodes - 1 = {self.num_nodes - 1} drafts exceed the "
                             f"{self.num_matches} x {self.depth} tokens retrieved")

    @property
    def shape(self) -> DynamicShape:
        return DynamicShape(self.num_nodes, self.depth, self.num_nodes - 1)

    def check(self, cfg, draft_params) -> None:
        if not isinstance(draft_params, Datastore):
            raise ValueError("Rest drafts from a datastore: pass draft_params="
                             "sdjax.drafters.load_datastore(folder) (`sdjax datastore build`)")
        if draft_params.max_id >= cfg.model.vocab_size:
            raise ValueError(f"the datastore holds token id {draft_params.max_id}, outside "
                             f"the target's vocabulary of {cfg.model.vocab_size}")
        if self.max_query > draft_params.depth:
            raise ValueError(f"Rest(max_query={self.max_query}) needs a datastore sorted by "
                             f"at least that many tokens; this one's depth is "
                             f"{draft_params.depth} (lower max_query or rebuild with --depth)")

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return ()

    def retrieve(self, datastore: Datastore, sequence, seq_len):
        """The continuations [B, num_matches, depth] of each row's longest matching
        context suffix in the datastore, and their weights [B, num_matches] (1, or 0
        where there are fewer matches)."""
        batch, width = sequence.shape
        lengths = jnp.arange(self.max_query, self.min_query - 1, -1)  # longest first
        index = seq_len[:, None, None] - lengths[:, None] + jnp.arange(self.max_query)
        query = jnp.take_along_axis(sequence, jnp.clip(index, 0, width - 1).reshape(batch, -1),
                                    axis=1).reshape(index.shape)
        lo, hi = match_range(datastore, query, jnp.broadcast_to(lengths, (batch, len(lengths))))
        found = (hi > lo) & (seq_len[:, None] >= lengths)
        longest = jnp.argmax(found, axis=1)[:, None]
        lo = jnp.take_along_axis(lo, longest, 1)[:, 0]
        matches = jnp.where(found.any(1), jnp.take_along_axis(hi, longest, 1)[:, 0] - lo, 0)
        # All matches, or num_matches spread evenly over the sorted range.
        slot = jnp.arange(self.num_matches)
        spread = jnp.floor(slot * (matches[:, None] / self.num_matches)).astype(jnp.int32)
        rows = lo[:, None] + jnp.where(matches[:, None] > self.num_matches, spread, slot)
        starts = datastore.suffix_array[jnp.clip(rows, 0, datastore.size - 1)]
        return (windows(datastore, starts + lengths[longest], self.depth),
                (slot < matches[:, None]).astype(jnp.int32))

    def own_matches(self, sequence, seq_len):
        """The continuations [B, context, depth] of the row's own latest longest
        earlier matches (-1 past its end), and their weights [B, context]."""
        search = PromptLookup(num_draft=self.depth, max_ngram=self.max_query,
                              min_ngram=self.min_query, num_branches=self.context)
        follow = search.continuations(sequence, seq_len)  # [B, context], -1: none
        index = follow[:, :, None] + jnp.arange(self.depth)
        inside = (follow[:, :, None] >= 0) & (index < seq_len[:, None, None])
        tokens = jnp.take_along_axis(sequence, jnp.where(inside, index, 0).reshape(
            index.shape[0], -1), axis=1).reshape(index.shape)
        return jnp.where(inside, tokens, -1), jnp.where(follow >= 0, self.num_matches, 0)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        continuations, weights = self.retrieve(draft_params, sequence, seq_len)
        if self.context:
            own, own_weights = self.own_matches(sequence, seq_len)
            continuations = jnp.concatenate([continuations, own], axis=1)
            weights = jnp.concatenate([weights, own_weights], axis=1)
        return prefix_tree(continuations, weights, sequence, seq_len, self.num_nodes,
                           cfg), state

    def commit(self, state, result, committed_length, features=None):
        return state


def rest_for(datastore: Datastore, **fields) -> Rest:
    """`Rest(**fields)` searching suffixes no longer than `datastore` was sorted by (the
    CLI's and the bench's REST, whatever `--depth` the datastore was built with)."""
    return Rest(max_query=min(Rest.max_query, datastore.depth), **fields)

