"""What every kind of draft head shares: its config, initialisation from the target,
the drafter's checks and state, and the folder format (`heads.safetensors` +
`heads_config.json`, which EAGLE drafts use too)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.flax
from flax.traverse_util import flatten_dict, unflatten_dict

from sdjax.config import SpecConfig, from_dict, model_config_from_dict
from sdjax.trees import TreeShape

KINDS = ("medusa", "hydra")


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    num_heads: int
    hidden_size: int
    vocab_size: int
    kind: str = "medusa"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; supported: {KINDS}")
        if self.num_heads < 1:
            raise ValueError("num_heads must be >= 1")


def heads_module(cfg: HeadsConfig):
    from sdjax.heads.hydra import HydraHeads
    from sdjax.heads.medusa import MedusaHeads

    return {"medusa": MedusaHeads, "hydra": HydraHeads}[cfg.kind](cfg)


def _abstract(cfg: HeadsConfig):
    module = heads_module(cfg)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *module.example_inputs()))


def target_lm_head(target: dict) -> jax.Array:
    """The target's LM-head kernel [D, V] (its embedding, transposed, when tied)."""
    return target["lm_head"]["kernel"] if "lm_head" in target else target["embed"]["embedding"].T


def init_heads(cfg: HeadsConfig, target_params, key: jax.Array) -> dict:
    """Random heads whose LM heads (and Hydra's token embedding) are the target's, and
    whose other layers start as (near) identities: untrained heads echo the target."""
    module = heads_module(cfg)
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


def save_heads(path: str, cfg, params) -> None:
    """Writes heads (a HeadsConfig or an EagleConfig and the params) as a folder."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "heads_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    flat = {"/".join(k): jnp.asarray(np.asarray(v))
            for k, v in flatten_dict(params["params"]).items()}
    safetensors.flax.save_file(flat, os.path.join(path, "heads.safetensors"))


def _read_config(values: dict):
    from sdjax.heads.eagle import EAGLE_KINDS, EagleConfig, abstract_params

    if values.get("kind") in EAGLE_KINDS:
        cfg = EagleConfig(model_config_from_dict(values["layer"]), values["kind"],
                          tuple(values.get("feature_layers", ())))
        return cfg, abstract_params(cfg)
    cfg = from_dict(HeadsConfig, values)
    return cfg, _abstract(cfg)


def load_heads(path: str):
    """(config, params) from a folder written by `save_heads`: a HeadsConfig (Medusa,
    Hydra) or an EagleConfig (EAGLE, EAGLE-3)."""
    config_path = os.path.join(path, "heads_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path!r} has no heads_config.json")
    with open(config_path) as f:
        cfg, abstract = _read_config(json.load(f))
    flat = safetensors.flax.load_file(os.path.join(path, "heads.safetensors"))
    params = {"params": unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})}
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    if shapes(abstract) != shapes(params):
        raise ValueError(f"{path}: head weights do not match heads_config.json")
    return cfg, params


def check_fits(drafter, draft_params, heads, cfg: SpecConfig, what: str) -> None:
    """Raises unless `draft_params` are given and `heads` (any config with vocab_size
    and hidden_size) were made for a target of cfg.model's vocabulary and width."""
    if draft_params is None:
        raise ValueError(f"{type(drafter).__name__} needs {what} as draft_params")
    if (heads.vocab_size, heads.hidden_size) != (cfg.model.vocab_size, cfg.model.hidden_size):
        raise ValueError(
            f"a draft for vocab {heads.vocab_size} / hidden {heads.hidden_size} does not "
            f"fit the target (vocab {cfg.model.vocab_size} / hidden {cfg.model.hidden_size})")


@dataclasses.dataclass(frozen=True)
class HeadsDrafter:
    """Base of the head drafters: a choice tree no deeper than the heads, and as state
    the target's hidden state [B, D] of the token that produced the current root (from
    the prefill, then from each verification's last accepted node)."""

    heads: HeadsConfig
    tree: TreeShape

    def __post_init__(self):
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
        return jnp.take_along_axis(features, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]

    def commit(self, state, result, committed_length, features=None):
        last = jnp.take_along_axis(result.path, result.num_accepted[:, None], axis=1)
        return jnp.take_along_axis(features, last[:, :, None], axis=1)[:, 0]
