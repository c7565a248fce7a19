"""Hydra (Ankner et al. 2024): sequentially dependent draft heads.

Head k (k = 1..K) sees the target's hidden state h and the embeddings of the tokens
on the path before its own: the root (the target's own next token) and the tokens
heads 1..k-1 drafted. An input layer maps [h; e(t_0); ...; e(t_{k-1})] to the
hidden size (initialised to pass h through), then a residual SiLU block and the LM
head all heads share (the target's, or a reduced one of their own). The embedding
is the target's (scaled as the target scales it). Because a node's candidates
depend on its path, the tree is drafted level by level.
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
from sdjax.models.transformer import embed_rows
from sdjax.protocols import DraftTree


def pass_hidden(key, shape, dtype=jnp.float32):
    """A [n * D, D] kernel that starts as the projection onto h, the first D of the
    inputs (Hydra's [h; path embeddings], ReDrafter's [h; GRU state])."""
    eye = jnp.eye(shape[1], dtype=dtype)
    return jnp.concatenate([eye, jnp.zeros((shape[0] - shape[1], shape[1]), dtype)], axis=0)


def following_tokens(windows: jax.Array, length: int, count: int) -> jax.Array:
    """[B, length, count]: at t, the corpus tokens t + 1 .. t + count of windows
    [B, length + 1] (zeros past the end): the path a head reads, teacher-forced."""
    padded = jnp.pad(windows, ((0, 0), (0, count)))
    return jnp.stack([padded[:, 1 + j: 1 + j + length] for j in range(count)], -1)


class HydraHeads(nn.Module):
    """K Hydra heads, each reading h and the path drafted so far."""
    config: HeadsConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")
        self.inputs = [nn.Dense(cfg.hidden_size, kernel_init=pass_hidden, name=f"head_{k}_in")
                       for k in range(cfg.num_heads)]
        self.residuals = [nn.Dense(cfg.hidden_size, kernel_init=nn.initializers.zeros,
                                   name=f"head_{k}_res") for k in range(cfg.num_heads)]
        self.lm_head = LMHead(cfg.head_size, name="lm_head")
        declare_vocab_ids(self, cfg.draft_vocab)

    def example_inputs(self):
        return (jnp.zeros((1, self.config.hidden_size)),
                jnp.zeros((1, self.config.num_heads), jnp.int32))

    def head(self, k: int, hidden: jax.Array, path_tokens: jax.Array) -> jax.Array:
        """Head k (0-based): hidden [..., D] and path tokens [..., k + 1] -> logits
        [..., head_size]."""
        embedded = embed_rows(self.embed.embedding, path_tokens)  # [..., k + 1, D]
        embedded = embedded.astype(jnp.float32)
        if self.config.scale_embeddings:
            embedded = embedded * jnp.float32(self.config.hidden_size**0.5)
        x = jnp.concatenate([hidden.astype(jnp.float32),
                             embedded.reshape(*embedded.shape[:-2], -1)], axis=-1)
        x = self.inputs[k](x)
        x = x + nn.silu(self.residuals[k](x))
        return self.lm_head(x)

    def __call__(self, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced: hidden [..., D], tokens [..., K] (t_0..t_{K-1}) -> [..., K, V]."""
        return jnp.stack([self.head(k, hidden, tokens[..., : k + 1])
                          for k in range(self.config.num_heads)], axis=-2)

    def teacher_forced(self, hidden: jax.Array, windows: jax.Array) -> jax.Array:
        """Training: hidden [B, T, D] of windows [B, T + 1] -> [B, T, K, V]."""
        return self(hidden, following_tokens(windows, hidden.shape[1], self.config.num_heads))


@dataclasses.dataclass(frozen=True)
class PathHeadsDrafter(TreeHeadsDrafter):
    """Drafter of heads whose head k reads the path drafted before it (its module's
    `head(k, hidden, path_tokens)`): level by level over a choice tree."""

    module_class = None  # the heads' flax module (a class attribute, not a field)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        module = self.module_class(self.heads)
        shape, batch, ids = self.tree, seq_len.shape[0], vocab_ids(draft_params)
        tokens, probs = root_filled(sequence, seq_len, shape.num_nodes, self.heads.vocab_size,
                                    cfg)
        for d in range(shape.max_depth):
            fed = np.flatnonzero(shape.depth == d)
            path_tokens = tokens[:, shape.paths[fed, : d + 1]]  # [B, n, d + 1]
            hidden = jnp.broadcast_to(state.hidden[:, None],
                                      (batch, len(fed), state.hidden.shape[-1]))
            logits = module.apply(draft_params, d, hidden, path_tokens,
                                  method=self.module_class.head)
            tokens, probs = add_children(shape, fed, logits, tokens, probs,
                                         jax.random.fold_in(key, d), cfg, ids)
        return DraftTree(tokens, probs), state


@dataclasses.dataclass(frozen=True)
class Hydra(PathHeadsDrafter):
    """Drafter: Hydra heads, level by level over a choice tree (depth <= heads)."""

    module_class = HydraHeads
