"""What Medusa and Hydra heads share: their config, initialisation from the target,
the drafter's checks and state (EAGLE drafts share `check_fits` and the LM head)."""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from sdjax.config import SpecConfig
from sdjax.protocols import Drafter
from sdjax.trees import TreeShape
from sdjax.validation import check_fields, check_range

HEADS_CONFIG_KINDS = ("medusa", "hydra")  # a HeadsConfig's kinds (EAGLE: EagleConfig)


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Medusa / Hydra heads: how many, and the target's width and vocabulary."""
    num_heads: int
    hidden_size: int
    vocab_size: int
    kind: str = "medusa"

    def __post_init__(self):
        check_fields(self)
        if self.kind not in HEADS_CONFIG_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; supported: {HEADS_CONFIG_KINDS}")
        for name in ("num_heads", "hidden_size", "vocab_size"):
            check_range(self, name, 1)


def target_lm_head(target: dict) -> jax.Array:
    """The target's LM-head kernel [D, V] (its embedding, transposed, when tied)."""
    return target["lm_head"]["kernel"] if "lm_head" in target else target["embed"]["embedding"].T


def init_from_target(module, target_params, key: jax.Array) -> dict:
    """Random heads (a Medusa / Hydra module) whose LM heads (and Hydra's token
    embedding) are the target's, and whose other layers start as (near) identities:
    untrained heads echo the target."""
    params = module.init(key, *module.example_inputs())["params"]
    target = target_params["params"]
    lm_head = target_lm_head(target)
    copy = lambda x: jnp.array(x, jnp.float32, copy=True)  # one buffer per leaf (donation)
    out = {}
    for name, value in params.items():
        if name.endswith("_lm"):
            value = {**value, "kernel": copy(lm_head)}
        elif name == "embed":
            value = {"embedding": copy(target["embed"]["embedding"])}
        out[name] = value
    return {"params": out}


def check_fits(drafter, draft_params, heads, cfg: SpecConfig, what: str) -> None:
    """Raises unless `draft_params` are given and `heads` (any config with vocab_size
    and hidden_size) were made for a target of cfg.model's vocabulary and width."""
    if draft_params is None:
        raise ValueError(f"{type(drafter).__name__} needs {what} as draft_params")
    if (heads.vocab_size, heads.hidden_size) != (cfg.model.vocab_size, cfg.model.hidden_size):
        raise ValueError(
            f"a draft for vocab {heads.vocab_size} / hidden {heads.hidden_size} does not "
            f"fit the target (vocab {cfg.model.vocab_size} / hidden {cfg.model.hidden_size})")


@flax.struct.dataclass
class HeadsState:
    """A heads drafter's state between cycles."""
    hidden: jax.Array  # [B, D] target hidden state of the token that produced the root


@dataclasses.dataclass(frozen=True)
class HeadsDrafter(Drafter):
    """Base of the head drafters: a choice tree no deeper than the heads, and as state
    the target's hidden state [B, D] of the token that produced the current root (from
    the prefill, then from each verification's last accepted node)."""

    heads: HeadsConfig
    tree: TreeShape

    def __post_init__(self):
        super().__post_init__()
        if self.tree.max_depth > self.heads.num_heads:
            raise ValueError(f"a tree of depth {self.tree.max_depth} needs that many heads; "
                             f"there are {self.heads.num_heads}")
        self.tree.check_level_order()

    @property
    def shape(self) -> TreeShape:
        return self.tree

    def check(self, cfg: SpecConfig, draft_params) -> None:
        check_fits(self, draft_params, self.heads, cfg, "the heads' params")

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return HeadsState(
            jnp.take_along_axis(features, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0])

    def commit(self, state, result, committed_length, features=None):
        last = jnp.take_along_axis(result.path, result.num_accepted[:, None], axis=1)
        return HeadsState(jnp.take_along_axis(features, last[:, :, None], axis=1)[:, 0])
