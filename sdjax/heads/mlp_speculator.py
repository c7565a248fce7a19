"""The MLP speculator (Wertheimer et al. 2024, IBM's "PyTorch speculator"): a chain
of small stages on the target's last hidden state.

Stage k (k = 0..K-1) takes the state s_k (s_0: the target's final hidden state h of
the token that produced the root) and the embedding of the token at depth k on the
path (the root, then the tokens stages 0..k-1 drafted): one projection, a weighted
add, a LayerNorm and a GELU give s_{k+1}, which its own LM head reads as logits for
depth k + 1. As in the reference, the embedding's weight grows with the number of
stages (state_weight = 0.5 ** (0.5 / K)); the embedding is the target's, RMS-normalised
(so a scale like Gemma's sqrt(D) cancels), so the saved speculator holds only the
projections, norms and heads. Each stage's head is its own, over the full or a
reduced draft vocabulary (`sdjax.heads.common`). Because a node's candidates depend
on its path, the tree is drafted level by level (`PathHeadsDrafter`); re-running the
stages along each path costs K small matrix products, nothing next to one LM head.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdjax.heads.common import HeadsConfig, LMHead, declare_vocab_ids, normalised_embedding
from sdjax.heads.hydra import PathHeadsDrafter, following_tokens


class MLPSpeculatorHeads(nn.Module):
    """K speculator stages, each with its own LM head."""
    config: HeadsConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")  # the target's
        self.projections = [nn.Dense(cfg.hidden_size, use_bias=False, name=f"head_{k}_proj")
                            for k in range(cfg.num_heads)]
        self.norms = [nn.LayerNorm(name=f"head_{k}_norm") for k in range(cfg.num_heads)]
        self.lm_heads = [LMHead(cfg.head_size, name=f"head_{k}_lm")
                         for k in range(cfg.num_heads)]
        declare_vocab_ids(self, cfg.draft_vocab)

    def example_inputs(self):
        return (jnp.zeros((1, self.config.hidden_size)),
                jnp.zeros((1, self.config.num_heads), jnp.int32))

    def _stage(self, k: int, state: jax.Array, token: jax.Array) -> jax.Array:
        """s_{k+1} from s_k [..., D] and the depth-k token [...]."""
        state_weight = 0.5 ** (0.5 / self.config.num_heads)
        emb_weight = math.sqrt(1.0 - state_weight**2)
        x = self.projections[k](state) + (emb_weight / state_weight) * normalised_embedding(
            self.embed.embedding, token)
        return nn.gelu(self.norms[k](x))

    def head(self, k: int, hidden: jax.Array, path_tokens: jax.Array) -> jax.Array:
        """Stage k (0-based): hidden [..., D] and path tokens [..., k + 1] -> logits
        [..., head_size] of the token at depth k + 1."""
        state = hidden.astype(jnp.float32)
        for j in range(k + 1):
            state = self._stage(j, state, path_tokens[..., j])
        return self.lm_heads[k](state)

    def __call__(self, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced: hidden [..., D], tokens [..., K] (t_0..t_{K-1}) -> [..., K, V]."""
        state, logits = hidden.astype(jnp.float32), []
        for k in range(self.config.num_heads):
            state = self._stage(k, state, tokens[..., k])
            logits.append(self.lm_heads[k](state))
        return jnp.stack(logits, axis=-2)

    def teacher_forced(self, hidden: jax.Array, windows: jax.Array) -> jax.Array:
        """Training: hidden [B, T, D] of windows [B, T + 1] -> [B, T, K, V]; at t the
        stages read the corpus tokens t + 1 .. t + K."""
        return self(hidden, following_tokens(windows, hidden.shape[1], self.config.num_heads))


@dataclasses.dataclass(frozen=True)
class MLPSpeculator(PathHeadsDrafter):
    """Drafter: the MLP speculator's stages, level by level over a choice tree (a chain
    is the reference's shape; depth <= stages)."""

    module_class = MLPSpeculatorHeads
