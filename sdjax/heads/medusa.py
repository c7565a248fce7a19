"""Medusa-1 (Cai et al. 2024): K heads on the target's last hidden state.

Head k (k = 1..K) reads the final hidden state h_t of the token that produced the
next token and predicts the token k positions after that one: a residual SiLU
block (zero-initialised, so it starts as the identity) and its own LM head
(initialised from the target's). Heads do not see each other's tokens, so every
node at depth k takes its candidates from head k: greedy, the parent's top-w of
head k's logits; sampling, w draws without replacement (the lossless tree rule).

Heads are saved as `heads.safetensors` + `heads_config.json` in a folder.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.flax
from flax.traverse_util import flatten_dict, unflatten_dict

from sdjax.config import SpecConfig, from_dict
from sdjax.drafters.base import DraftTree, add_children, roots
from sdjax.trees import TreeShape


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    num_heads: int
    hidden_size: int
    vocab_size: int
    kind: str = "medusa"

    def __post_init__(self):
        if self.kind != "medusa":
            raise ValueError(f"unknown head kind {self.kind!r}; supported: medusa")
        if self.num_heads < 1:
            raise ValueError("num_heads must be >= 1")


class MedusaHeads(nn.Module):
    config: HeadsConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        """[..., D] hidden states -> [..., K, V] float32 logits of the K heads."""
        cfg = self.config
        hidden = hidden.astype(jnp.float32)
        logits = []
        for k in range(cfg.num_heads):
            residual = nn.Dense(cfg.hidden_size, kernel_init=nn.initializers.zeros,
                                name=f"head_{k}_res")(hidden)
            x = hidden + nn.silu(residual)
            logits.append(nn.Dense(cfg.vocab_size, use_bias=False, name=f"head_{k}_lm")(x))
        return jnp.stack(logits, axis=-2)


def target_lm_head(target_params) -> jax.Array:
    """The target's LM head as a [D, V] kernel (the embedding, transposed, when tied)."""
    p = target_params["params"]
    return p["lm_head"]["kernel"] if "lm_head" in p else p["embed"]["embedding"].T


def init_heads(cfg: HeadsConfig, target_params, key: jax.Array) -> dict:
    """Heads whose residual blocks are the identity and whose LM heads are the target's."""
    params = MedusaHeads(cfg).init(key, jnp.zeros((1, cfg.hidden_size)))
    lm_head = jnp.asarray(target_lm_head(target_params), jnp.float32)
    # Each head gets its own copy (one shared buffer could not be donated twice).
    inner = {name: ({**value, "kernel": jnp.array(lm_head, copy=True)}
                    if name.endswith("_lm") else value)
             for name, value in params["params"].items()}
    return {"params": inner}


def save_heads(path: str, cfg: HeadsConfig, params) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "heads_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params["params"]).items()}
    safetensors.flax.save_file({k: jnp.asarray(v) for k, v in flat.items()},
                               os.path.join(path, "heads.safetensors"))


def load_heads(path: str):
    """(HeadsConfig, params) from a folder written by `save_heads`."""
    config_path = os.path.join(path, "heads_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path!r} has no heads_config.json")
    with open(config_path) as f:
        cfg = from_dict(HeadsConfig, json.load(f))
    flat = safetensors.flax.load_file(os.path.join(path, "heads.safetensors"))
    params = {"params": unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})}
    expected = jax.eval_shape(lambda: MedusaHeads(cfg).init(
        jax.random.PRNGKey(0), jnp.zeros((1, cfg.hidden_size))))
    got = jax.tree.map(lambda x: x.shape, params)
    if jax.tree.map(lambda x: x.shape, expected) != got:
        raise ValueError(f"{path}: head weights do not match heads_config.json")
    return cfg, params


@dataclasses.dataclass(frozen=True)
class Medusa:
    """Drafter: the heads' candidates arranged by a choice tree (depth <= num_heads).

    draft_params are the heads' params. State: the hidden state [B, D] of the token
    that produced the current root (from the prefill, then from each verification).
    """

    heads: HeadsConfig
    tree: TreeShape

    def __post_init__(self):
        if self.tree.max_depth > self.heads.num_heads:
            raise ValueError(f"a tree of depth {self.tree.max_depth} needs that many heads; "
                             f"there are {self.heads.num_heads}")
        if list(self.tree.depth) != sorted(self.tree.depth):
            raise ValueError("a drafted tree must list its nodes level by level (BFS order)")

    @property
    def shape(self) -> TreeShape:
        return self.tree

    def check(self, cfg: SpecConfig, draft_params) -> None:
        if draft_params is None:
            raise ValueError("Medusa needs the heads' params as draft_params")
        if (self.heads.vocab_size, self.heads.hidden_size) != (cfg.model.vocab_size,
                                                               cfg.model.hidden_size):
            raise ValueError(
                f"heads for vocab {self.heads.vocab_size} / hidden {self.heads.hidden_size} "
                f"do not fit the target (vocab {cfg.model.vocab_size} / hidden "
                f"{cfg.model.hidden_size})")

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return jnp.take_along_axis(features, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        logits = MedusaHeads(self.heads).apply(draft_params, state)  # [B, K, V]
        shape = self.tree
        batch = seq_len.shape[0]
        tokens = jnp.broadcast_to(roots(sequence, seq_len)[:, None], (batch, shape.num_nodes))
        probs = None if cfg.temperature == 0.0 else jnp.zeros(
            (batch, shape.num_nodes, self.heads.vocab_size), jnp.float32)
        for d in range(shape.max_depth):
            fed = np.flatnonzero(shape.depth == d)
            level = jnp.broadcast_to(logits[:, d:d + 1], (batch, len(fed), logits.shape[-1]))
            tokens, probs = add_children(shape, fed, level, tokens, probs,
                                         jax.random.fold_in(key, d), cfg)
        return DraftTree(tokens, probs), state

    def commit(self, state, result, committed_length, features=None):
        """The hidden state of the last accepted node, which produced the new root."""
        last = jnp.take_along_axis(result.path, result.num_accepted[:, None], axis=1)
        return jnp.take_along_axis(features, last[:, :, None], axis=1)[:, 0]
