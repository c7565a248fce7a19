"""Lookahead decoding (Fu et al. 2024): drafts from n-grams that the target's own
Jacobi iteration writes, with no draft model.

Each cycle's verify forward carries, beside the tree, a 2-D window of guesses as
non-candidate tokens (`sdjax.protocols.NonCandidates`): `ngram - 1` rows of `window`
columns. Row 0 is the root, then W - 1 guesses, at offsets 0..W-1 from the root; row
l holds W guesses at offsets l..l+W-1. The guess at (l, c) attends to row 0's
columns 0..c and to rows 1..l of column c: a run of consecutive positions after the
committed text. The target's greedy outputs at the last row are the next guesses:
each row moves up one (row 0 takes row 1's columns 1.. behind the next root), the
outputs become the last row, and column c yields an n-gram for the pool: row 0's
token, the column's tokens of rows 1.., and the new output.

The pool is a ring of each row's `pool_size` latest distinct n-grams, on the device;
the `candidates` latest whose first token is the root are merged into a trie, and
its `num_nodes - 1` most frequent prefixes become the tree (as in REST). With
`from_context` the n-grams of the prompt and of every committed token join the pool
too (the reference's POOL_FROM_PROMPT), so the row's own repeats are drafted as
prompt lookup would.

The window's outputs are greedy (as the reference's) and can be scored over a
reduced vocabulary's rows of the LM head (`draft_params={"vocab_ids": ids}`): they
need only be good guesses, and on Gemma 3 the 262k-row head would otherwise cost
more than the layers for every window token. The drafts are deterministic given the
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
    """The Jacobi window, the last forward's outputs, and the n-gram pool of each row."""
    window: jax.Array  # [B, ngram - 1, W] guesses; row 0's column 0 is the root's place
    outputs: jax.Array  # [B, W] the target's last-row outputs (head indices), last cycle
    cycles: jax.Array  # [B] forwards the window has been through
    pool: jax.Array  # [B, P, ngram] distinct n-grams, -1 where empty
    next_slot: jax.Array  # [B] the ring's oldest slot, written next
    seen: jax.Array  # [B] tokens whose n-grams are in the pool (from_context)


