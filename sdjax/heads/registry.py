"""One place that says what each kind of draft head is: its config, network,
initialisation from the target, default drafter, the benchmark's drafters, training
loss and sharding rules. Training, the bench, the CLI and `sdjax.sharding` read
`KINDS` instead of branching on kind names; a new kind of head is one entry here.

The folder format every kind shares (`heads_config.json` + `heads.safetensors`) is
`save_heads` / `load_heads`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from sdjax import trees
from sdjax.config import ModelConfig, from_dict, model_config_from_dict
from sdjax.heads import eagle as eagle_net
from sdjax.heads import kangaroo
from sdjax.heads.common import HeadsConfig, cast_floats, init_from_target, without
from sdjax.heads.eagle import EagleConfig, eagle_config, init_eagle
from sdjax.heads.eagle_drafters import Eagle, Eagle2
from sdjax.heads.hydra import Hydra, HydraHeads
from sdjax.heads.kangaroo import Kangaroo, init_kangaroo, kangaroo_config
from sdjax.heads.losses import eagle_loss, heads_loss, kangaroo_loss
from sdjax.heads.medusa import Medusa, MedusaHeads
from sdjax.heads.mlp_speculator import MLPSpeculator, MLPSpeculatorHeads
from sdjax.heads.redrafter import ReDrafter, ReDrafterHead
from sdjax.models.hf import load_tree, read_json, save_tree
from sdjax.protocols import Drafter

# The default choice tree (7 drafts, depth 3; 8 nodes with the root): the top 3 of the
# first head, top 2 below the best, the best path one level deeper. Shallower heads get
# a chain. A verify forward's cost steps at multiples of 8 rows on XLA:CPU (Gemma 3
# 270M, float32: 8 new tokens 104 ms, 9 143 ms), and trees of 8 or 16 nodes suit
# accelerators' tiles too: an eighth draft ([0, 0, 1]) added 0.00-0.02 to tau and 40% to
# the verify (BENCHMARKS.md, "Node counts").
DEFAULT_TREE = trees.from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
# The benchmark's EAGLE drafts: EAGLE-1 on a chain (the fastest static shape on CPU),
# EAGLE-2's dynamic tree, also with OPT-Tree-style adaptive depth (one level deeper,
# only while some path is this likely). Sizes picked by measured tokens/s
# (BENCHMARKS.md); the library defaults (`Eagle2()`) are wider.
BENCH_EAGLE_TREE = trees.chain(3)
BENCH_EAGLE2 = dict(depth=4, top_k=2, num_nodes=8)
BENCH_EAGLE2_ADAPTIVE = dict(BENCH_EAGLE2, depth=5, min_confidence=0.02)
# Kangaroo: a chain of 4, like the benchmark's early exit; and the paper's setting, a
# chain of up to 6 that each row stops at its first draft below probability 0.6.
BENCH_KANGAROO = dict(num_draft=4)
BENCH_KANGAROO_EARLY_STOP = dict(num_draft=6, min_confidence=0.6)

# ReDrafter: 2 beams over the 4 steps it is trained for (9 nodes, one more than
# DEFAULT_TREE), and over 3 (7 nodes, the depth of 3 Medusa / Hydra heads).
BENCH_REDRAFTER = dict(beam_width=2)
BENCH_REDRAFTER_DEPTH3 = dict(beam_width=2, beam_length=3)

# Parameter path regex -> logical axes (see `sdjax.sharding`), for every kind's weights.
HEAD_AXES = (
    (r"head_(\d+_)?(res|in|proj)/kernel$", (None, None)),
    (r"head_(\d+_)?(res|in)/bias$", (None,)),
    (r"rnn/\w+/kernel$", (None, None)),  # ReDrafter's GRU
    (r"rnn/\w+/bias$", (None,)),
    (r"head_\d+_norm/(scale|bias)$", (None,)),
    (r"head_\d+_lm/kernel$", ("embed", "vocab")),
    (r"vocab_ids$", (None,)),  # a reduced vocabulary's ids (every kind's)
)
EAGLE_AXES = (
    (r"(combine|fuse)/kernel$", (None, None)),
    (r"combine/bias$", (None,)),
)


@dataclasses.dataclass(frozen=True)
class HeadKind:
    """What sdjax needs to know about one kind of draft head. `settings` are the
    training settings (`sdjax.training.heads.HeadsTrainConfig`)."""

    name: str
    new_config: Callable[[ModelConfig, Any], Any]  # (target config, settings) -> config
    read_config: Callable[[dict], Any]  # heads_config.json -> config
    # (config, target params, key, reduced vocabulary ids or None) -> params
    init: Callable[[Any, dict, jax.Array, Optional[np.ndarray]], dict]
    saved_shapes: Callable[[Any], Any]  # config -> the params a folder holds (abstract)
    loss: Callable[[Any, ModelConfig, Any], Callable]  # (config, target, settings) -> loss_fn
    drafter: Callable[[Any, Optional[trees.TreeShape]], Drafter]  # default drafter
    bench: Dict[str, Callable[[Any], Drafter]]  # the benchmark's methods by name
    param_axes: Tuple[Tuple[str, Tuple[Optional[str], ...]], ...]
    module: Optional[Callable[[Any], nn.Module]] = None  # heads that run all at once
    reduced_vocab: bool = False  # whether its LM head can be a reduced draft vocabulary


def _heads_drafter(drafter_class):
    def make(cfg: HeadsConfig, tree: Optional[trees.TreeShape] = None) -> Drafter:
        if tree is None:
            deep_enough = cfg.num_heads >= DEFAULT_TREE.max_depth
            tree = DEFAULT_TREE if deep_enough else trees.chain(cfg.num_heads)
        return drafter_class(cfg, tree)
    return make


def _redrafter_drafter(cfg: HeadsConfig, tree: Optional[trees.TreeShape] = None) -> Drafter:
    """ReDrafter's beam search (its tree is the beams')."""
    if tree is not None:
        raise ValueError("ReDrafter drafts the tree of its beams; set ReDrafter(beam_width=, "
                         "beam_length=) instead of a tree")
    return ReDrafter(cfg)


def _heads_kind(name: str, module_class, drafter: Callable, bench: Optional[Dict] = None
                ) -> HeadKind:
    """Medusa-style heads on the target's last hidden state (`HeadsConfig`)."""
    return HeadKind(
        name=name,
        new_config=lambda target, settings: HeadsConfig(
            num_heads=settings.num_heads, hidden_size=target.hidden_size,
            vocab_size=target.vocab_size, kind=name, draft_vocab=settings.draft_vocab,
            scale_embeddings=target.scale_embeddings),
        read_config=lambda values: from_dict(HeadsConfig, values),
        init=lambda cfg, target_params, key, vocab_ids=None: init_from_target(
            module_class(cfg), target_params, key, vocab_ids),
        saved_shapes=lambda cfg: without(jax.eval_shape(lambda: module_class(cfg).init(
            jax.random.PRNGKey(0), *module_class(cfg).example_inputs())), cfg.shared_names),
        loss=lambda cfg, target, settings: lambda p, frozen, windows, key=None: heads_loss(
            p, frozen, windows, key, target_cfg=target, module=module_class(cfg),
            head_decay=settings.head_decay, distill=settings.distill),
        drafter=drafter,
        bench=bench or {name: drafter},
        param_axes=HEAD_AXES,
        module=module_class,
        reduced_vocab=True,
    )


