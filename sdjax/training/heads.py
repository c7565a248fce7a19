"""Draft-head training on a frozen target: Medusa and Hydra heads by self-distillation,
EAGLE / EAGLE-3 drafts, Kangaroo's adapter (each kind's loss: `sdjax.heads.losses`,
picked through `sdjax.heads.registry`).

    sdjax train heads --config configs/train/testbed_medusa.yaml

The target runs inside the jitted step (frozen: no gradients, sharded over the
`model` axis like the heads, data over `data`); evaluation reports each head's (or
unrolled step's) top-1 agreement with the target's greedy token: the greedy
acceptance rate of a chain at that depth, given the earlier depths were right.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import jax
import numpy as np

from sdjax.config import ModelConfig
from sdjax.drafters.vocab import frequent_tokens
from sdjax.heads import KINDS, head_kind, load_heads, save_heads
from sdjax.training.loop import (
    MODEL,
    PATH,
    LoopConfig,
    evaluate,
    fit,
    load_yaml_config,
    print_metrics,
    target_and_corpus,
    write_summary,
)
from sdjax.validation import check_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadsTrainConfig(LoopConfig):
    """`sdjax train heads` settings (a YAML file in configs/train/)."""
    # checkpoint folder with its tokenizer, or a named model ("gemma3-270m")
    target: str = dataclasses.field(metadata=MODEL)
    kind: str = "medusa"
    num_heads: int = 4
    head_decay: float = 0.8  # loss weight of head k (EAGLE-3: unrolled step k) is this**k
    distill: bool = True  # labels: the target's distribution (True) or corpus tokens
    # Train on the target's own generations (a folder from `sdjax train generations`)
    # instead of the corpus; validation stays the corpus.
    generations: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    # Start from trained heads (a folder written by `save_heads`, e.g. a shipped draft)
    # instead of fresh ones; their config must be the one this run trains, and a
    # reduced vocabulary keeps their ids. A run with checkpoints resumes from those.
    init_from: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    # EAGLE only:
    ttt_steps: int = 3  # unrolled draft steps (EAGLE-3's training-time test; eval depths)
    feature_layers: Optional[Tuple[int, ...]] = None  # eagle3 (None: low / mid / high)
    token_weight: float = 0.1  # eagle: weight of the cross-entropy next to the regression
    feature_noise: float = 0.1  # eagle: uniform noise on the input features
    # Kangaroo only: the target layers the draft runs before its adapter (1..L)
    exit_layer: int = 0
    # Rows of the draft's LM head: the K most frequent target tokens of the training
    # data (0: the whole vocabulary). Kinds whose head can be reduced only.
    draft_vocab: int = 0
    corpus: Tuple[str, ...] = ("stdlib",)  # `sdjax.data.corpus.SOURCES`, concatenated

    def __post_init__(self):
        super().__post_init__()
        head_kind(self.kind)  # an unknown kind is refused by name
        check_range(self, "num_heads", 1)
        check_range(self, "ttt_steps", 1)
        check_range(self, "head_decay", 0, 1, low_open=True)
        check_range(self, "token_weight", 0)
        check_range(self, "feature_noise", 0)
        check_range(self, "draft_vocab", 0)
        check_range(self, "exit_layer", 0)
        if (self.kind == "kangaroo") != bool(self.exit_layer):
            raise ValueError("exit_layer (>= 1) is Kangaroo's and only Kangaroo's: where its "
                             "adapter reads the target")
        if self.kind == "kangaroo" and not self.distill:
            raise ValueError("Kangaroo's adapter learns the target's distribution: it needs "
                             "distill: true")
        if self.draft_vocab and not head_kind(self.kind).reduced_vocab:
            reducible = tuple(name for name, kind in KINDS.items() if kind.reduced_vocab)
            raise ValueError(f"draft_vocab: {self.kind} heads read the full vocabulary; "
                             f"a reduced one is for {reducible}")
        if self.draft_vocab and not self.distill:
            raise ValueError("draft_vocab needs distill: true (corpus tokens outside the "
                             "draft vocabulary could not be labels)")


def make_loss(cfg: HeadsTrainConfig, target_cfg: ModelConfig, heads_cfg):
    """loss_fn(params, target_params, windows, key) -> (loss, metrics) of the run's kind."""
    return head_kind(cfg.kind).loss(heads_cfg, target_cfg, cfg)


