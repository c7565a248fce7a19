"""Lookahead decoding (Fu et al. 2024): drafts from n-grams that the target's own
Jacobi iteration writes, with no draft model.

Each cycle's verify forward carries, beside the tree, a 2-D window of guesses as
non-candidate tokens (`sdjax.protocols.NonCandidates`): `ngram - 1` levels of `window`
columns. Level 0 is the root, then W - 1 guesses, at offsets 0..W-1 from the root;
level l holds W guesses at offsets l..l+W-1. The guess at (l, c) attends to level 0's
columns 0..c and to levels 1..l of column c: a run of consecutive positions after
the committed text. The target's greedy outputs at the last level are the next
guesses: each level moves down one (level 0 takes level 1's columns 1.. behind the
next root), the outputs become the last level, and column c yields an n-gram for the
pool: level 0's token (the root, for column 0), the column's tokens of levels 1..,
and the new output. Only the last level's outputs are scored by the LM head.

The pool is a ring of each sequence's `pool_size` most recently seen distinct
n-grams, on the device (an n-gram seen again moves to the front, as in the
reference's LRU; the reference caps each first token's n-grams instead, this ring
caps them all together). The `candidates` most recent whose first token is the root
are merged into a trie, and its `num_nodes - 1` most frequent prefixes become the
tree (as in REST; the reference verifies each n-gram as its own chain). With
`from_context` the n-grams of the prompt's last `pool_size` tokens and of every
committed token join the pool too (the reference's POOL_FROM_PROMPT), so the
sequence's own repeats are drafted as prompt lookup would.

The window starts as the prompt's latest tokens (the reference's are random prompt
tokens) and runs whole from the first cycle; n-grams are pooled from the cycle its
levels 1.. hold only the target's outputs. Its outputs are greedy (as the
reference's) and can be scored over a reduced vocabulary's rows of the LM head
(`draft_params={"vocab_ids": ids}`): they need only be good guesses, and on Gemma 3
the 262k-row head costs more than the layers. The drafts are deterministic given the
state, so tree rejection sampling keeps sampled output exactly the target's.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import SpecConfig
from sdjax.drafters.base import roots
from sdjax.drafters.rest import prefix_tree
from sdjax.drafters.vocab import bind_head, check_head_params, to_target
from sdjax.protocols import Drafter, NonCandidates
from sdjax.trees import DynamicShape
from sdjax.validation import check_range


@flax.struct.dataclass
class LookaheadState:
    """The Jacobi window, the last forward's outputs, and the n-gram pool of each sequence."""
    guesses: jax.Array  # [B, ngram - 1, W] by level; level 0's column 0 is the root's place
    outputs: jax.Array  # [B, W] the target's last-level outputs (head indices), last cycle
    cycles: jax.Array  # [B] forwards the window has been through
    pool: jax.Array  # [B, P, ngram] distinct n-grams, -1 where empty
    next_slot: jax.Array  # [B] where the ring writes next (after the most recent)
    seen: jax.Array  # [B] committed tokens whose n-grams were offered to the pool


def remember(state: LookaheadState, ngrams: jax.Array, keep: jax.Array) -> LookaheadState:
    """The state with the n-grams [B, T, n] that `keep` [B, T] marks written to the
    front of the pool, in order (the last of repeated ones counts); one the pool holds
    already moves there from its old slot. When more than the pool holds are kept,
    the last ones."""
    size = state.pool.shape[1]
    same = jnp.all(ngrams[:, :, None] == ngrams[:, None], axis=-1)  # [B, T, T]
    later = jnp.triu(jnp.ones(same.shape[1:], bool), 1)
    keep = keep & ~(same & later & keep[:, None]).any(axis=-1)
    count = jnp.cumsum(keep, axis=1)
    total = count[:, -1:]
    keep = keep & (total - count < size)
    moved = jnp.all(ngrams[:, :, None] == state.pool[:, None], axis=-1) & keep[..., None]
    pool = jnp.where(moved.any(axis=1)[..., None], -1, state.pool)  # [B, P, n]
    slot = (state.next_slot[:, None] + count - 1 - jnp.maximum(total - size, 0)) % size
    rows = jnp.arange(ngrams.shape[0])[:, None]
    pool = pool.at[rows, jnp.where(keep, slot, size)].set(ngrams, mode="drop")
    return state.replace(pool=pool,
                         next_slot=(state.next_slot + jnp.minimum(total[:, 0], size)) % size)


def ngrams_ending(sequence: jax.Array, ends: jax.Array, n: int) -> jax.Array:
    """The n-grams [B, T, n] of `sequence` [B, L] that end at indices `ends` [B, T]."""
    index = ends[:, :, None] - n + 1 + jnp.arange(n)
    batch = sequence.shape[0]
    flat = jnp.clip(index, 0, sequence.shape[1] - 1).reshape(batch, -1)
    return jnp.take_along_axis(sequence, flat, axis=1).reshape(index.shape)