def _eagle_drafter(cfg: EagleConfig, tree: Optional[trees.TreeShape] = None) -> Drafter:
    """EAGLE-2's dynamic tree, or EAGLE-1 on `tree` when one is given."""
    return Eagle2(cfg) if tree is None else Eagle(cfg, tree)


def _read_eagle_config(values: dict) -> EagleConfig:
    """An EagleConfig from its heads_config.json form."""
    if not isinstance(values.get("layer"), dict):
        raise ValueError("an EAGLE heads_config.json needs its draft 'layer' (a ModelConfig)")
    return EagleConfig(model_config_from_dict(values["layer"]), values["kind"],
                       tuple(values.get("feature_layers", ())), values.get("draft_vocab", 0))


def _eagle_kind(name: str, bench: Dict[str, Callable]) -> HeadKind:
    return HeadKind(
        name=name,
        new_config=lambda target, settings: eagle_config(
            target, name, settings.feature_layers, settings.draft_vocab),
        read_config=_read_eagle_config,
        init=init_eagle,
        saved_shapes=eagle_net.abstract_params,
        loss=lambda cfg, target, settings: lambda p, frozen, windows, key=None: eagle_loss(
            p, frozen, windows, key, target_cfg=target, eagle_cfg=cfg,
            ttt_steps=settings.ttt_steps, head_decay=settings.head_decay,
            token_weight=settings.token_weight, feature_noise=settings.feature_noise),
        drafter=_eagle_drafter,
        bench=bench,
        param_axes=EAGLE_AXES,
        reduced_vocab=name == "eagle3",
    )