def initial_heads(cfg: HeadsTrainConfig, target, train_stream: np.ndarray):
    """(HeadsConfig or EagleConfig, params) a run starts from: the `init_from` folder's
    heads, or fresh ones (a reduced vocabulary: the K most frequent training tokens)."""
    kind = head_kind(cfg.kind)
    heads_cfg = kind.new_config(target.config, cfg)
    if cfg.init_from:
        return heads_cfg, trained_start(cfg.init_from, heads_cfg, target.params)
    ids = None if not cfg.draft_vocab else frequent_tokens(
        train_stream, cfg.draft_vocab, target.config.vocab_size)
    return heads_cfg, kind.init(heads_cfg, target.params, jax.random.PRNGKey(cfg.seed), ids)


def train_heads(cfg: HeadsTrainConfig, target, train_stream: np.ndarray,
                val_stream: Optional[np.ndarray] = None, stop_at: Optional[int] = None,
                progress: bool = True, start: Optional[tuple] = None):
    """(HeadsConfig or EagleConfig, TrainResult) for heads on `target` (a LoadedModel),
    from `start` (`initial_heads`' pair, when made already)."""
    heads_cfg, params = start or initial_heads(cfg, target, train_stream)
    loss_fn = make_loss(cfg, target.config, heads_cfg)
    result = fit(cfg, params, loss_fn, train_stream, val_stream, frozen=target.params,
                 stop_at=stop_at, progress=progress)
    return heads_cfg, result


def trained_start(path: str, heads_cfg, target_params) -> dict:
    """The params of the heads folder `path` as a run's start: refused unless they are
    heads of `heads_cfg` (kind, sizes, vocabulary); shipped bfloat16 weights are widened
    to the dtypes fresh heads train in."""
    saved_cfg, saved = load_heads(path)
    if saved_cfg != heads_cfg:
        differ = [f.name for f in dataclasses.fields(heads_cfg)
                  if getattr(saved_cfg, f.name, None) != getattr(heads_cfg, f.name)]
        raise ValueError(f"init_from {path!r}: its heads differ from this run's in "
                         f"{differ or ['kind']}")
    fresh = jax.eval_shape(lambda: head_kind(heads_cfg.kind).init(
        heads_cfg, target_params, jax.random.PRNGKey(0), saved["params"].get("vocab_ids")))
    return jax.tree.map(lambda like, value: np.asarray(value, like.dtype), fresh, saved)


def run_heads(cfg: HeadsTrainConfig, stop_at: Optional[int] = None) -> str:
    """Data, training (resumable) and export to `output`/heads; returns that path."""
    target, streams = target_and_corpus(cfg.target, cfg.output, cfg.corpus, cfg.generations)
    heads_cfg, start = initial_heads(cfg, target, streams["train"])
    before = evaluate(cfg, start, make_loss(cfg, target.config, heads_cfg),
                      streams["validation"], frozen=target.params)
    print_metrics("the heads before training", before)
    _, result = train_heads(cfg, target, streams["train"], streams["validation"], stop_at,
                            start=(heads_cfg, start))
    export = os.path.join(cfg.output, "heads")
    save_heads(export, heads_cfg, jax.tree.map(np.asarray, result.params))
    write_summary(cfg.output, result, export, before=before)
    return export


def load_config(path: str, **overrides) -> HeadsTrainConfig:
    """A HeadsTrainConfig from YAML; `overrides` that are not None win."""
    return load_yaml_config(HeadsTrainConfig, path, **overrides)
