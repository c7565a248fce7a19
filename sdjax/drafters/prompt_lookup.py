"""Prompt lookup (n-gram) drafting: copy what followed the last n tokens before.

Each row's last n tokens (n from `max_ngram` down to `min_ngram`) are looked up in
its prompt + generated text; the `num_branches` best earlier occurrences (longest
n first, then most recent) each propose the `num_draft` tokens that followed them,
as the branches of a tree (one branch: a chain). Pure array code: no host round
trip. A row without a match proposes its root repeated, which verification rejects.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sdjax.drafters.base import one_hot_probs, roots
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import TreeShape, branches


@dataclasses.dataclass(frozen=True)
class PromptLookup(Drafter):
    """Drafts what followed the latest n-gram match in the row's own text."""
    num_draft: int = 7  # 8 nodes with the root: see DEFAULT_TREE's note on node counts
    max_ngram: int = 3
    min_ngram: int = 1
    num_branches: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if self.num_draft < 1 or self.num_branches < 1:
            raise ValueError("num_draft and num_branches must be >= 1")

    @property
    def shape(self) -> TreeShape:
        return branches(self.num_branches, self.num_draft)

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return ()

    def continuations(self, sequence, seq_len):
        """[B, num_branches] index of the token after each chosen match (-1: none).

        Candidates are indexed by that following position, scored by the longest n
        that matches there, then by recency, so no continuation is proposed twice."""
        length = sequence.shape[1]
        follows = jnp.arange(length)
        rows = jnp.arange(sequence.shape[0])[:, None]
        longest = jnp.zeros(sequence.shape, jnp.int32)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            suffix = sequence[rows, jnp.maximum(seq_len[:, None] - n + jnp.arange(n), 0)]
            # An earlier copy of the suffix ending just before position f.
            match = (follows[None] >= n) & (follows[None] < seq_len[:, None])
            match &= seq_len[:, None] > n
            for k in range(n):
                match &= sequence[:, jnp.maximum(follows - n + k, 0)] == suffix[:, k:k + 1]
            longest = jnp.where((longest == 0) & match, n, longest)
        score = jnp.where(longest > 0, longest * length + follows[None], -1)
        best, _ = jax.lax.top_k(score, self.num_branches)
        return jnp.where(best >= 0, best % length, -1)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        follow = self.continuations(sequence, seq_len)  # [B, branches]
        steps = jnp.arange(self.num_draft)
        index = jnp.where(follow[:, :, None] >= 0, follow[:, :, None] + steps,
                          seq_len[:, None, None] - 1)
        index = jnp.minimum(index, seq_len[:, None, None] - 1)  # [B, branches, draft]
        drafts = jnp.take_along_axis(sequence, index.reshape(index.shape[0], -1), axis=1)
        # Level-by-level node order: depth-major, branch-minor.
        drafts = drafts.reshape(index.shape).transpose(0, 2, 1).reshape(index.shape[0], -1)
        tokens = jnp.concatenate([roots(sequence, seq_len)[:, None], drafts], axis=1)
        return DraftTree(tokens, one_hot_probs(tokens, cfg)), state

    def commit(self, state, result, committed_length, features=None):
        return state
