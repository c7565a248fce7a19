"""Prompt lookup (n-gram) drafting: copy what followed the last n tokens before.

For n from `max_ngram` down to `min_ngram`, find the most recent earlier occurrence
of the row's last n tokens in its prompt + generated text and propose the
`num_draft` tokens that followed it. Pure array code: no host round trip.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from sdjax.drafters.base import DraftTree, one_hot_probs, roots
from sdjax.trees import TreeShape, chain


@dataclasses.dataclass(frozen=True)
class PromptLookup:
    num_draft: int = 8
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if self.num_draft < 1:
            raise ValueError("num_draft must be >= 1")

    @property
    def shape(self) -> TreeShape:
        return chain(self.num_draft)

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len):
        return ()

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        length = sequence.shape[1]
        starts = jnp.arange(length)
        rows = jnp.arange(sequence.shape[0])[:, None]
        follow = jnp.full(seq_len.shape, -1)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            suffix = sequence[rows, jnp.maximum(seq_len[:, None] - n + jnp.arange(n), 0)]
            match = (starts[None] + n < seq_len[:, None]) & (seq_len[:, None] > n)
            for k in range(n):
                match &= sequence[:, jnp.minimum(starts + k, length - 1)] == suffix[:, k:k + 1]
            last_start = jnp.max(jnp.where(match, starts[None], -1), axis=1)
            follow = jnp.where((follow < 0) & (last_start >= 0), last_start + n, follow)
        index = jnp.where(follow[:, None] >= 0, follow[:, None] + jnp.arange(self.num_draft),
                          seq_len[:, None] - 1)
        drafts = sequence[rows, jnp.minimum(index, seq_len[:, None] - 1)]
        tokens = jnp.concatenate([roots(sequence, seq_len)[:, None], drafts], axis=1)
        return DraftTree(tokens, one_hot_probs(tokens, cfg)), state

    def commit(self, state, result, committed_length):
        return state