def _kangaroo_kind() -> HeadKind:
    return HeadKind(
        name="kangaroo",
        new_config=lambda target, settings: kangaroo_config(
            target, settings.exit_layer, settings.draft_vocab),
        read_config=kangaroo.read_config,
        init=init_kangaroo,
        saved_shapes=kangaroo.abstract_params,
        loss=lambda cfg, target, settings: lambda p, frozen, windows, key=None: kangaroo_loss(
            p, frozen, windows, key, target_cfg=target, kangaroo_cfg=cfg),
        drafter=lambda cfg, tree=None: Kangaroo(adapter=cfg, tree=tree),
        bench={"kangaroo": lambda cfg: Kangaroo(adapter=cfg, **BENCH_KANGAROO),
               "kangaroo_early_stop": lambda cfg: Kangaroo(adapter=cfg,
                                                           **BENCH_KANGAROO_EARLY_STOP)},
        param_axes=(),  # the adapter's attention and norms: the transformer's rules
        reduced_vocab=True,
    )


KINDS: Dict[str, HeadKind] = {
    "medusa": _heads_kind("medusa", MedusaHeads, _heads_drafter(Medusa)),
    "hydra": _heads_kind("hydra", HydraHeads, _heads_drafter(Hydra)),
    "mlp_speculator": _heads_kind("mlp_speculator", MLPSpeculatorHeads,
                                  _heads_drafter(MLPSpeculator)),
    "redrafter": _heads_kind("redrafter", ReDrafterHead, _redrafter_drafter, {
        "redrafter": lambda cfg: ReDrafter(cfg, **BENCH_REDRAFTER),
        "redrafter_depth3": lambda cfg: ReDrafter(cfg, **BENCH_REDRAFTER_DEPTH3)}),
    "eagle": _eagle_kind("eagle", {
        "eagle": lambda cfg: Eagle(cfg, BENCH_EAGLE_TREE),
        "eagle2": lambda cfg: Eagle2(cfg, **BENCH_EAGLE2),
        "eagle2_adaptive": lambda cfg: Eagle2(cfg, **BENCH_EAGLE2_ADAPTIVE)}),
    "eagle3": _eagle_kind("eagle3", {"eagle3": lambda cfg: Eagle2(cfg, **BENCH_EAGLE2)}),
    "kangaroo": _kangaroo_kind(),
}


def head_kind(name: str) -> HeadKind:
    """The registry entry of kind `name`; a clear error for an unknown one."""
    if name not in KINDS:
        raise ValueError(f"unknown head kind {name!r}; supported: {tuple(KINDS)}")
    return KINDS[name]


def heads_module(cfg: HeadsConfig) -> nn.Module:
    """The network of `HeadsConfig` heads (all heads at one position)."""
    return head_kind(cfg.kind).module(cfg)


def init_heads(cfg, target_params, key: jax.Array,
               vocab_ids: Optional[np.ndarray] = None) -> dict:
    """Fresh draft params of `cfg`'s kind, started from the target's weights (and, for a
    reduced draft vocabulary, its target ids)."""
    return head_kind(cfg.kind).init(cfg, target_params, key, vocab_ids)


def make_drafter(cfg, tree: Optional[trees.TreeShape] = None) -> Drafter:
    """The drafter for heads of `cfg.kind`: Medusa / Hydra / the MLP speculator on
    `tree` (default: DEFAULT_TREE if deep enough), ReDrafter's beams, EAGLE drafts on
    EAGLE-2's dynamic tree, or on `tree` (EAGLE-1) when one is given, Kangaroo on a chain
    of 4 or `tree`."""
    return head_kind(cfg.kind).drafter(cfg, tree)


def bench_drafters(cfg) -> Dict[str, Drafter]:
    """The benchmark's drafters for trained heads of `cfg.kind`, by method name."""
    return {name: make(cfg) for name, make in head_kind(cfg.kind).bench.items()}


def save_heads(path: str, cfg, params, dtype: Optional[str] = None) -> None:
    """Writes heads (a HeadsConfig or an EagleConfig and the params) as a folder; with
    `dtype` ("bfloat16" to ship them) the floating-point weights are cast (ids stay)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "heads_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    weights = jax.tree.map(np.asarray, params["params"])
    save_tree(os.path.join(path, "heads.safetensors"),
              cast_floats(weights, dtype) if dtype else weights)


def load_heads(path: str):
    """(config, params) from a folder written by `save_heads`: a HeadsConfig (Medusa,
    Hydra, MLP speculator), an EagleConfig (EAGLE, EAGLE-3) or a KangarooConfig."""
    config_path = os.path.join(path, "heads_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path!r} has no heads_config.json")
    values = read_json(config_path)
    cfg = head_kind(values.get("kind", "medusa")).read_config(values)
    params = {"params": load_tree(os.path.join(path, "heads.safetensors"))}
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    if shapes(head_kind(cfg.kind).saved_shapes(cfg)) != shapes(params):
        raise ValueError(f"{path}: head weights do not match heads_config.json")
    return cfg, params
