"""ReDrafter (Cheng et al. 2024, Apple's recurrent drafter): one recurrent draft head
on the target's last hidden state, drafting by beam search.

A GRU's state s_j sums up the path so far: s_0 = 0 and s_{j+1} = GRU(s_j, e(t_j)),
with t_0 the root (the target's own next token) and e the target's embedding,
RMS-normalised (so a scale like Gemma's sqrt(D) cancels). The head reads [h; s_{j+1}]
(h: the target's hidden state of the token that produced the root): an input layer
to the hidden size (initialised to pass h through), a residual SiLU block and the LM
head (the target's, or a reduced one of its own: `sdjax.heads.common`), giving the
logits of the token at depth j + 1. The same weights serve every depth; `num_heads`
is how many tokens it learns to draft. (The paper's cell is a plain RNN,
silu(W e + U s); a GRU is the gated form of the same recurrence.)

Drafting is beam search of `beam_width` beams over `beam_length` steps. The tree
verified is every hypothesis the search kept: at each depth its `beam_width` best
paths by joint draft log-probability, each a child of the beam it grew from. These
are distinct paths (children of one beam are distinct tokens), and they include every
prefix of the final beams, which is the tree the paper's dynamic tree attention
dedups the final beams into; with static shapes both cost a verify of
1 + width x length nodes, so the kept hypotheses come at no extra cost. The beams
are deterministic given the context, so under sampling each node's draft
distribution is one-hot (lossless recursive rejection over a fixed candidate set,
as for EAGLE-2).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdjax.config import SpecConfig
from sdjax.drafters.base import one_hot_probs, roots
from sdjax.drafters.vocab import to_target
from sdjax.heads.common import (
    HeadsConfig,
    HeadsDrafter,
    LMHead,
    declare_vocab_ids,
    normalised_embedding,
    vocab_ids,
)
from sdjax.heads.hydra import following_tokens, pass_hidden
from sdjax.protocols import DraftTree
from sdjax.trees import DynamicShape, from_parents
from sdjax.validation import check_range


class ReDrafterHead(nn.Module):
    """The recurrent draft head: a GRU over the path's tokens and one head on [h; s]."""
    config: HeadsConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")  # the target's
        self.rnn = nn.GRUCell(cfg.hidden_size, name="rnn")
        self.inputs = nn.Dense(cfg.hidden_size, kernel_init=pass_hidden, name="head_in")
        self.residual = nn.Dense(cfg.hidden_size, kernel_init=nn.initializers.zeros,
                                 name="head_res")
        self.lm_head = LMHead(cfg.head_size, name="lm_head")
        declare_vocab_ids(self, cfg.draft_vocab)

    def example_inputs(self):
        return (jnp.zeros((1, self.config.hidden_size)),
                jnp.zeros((1, self.config.num_heads), jnp.int32))

    def step(self, state: jax.Array, token: jax.Array) -> jax.Array:
        """s_{j+1} [..., D] from s_j [..., D] and the depth-j token t_j [...]."""
        return self.rnn(state, normalised_embedding(self.embed.embedding, token))[0]

    def logits(self, hidden: jax.Array, state: jax.Array) -> jax.Array:
        """Logits [..., head_size] of the next token from h [..., D] and s [..., D]."""
        x = self.inputs(jnp.concatenate([hidden.astype(jnp.float32), state], axis=-1))
        return self.lm_head(x + nn.silu(self.residual(x)))

    def __call__(self, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
        """Teacher-forced: hidden [..., D], tokens [..., K] (t_0..t_{K-1}) -> [..., K, V]."""
        state = jnp.zeros(hidden.shape, jnp.float32)
        logits = []
        for k in range(self.config.num_heads):
            state = self.step(state, tokens[..., k])
            logits.append(self.logits(hidden, state))
        return jnp.stack(logits, axis=-2)

    def teacher_forced(self, hidden: jax.Array, windows: jax.Array) -> jax.Array:
        """Training: hidden [B, T, D] of windows [B, T + 1] -> [B, T, K, V]; at t the
        head reads the corpus tokens t + 1 .. t + K as the path."""
        return self(hidden, following_tokens(windows, hidden.shape[1], self.config.num_heads))


@dataclasses.dataclass(frozen=True)
class ReDrafter(HeadsDrafter):
    """Drafter: beam search with the recurrent head, verified as the tree of every
    kept hypothesis (1 + beam_width x beam_length nodes; `beam_length` defaults to
    the tokens the head was trained to draft)."""

    beam_width: int = 4
    beam_length: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "beam_width", 1, self.heads.head_size)
        if self.beam_length is not None:
            check_range(self, "beam_length", 1, self.heads.num_heads)

    @property
    def length(self) -> int:
        return self.beam_length or self.heads.num_heads

    @property
    def shape(self) -> DynamicShape:
        return DynamicShape(1 + self.beam_width * self.length, self.length, self.beam_width,
                            is_chain=self.beam_width == 1)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        apply = lambda method, *args: ReDrafterHead(self.heads).apply(draft_params, *args,
                                                                      method=method)
        ids, width = vocab_ids(draft_params), self.beam_width
        rows = jnp.arange(seq_len.shape[0])[:, None]
        root = roots(sequence, seq_len)[:, None]
        # the beams (at first one, the root): last token, GRU state before it, joint
        # draft log-probability, and node index
        beam_tokens, scores, nodes = root, jnp.zeros(root.shape), jnp.zeros_like(root)
        rnn = jnp.zeros((*root.shape, state.hidden.shape[-1]), jnp.float32)
        tokens, parents = [root], [jnp.full(root.shape, -1, jnp.int32)]
        for depth in range(self.length):
            rnn = apply(ReDrafterHead.step, rnn, beam_tokens)  # [B, beams, D]
            hidden = jnp.broadcast_to(state.hidden[:, None], rnn.shape)
            log_probs = jax.nn.log_softmax(apply(ReDrafterHead.logits, hidden, rnn))
            # each beam's `width` best children, then the best `width` of all of those
            child_scores, children = jax.lax.top_k(log_probs, width)  # [B, beams, width]
            joint = (scores[..., None] + child_scores).reshape(rows.shape[0], -1)
            scores, best = jax.lax.top_k(joint, width)
            beam = best // width
            beam_tokens = to_target(ids, children.reshape(joint.shape)[rows, best])
            rnn, parent_nodes = rnn[rows, beam], nodes[rows, beam]
            nodes = jnp.broadcast_to(1 + depth * width + jnp.arange(width), best.shape)
            tokens.append(beam_tokens)
            parents.append(parent_nodes)
        tokens = jnp.concatenate(tokens, axis=1)
        topology = from_parents(jnp.concatenate(parents, axis=1), self.length, width)
        return DraftTree(tokens, one_hot_probs(tokens, cfg), topology=topology), state
