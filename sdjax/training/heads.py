"""Draft-head training on a frozen target: Medusa and Hydra heads by self-distillation,
and EAGLE / EAGLE-3 drafts (losses in `sdjax.training.eagle`).

    sdjax train heads --config configs/train/testbed_medusa.yaml

The target runs inside the jitted step (frozen: no gradients, sharded over the
`model` axis like the heads, data over `data`); each step reads its final hidden
states over corpus windows. Head k (0-based) at position t learns the token at
t + k + 2: with `distill` (default) the target's own distribution for that token
(Medusa-2's self-distillation, so the heads learn what the target will accept),
otherwise the corpus token. Hydra's head k also reads the corpus tokens t + 1 ..
t + k + 1 (teacher forcing; at decode time, the drafted path). Head k's loss is
weighted by head_decay**k (Medusa's 0.8). Evaluation reports each head's top-1 agreement with the target's greedy
token: the greedy acceptance rate of a chain at that depth, given the earlier
depths were right.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdjax.config import ModelConfig
from sdjax.heads import HeadsConfig, eagle_config, heads_module, init_eagle, init_heads, save_heads
from sdjax.heads.common import KINDS
from sdjax.heads.eagle import EAGLE_KINDS
from sdjax.training.eagle import eagle_loss
from sdjax.training.generations import read_generations
from sdjax.models.hf import load_hf
from sdjax.training.lm import forward, prepare_corpus
from sdjax.training.loop import LoopConfig, fit, load_yaml_config, write_summary


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadsTrainConfig(LoopConfig):
    target: str  # target checkpoint folder (with its tokenizer)
    kind: str = "medusa"
    num_heads: int = 4
    head_decay: float = 0.8  # loss weight of head k (EAGLE-3: unrolled step k) is this**k
    distill: bool = True  # labels: the target's distribution (True) or corpus tokens
    generations: Optional[str] = None  # train on these target generations (a folder
    # from `sdjax train generations`) instead of the corpus; validation stays the corpus
    # EAGLE only:
    ttt_steps: int = 3  # unrolled draft steps (EAGLE-3's training-time test; eval depths)
    feature_layers: Optional[Tuple[int, ...]] = None  # eagle3 (None: low / mid / high)
    token_weight: float = 0.1  # eagle: weight of the cross-entropy next to the regression
    feature_noise: float = 0.1  # eagle: uniform noise on the input features

    def __post_init__(self):
        kinds = KINDS + EAGLE_KINDS
        if self.kind not in kinds:
            raise ValueError(f"unknown head kind {self.kind!r}; supported: {kinds}")


def heads_loss(heads_params, target_params, windows, *, target_cfg: ModelConfig,
               heads_cfg: HeadsConfig, head_decay: float, distill: bool):
    """(weighted mean CE over heads, {top1_head{k}: agreement with the target})."""
    out = forward(jax.lax.stop_gradient(target_params), target_cfg, windows[:, :-1])
    hidden, target_logits = jax.lax.stop_gradient((out.hidden, out.logits))
    length = hidden.shape[1]
    module = heads_module(heads_cfg)
    if heads_cfg.kind == "hydra":  # at t: the tokens t + 1 .. t + K (zero past the end)
        padded = jnp.pad(windows, ((0, 0), (0, heads_cfg.num_heads)))
        following = jnp.stack([padded[:, 1 + j: 1 + j + length]
                               for j in range(heads_cfg.num_heads)], axis=-1)
        logits = module.apply(heads_params, hidden, following)  # [B, T, K, V]
    else:
        logits = module.apply(heads_params, hidden)
    total, weights, metrics = 0.0, 0.0, {}
    for k in range(heads_cfg.num_heads):
        pred = logits[:, : length - k - 1, k]  # at t: the token at t + k + 2
        teacher = target_logits[:, k + 1:]  # the target's prediction of that token
        if distill:
            ce = optax.softmax_cross_entropy(pred, jax.nn.softmax(teacher)).mean()
        else:
            ce = optax.softmax_cross_entropy_with_integer_labels(pred, windows[:, k + 2:]).mean()
        total += head_decay**k * ce
        weights += head_decay**k
        metrics[f"top1_head{k}"] = (pred.argmax(-1) == teacher.argmax(-1)).mean()
    return total / weights, metrics


def make_loss(cfg: HeadsTrainConfig, target_cfg: ModelConfig, heads_cfg):
    """loss_fn(params, target_params, windows) -> (loss, metrics) of the run's kind."""
    if cfg.kind in EAGLE_KINDS:
        return lambda p, frozen, windows: eagle_loss(
            p, frozen, windows, target_cfg=target_cfg, eagle_cfg=heads_cfg,
            ttt_steps=cfg.ttt_steps, head_decay=cfg.head_decay,
            token_weight=cfg.token_weight, feature_noise=cfg.feature_noise)
    return lambda p, frozen, windows: heads_loss(
        p, frozen, windows, target_cfg=target_cfg, heads_cfg=heads_cfg,
        head_decay=cfg.head_decay, distill=cfg.distill)


def train_heads(cfg: HeadsTrainConfig, target, train_stream: np.ndarray,
                val_stream: Optional[np.ndarray] = None, stop_at: Optional[int] = None,
                progress: bool = True):
    """(HeadsConfig or EagleConfig, TrainResult) for heads on `target` (a LoadedModel)."""
    key = jax.random.PRNGKey(cfg.seed)
    if cfg.kind in EAGLE_KINDS:
        heads_cfg = eagle_config(target.config, cfg.kind, cfg.feature_layers)
        params = init_eagle(heads_cfg, target.params, key)
    else:
        heads_cfg = HeadsConfig(num_heads=cfg.num_heads, hidden_size=target.config.hidden_size,
                                vocab_size=target.config.vocab_size, kind=cfg.kind)
        params = init_heads(heads_cfg, target.params, key)
    loss_fn = make_loss(cfg, target.config, heads_cfg)
    result = fit(cfg, params, loss_fn, train_stream, val_stream, frozen=target.params,
                 stop_at=stop_at, progress=progress)
    return heads_cfg, result


def run_heads(cfg: HeadsTrainConfig, stop_at: Optional[int] = None) -> str:
    """Data, training (resumable) and export to `output`/heads; returns that path."""
    os.makedirs(cfg.output, exist_ok=True)
    target = load_hf(cfg.target)
    if target.tokenizer is None:
        raise ValueError(f"{cfg.target} has no tokenizer; head training reads the corpus")
    _, streams = prepare_corpus(cfg.target, 0, cfg.output)
    train = streams["train"]
    if cfg.generations:
        train = read_generations(cfg.generations, target.config)
    heads_cfg, result = train_heads(cfg, target, train, streams["validation"], stop_at)
    export = os.path.join(cfg.output, "heads")
    save_heads(export, heads_cfg, jax.tree.map(np.asarray, result.params))
    write_summary(cfg.output, result, export)
    return export


def load_config(path: str, **overrides) -> HeadsTrainConfig:
    return load_yaml_config(HeadsTrainConfig, path, **overrides)
