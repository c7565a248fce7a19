"""SpecDec++ (Huang et al. 2024): a draft model that knows when to stop drafting.

A small head on the draft model's final hidden state predicts, after the draft has
read a token it proposed, the chance that the target accepts that token given the
earlier ones were accepted. `DraftModel(stop_threshold=h)` stops a row's chain at the
first depth where the predicted chance that some draft so far is rejected,
1 - prod_k p_accept(k), exceeds h (the paper's threshold policy, optimal for its
MDP). Where to stop is decided by the draft alone, so the loop's lossless
truncation (`DraftTree.limit`) keeps greedy and sampled output exact.

The head is `num_blocks` residual blocks (x + SiLU(W x + b)) and a linear map to one
logit, as in the paper's code. `sdjax train acceptance` trains it on the draft's own
continuations, labelled by the target (`sdjax.training.acceptance`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.models.hf import load_tree, read_json, save_tree
from sdjax.validation import check_fields, check_range, from_dict

# The head's sharding rule (`sdjax.sharding`), alone in training and inside a draft
# model's params in decoding: it is tiny, every device holds all of it.
PARAM_AXES = ((r"^(acceptance_head/)?params/(block_\d+|out)/(kernel|bias)$", (None,)),)
# Stop once the predicted chance that some draft so far is rejected exceeds this.
DEFAULT_STOP_THRESHOLD = 0.5
CONFIG_FILE = "acceptance_head.json"
WEIGHTS_FILE = "acceptance_head.safetensors"


@dataclasses.dataclass(frozen=True)
class AcceptanceHeadConfig:
    """The head's shape (it reads a draft hidden state of `hidden_size`) and the decoding
    temperature its labels were made for (0: greedy)."""
    hidden_size: int
    num_blocks: int = 1
    temperature: float = 0.0

    def __post_init__(self):
        check_fields(self)
        check_range(self, "hidden_size", 1)
        check_range(self, "num_blocks", 0)
        check_range(self, "temperature", 0)


class AcceptanceHead(nn.Module):
    """hidden [..., D] -> the logit of "the token just read will be accepted" [...]."""
    config: AcceptanceHeadConfig

    @nn.compact
    def __call__(self, hidden):
        x = hidden.astype(jnp.float32)
        for i in range(self.config.num_blocks):
            x = x + nn.silu(nn.Dense(self.config.hidden_size, kernel_init=nn.initializers.zeros,
                                     name=f"block_{i}")(x))
        return nn.Dense(1, name="out")(x)[..., 0]


def init_acceptance_head(cfg: AcceptanceHeadConfig, key: jax.Array) -> dict:
    """Head params ({'params': ...}): the blocks start as the identity (zero kernels, as
    Medusa's), the logit's weights random."""
    return AcceptanceHead(cfg).init(key, jnp.zeros((1, cfg.hidden_size)))


def acceptance_probability(cfg: AcceptanceHeadConfig, head_params, hidden) -> jax.Array:
    """p_accept [...] of the tokens whose draft hidden states are `hidden` [..., D]."""
    return jax.nn.sigmoid(AcceptanceHead(cfg).apply(head_params, hidden))


def with_acceptance_head(draft_params, head_params) -> dict:
    """The draft_params of `DraftModel(stop_head=...)`: the draft's (with any reduced
    vocabulary) and the head's."""
    return {**draft_params, "acceptance_head": head_params}


def check_head_params(cfg: AcceptanceHeadConfig, head_params) -> None:
    """Raises ValueError unless `head_params` has the shapes `cfg` needs."""
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    need = jax.eval_shape(lambda key: init_acceptance_head(cfg, key), jax.random.key(0))
    if not isinstance(head_params, dict) or shapes(head_params) != shapes(need):
        raise ValueError(f"acceptance head params do not fit {cfg} (a draft hidden size of "
                         f"{cfg.hidden_size}, {cfg.num_blocks} block(s))")


def save_acceptance_head(path: str, cfg: AcceptanceHeadConfig, head_params) -> None:
    """Writes the head as a folder: its config (JSON) and weights (safetensors)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    save_tree(os.path.join(path, WEIGHTS_FILE),
              jax.tree.map(lambda x: np.asarray(x, np.float32), head_params["params"]))


def load_acceptance_head(path: str):
    """(AcceptanceHeadConfig, params) from a folder `save_acceptance_head` wrote."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path!r} has no {CONFIG_FILE} (write it with "
                                "`sdjax train acceptance`)")
    cfg = from_dict(AcceptanceHeadConfig, read_json(config_path))
    params = {"params": load_tree(os.path.join(path, WEIGHTS_FILE))}
    check_head_params(cfg, params)
    return cfg, params
