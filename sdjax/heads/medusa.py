"""Medusa-1 (Cai et al. 2024): K heads on the target's last hidden state.

Head k (k = 1..K) reads the final hidden state h_t of the token that produced the
next token and predicts the token k positions after that one: a residual SiLU
block (zero-initialised, so it starts as the identity), then the LM head all heads
share (the target's, or a reduced one of their own: `sdjax.heads.common`). Heads
do not see each other's tokens, so every
node at depth k takes its candidates from head k: greedy, the parent's top-w of
head k's logits; sampling, w draws without replacement (the lossless tree rule).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import SpecConfig
from sdjax.drafters.base import add_children, root_filled
from sdjax.heads.common import (
    HeadsConfig,
    LMHead,
    TreeHeadsDrafter,
    declare_vocab_ids,
    vocab_ids,
)
from sdjax.protocols import DraftTree


class MedusaHeads(nn.Module):
    """K Medusa heads on one hidden state."""
    config: HeadsConfig

    def setup(self):
        cfg = self.config
        self.residuals = [nn.Dense(cfg.hidden_size, kernel_init=nn.initializers.zeros,
                                   name=f"head_{k}_res") for k in range(cfg.num_heads)]
        self.lm_head = LMHead(cfg.head_size, name="lm_head")
        declare_vocab_ids(self, cfg.draft_vocab)

    def example_inputs(self):
        return (jnp.zeros((1, self.config.hidden_size)),)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """[..., D] hidden states -> [..., K, head_size] float32 logits of the K heads."""
        hidden = hidden.astype(jnp.float32)
        return jnp.stack([self.lm_head(hidden + nn.silu(residual(hidden)))
                          for residual in self.residuals], axis=-2)

    def teacher_forced(self, hidden: jax.Array, windows: jax.Array) -> jax.Array:
        """Training: hidden [B, T, D] -> [B, T, K, V] (heads read no tokens)."""
        return self(hidden)


@dataclasses.dataclass(frozen=True)
class Medusa(TreeHeadsDrafter):
    """Drafter: Medusa heads' candidates arranged by a choice tree (depth <= heads)."""

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        logits = MedusaHeads(self.heads).apply(draft_params, state.hidden)  # [B, K, V]
        shape, batch, ids = self.tree, seq_len.shape[0], vocab_ids(draft_params)
        tokens, probs = root_filled(sequence, seq_len, shape.num_nodes, self.heads.vocab_size,
                                    cfg)
        for d in range(shape.max_depth):
            fed = np.flatnonzero(shape.depth == d)
            level = jnp.broadcast_to(logits[:, d:d + 1], (batch, len(fed), logits.shape[-1]))
            tokens, probs = add_children(shape, fed, level, tokens, probs,
                                         jax.random.fold_in(key, d), cfg, ids)
        return DraftTree(tokens, probs), state