@dataclasses.dataclass(frozen=True)
class Lookahead(Drafter):
    """Lookahead decoding: a Jacobi window of `window` positions x `ngram - 1` levels
    scored beside a tree of up to `candidates` n-grams from the pool."""
    # Small by default: on a CPU every token in the forward costs (BENCHMARKS.md).
    window: int = 5  # W
    ngram: int = 4  # N: n-grams of N tokens, drafts of N - 1
    candidates: int = 4  # G: pool n-grams that start with the root, merged into the tree
    num_nodes: int = 8  # tree nodes, the root included
    pool_size: int = 1024  # n-grams each sequence keeps (from_context: the prompt's too)
    from_context: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "window", 1)
        check_range(self, "ngram", 3)
        check_range(self, "candidates", 1)
        check_range(self, "num_nodes", 2)
        check_range(self, "pool_size", self.candidates)
        if self.num_nodes - 1 > self.candidates * (self.ngram - 1):
            raise ValueError(f"Lookahead.num_nodes - 1 = {self.num_nodes - 1} drafts exceed "
                             f"the {self.candidates} candidates x {self.ngram - 1} tokens")

    @property
    def shape(self) -> DynamicShape:
        return DynamicShape(self.num_nodes, self.ngram - 1, self.num_nodes - 1)

    @property
    def num_extra(self) -> int:
        return self.window - 1 + (self.ngram - 2) * self.window

    def check(self, cfg: SpecConfig, draft_params) -> None:
        check_head_params("Lookahead", draft_params, cfg.model.vocab_size)

    def bind(self, draft_params, target_params):
        return bind_head(draft_params, target_params)

    def layout(self):
        """The window as non-candidates (numpy constants), the last level last: for each,
        its (level, column), its offset from the root, and its mask over [tree nodes,
        non-candidates]."""
        levels, width = self.ngram - 1, self.window
        cells = [(0, c) for c in range(1, width)] + [
            (level, c) for level in range(1, levels) for c in range(width)]
        index = {cell: self.num_nodes + i for i, cell in enumerate(cells)}
        index[(0, 0)] = 0  # the root, tree node 0
        mask = np.zeros((len(cells), self.num_nodes + len(cells)), bool)
        for i, (level, c) in enumerate(cells):
            mask[i, [index[(0, k)] for k in range(c + 1)]] = True
            mask[i, [index[(k, c)] for k in range(1, level + 1)]] = True
        cells = np.asarray(cells, np.int32)
        return cells, cells.sum(axis=1), mask

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """The window filled with the prompt's latest tokens; the pool empty (or with
        the n-grams of the prompt's last `pool_size` tokens, `from_context`)."""
        batch, bucket = prompt_tokens.shape
        cells = (self.ngram - 1) * self.window
        back = jnp.arange(cells)[::-1] % jnp.maximum(prompt_lengths[:, None], 1)
        guesses = jnp.take_along_axis(prompt_tokens, prompt_lengths[:, None] - 1 - back, axis=1)
        state = LookaheadState(
            guesses=guesses.reshape(batch, self.ngram - 1, self.window),
            outputs=jnp.zeros((batch, self.window), jnp.int32),
            cycles=jnp.zeros((batch,), jnp.int32),
            pool=jnp.full((batch, self.pool_size, self.ngram), -1, jnp.int32),
            next_slot=jnp.zeros((batch,), jnp.int32),
            seen=prompt_lengths)
        if not self.from_context:
            return state
        count = min(bucket, self.pool_size)  # bounds remember's [B, T, T] comparison
        ends = prompt_lengths[:, None] - count + jnp.arange(count)
        return remember(state, ngrams_ending(prompt_tokens, ends, self.ngram),
                        ends >= self.ngram - 1)

    def advance(self, state: LookaheadState, vocab_ids) -> LookaheadState:
        """The last forward's outputs pooled as n-grams with their columns (from the
        cycle the levels above 0 hold only the target's outputs) and moved into the
        window: each level moves down one, the outputs become the last."""
        outputs = to_target(vocab_ids, state.outputs)
        levels = state.guesses.shape[1]
        ngrams = jnp.concatenate([state.guesses, outputs[:, None]], axis=1)  # [B, N, W]
        keep = jnp.broadcast_to((state.cycles >= levels)[:, None], outputs.shape)
        state = remember(state, jnp.swapaxes(ngrams, 1, 2), keep)
        # Level 1 becomes level 0, whose column 0 is then the next root's place.
        moved = jnp.concatenate([state.guesses[:, 1:], outputs[:, None]], axis=1)
        return state.replace(guesses=jnp.where((state.cycles > 0)[:, None, None], moved,
                                               state.guesses))

    def propose(self, draft_params, state: LookaheadState, sequence, seq_len, key, cfg):
        state = self.advance(state, draft_params["vocab_ids"])
        if self.from_context:
            ends = state.seen[:, None] + jnp.arange(self.ngram)  # at most N new per cycle
            keep = (ends < seq_len[:, None]) & (ends >= self.ngram - 1)
            state = remember(state, ngrams_ending(sequence, ends, self.ngram), keep)
            state = state.replace(seen=seq_len)
        root = roots(sequence, seq_len)
        state = state.replace(guesses=state.guesses.at[:, 0, 0].set(root))
        size = self.pool_size
        age = (state.next_slot[:, None] - 1 - jnp.arange(size)) % size
        score = jnp.where(state.pool[:, :, 0] == root[:, None], size - age, 0)
        best, slots = jax.lax.top_k(score, self.candidates)  # the most recent first
        continuations = jnp.take_along_axis(state.pool[:, :, 1:], slots[:, :, None], axis=1)
        tree = prefix_tree(continuations, (best > 0).astype(jnp.int32), sequence, seq_len,
                           self.num_nodes, cfg)
        cells, offsets, mask = self.layout()
        extra = NonCandidates(state.guesses[:, cells[:, 0], cells[:, 1]], jnp.asarray(offsets),
                              jnp.asarray(mask), draft_params["head"],
                              scored_from=self.num_extra - self.window)
        return tree.replace(extra=extra), state

    def commit(self, state: LookaheadState, result, committed_length, features=None,
               extra_logits=None):
        """Keeps the last level's outputs (`extra_logits` [B, W, V or K]) for `advance`."""
        return state.replace(outputs=jnp.argmax(extra_logits, axis=-1).astype(jnp.int32),
                             cycles=state.cycles + 1)