def remember(state: LookaheadState, ngrams: jax.Array, keep: jax.Array) -> LookaheadState:
    """The state with the n-grams [B, T, n] that `keep` [B, T] marks added to the pool,
    except those it holds already or that repeat an earlier one of them; when more than
    the pool holds are new, the latest."""
    size = state.pool.shape[1]
    known = jnp.all(ngrams[:, :, None] == state.pool[:, None], axis=-1).any(axis=-1)
    same = jnp.all(ngrams[:, :, None] == ngrams[:, None], axis=-1)  # [B, T, T]
    earlier = jnp.tril(jnp.ones(same.shape[1:], bool), -1)
    keep = keep & ~known & ~(same & earlier & keep[:, None]).any(axis=-1)
    count = jnp.cumsum(keep, axis=1)
    total = count[:, -1:]
    keep = keep & (total - count < size)
    slot = (state.next_slot[:, None] + count - 1 - jnp.maximum(total - size, 0)) % size
    rows = jnp.arange(ngrams.shape[0])[:, None]
    pool = state.pool.at[rows, jnp.where(keep, slot, size)].set(ngrams, mode="drop")
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
    """Lookahead decoding: a Jacobi window of `window` positions x `ngram - 1` rows
    scored beside a tree of up to `candidates` n-grams from the pool."""
    # Small by default: on a CPU every token in the forward costs (BENCHMARKS.md).
    window: int = 5  # W
    ngram: int = 4  # N: n-grams of N tokens, drafts of N - 1
    candidates: int = 4  # G: pool n-grams that start with the root, merged into the tree
    num_nodes: int = 8  # tree nodes, the root included
    pool_size: int = 1024  # n-grams each row keeps (with from_context: the prompt's too)
    from_context: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "window", 1)
        check_range(self, "ngram", 3)
        check_range(self, "candidates", 1)
        check_range(self, "num_nodes", 2)
        check_range(self, "pool_size", 1)
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
        """The window as non-candidates (numpy constants): for each, its (row, column),
        its offset from the root, and its mask over [tree nodes, non-candidates]."""
        rows, width = self.ngram - 1, self.window
        cells = [(0, c) for c in range(1, width)] + [
            (r, c) for r in range(1, rows) for c in range(width)]
        index = {cell: self.num_nodes + i for i, cell in enumerate(cells)}
        index[(0, 0)] = 0  # the root, tree node 0
        mask = np.zeros((len(cells), self.num_nodes + len(cells)), bool)
        for i, (r, c) in enumerate(cells):
            mask[i, [index[(0, k)] for k in range(c + 1)]] = True
            mask[i, [index[(k, c)] for k in range(1, r + 1)]] = True
        cells = np.asarray(cells, np.int32)
        return cells, cells.sum(axis=1), mask

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """The window filled with the prompt's latest tokens; the pool empty (or with
        the prompt's n-grams, `from_context`)."""
        batch, bucket = prompt_tokens.shape
        cells = (self.ngram - 1) * self.window
        back = jnp.arange(cells)[::-1] % jnp.maximum(prompt_lengths[:, None], 1)
        window = jnp.take_along_axis(prompt_tokens, prompt_lengths[:, None] - 1 - back, axis=1)
        state = LookaheadState(
            window=window.reshape(batch, self.ngram - 1, self.window),
            outputs=jnp.zeros((batch, self.window), jnp.int32),
            cycles=jnp.zeros((batch,), jnp.int32),
            pool=jnp.full((batch, self.pool_size, self.ngram), -1, jnp.int32),
            next_slot=jnp.zeros((batch,), jnp.int32),
            seen=prompt_lengths)
        if not self.from_context:
            return state
        ends = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        keep = (ends >= self.ngram - 1) & (ends < prompt_lengths[:, None])
        return remember(state, ngrams_ending(prompt_tokens, ends, self.ngram), keep)

    def advance(self, state: LookaheadState, vocab_ids) -> LookaheadState:
        """The last forward's outputs pooled as n-grams (once the window holds only the
        target's guesses) and moved into the window."""
        outputs = to_target(vocab_ids, state.outputs)
        rows = state.window.shape[1]
        ngrams = jnp.concatenate([state.window, outputs[:, None]], axis=1)  # [B, N, W]
        keep = jnp.broadcast_to((state.cycles >= rows)[:, None], outputs.shape)
        state = remember(state, jnp.swapaxes(ngrams, 1, 2), keep)
        # Row 1 becomes row 0 (its column 0 is then the next root's place), and so on.
        window = jnp.concatenate([state.window[:, 1:], outputs[:, None]], axis=1)
        return state.replace(window=jnp.where((state.cycles > 0)[:, None, None], window,
                                              state.window))

    def propose(self, draft_params, state: LookaheadState, sequence, seq_len, key, cfg):
        state = self.advance(state, draft_params["vocab_ids"])
        if self.from_context:
            ends = state.seen[:, None] + jnp.arange(self.ngram)  # at most N new per cycle
            keep = (ends < seq_len[:, None]) & (ends >= self.ngram - 1)
            state = remember(state, ngrams_ending(sequence, ends, self.ngram), keep)
            state = state.replace(seen=seq_len)
        root = roots(sequence, seq_len)
        state = state.replace(window=state.window.at[:, 0, 0].set(root))
        size = self.pool_size
        age = (state.next_slot[:, None] - 1 - jnp.arange(size)) % size
        score = jnp.where(state.pool[:, :, 0] == root[:, None], size - age, 0)
        best, slots = jax.lax.top_k(score, self.candidates)
        continuations = jnp.take_along_axis(state.pool[:, :, 1:], slots[:, :, None], axis=1)
        tree = prefix_tree(continuations, (best > 0).astype(jnp.int32), sequence, seq_len,
                           self.num_nodes, cfg)
        cells, offsets, mask = self.layout()
        guesses = state.window[:, cells[:, 0], cells[:, 1]]
        extra = NonCandidates(guesses, jnp.asarray(offsets), jnp.asarray(mask),
                              draft_params["head"])
        return tree.replace(extra=extra), state

    def commit(self, state: LookaheadState, result, committed_length, features=None,
               extra_logits=None):
        last_row = extra_logits[:, -self.window:]
        return state.replace(outputs=jnp.argmax(last_row, axis=-1).astype(jnp.int32),
                             cycles=state.cycles + 1)
