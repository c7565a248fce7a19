"""SpecDec++'s acceptance head, trained on a frozen (draft, target) pair.

    sdjax train acceptance --config configs/train/testbed_acceptance.yaml

Each step the draft continues corpus prompts (or the target's own generations) by as
many tokens as a chain drafts (`distill.sample_continuations`, inside the jit, from the
step's key: a resumed run is exact), as it drafts: greedily at `temperature` 0,
otherwise by sampling at that temperature (no top-k / top-p). The target
then scores every drafted token: at temperature 0 the label is whether it is the
target's greedy token, otherwise the chance min(1, p(x) / q(x)) that rejection
sampling accepts it (p, q warped by the temperature, as the decode loop does; the
paper's soft label). The head reads the draft's final hidden state after the draft
has read that token and learns the label by binary cross-entropy.

Evaluation draws the continuations with a fixed key and reports, beside the loss,
`accept_rate`, `brier` (the mean squared error of the predicted probability) and
`brier_constant`: that of the best constant guess (the acceptance rate itself), the
bar a head that learnt nothing would not pass.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdjax.drafters.acceptance import (
    AcceptanceHead,
    AcceptanceHeadConfig,
    init_acceptance_head,
    save_acceptance_head,
)
from sdjax.models.hf import load_hf
from sdjax.models.transformer import sequence_forward
from sdjax.training.distill import check_pair, sample_continuations
from sdjax.training.loop import (
    MODEL,
    PATH,
    LoopConfig,
    fit,
    load_yaml_config,
    target_and_corpus,
    write_summary,
)
from sdjax.validation import check_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class AcceptanceTrainConfig(LoopConfig):
    """`sdjax train acceptance` settings (a YAML file in configs/train/)."""
    # checkpoint folder with its tokenizer, or a named model ("gemma3-270m")
    target: str = dataclasses.field(metadata=MODEL)
    draft: str = dataclasses.field(metadata=PATH)  # the draft model's checkpoint folder
    num_blocks: int = 1  # residual blocks before the head's logit
    temperature: float = 0.0  # the decoding temperature the head is for (0: greedy)
    # Tokens before the draft's continuation, which is the rest of each window
    # (seq_len + 1 - prompt_len tokens: as many as a chain drafts, so the head learns
    # the depths it will judge).
    prompt_len: int = 64
    # Prefixes from the target's own generations (`sdjax train generations`), the text
    # the draft continues when decoding, instead of the corpus; validation stays the
    # corpus.
    generations: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    corpus: Tuple[str, ...] = ("stdlib",)  # `sdjax.data.corpus.SOURCES`, concatenated

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "num_blocks", 0)
        check_range(self, "temperature", 0)
        check_range(self, "prompt_len", 1, self.seq_len - 1)


def acceptance_labels(target_logits, draft_logits, tokens, temperature: float):
    """[B, T] chance that the verifier accepts each drafted token: greedy agreement at
    temperature 0, else min(1, p / q) of the warped distributions."""
    if temperature == 0.0:
        return (target_logits.argmax(-1) == tokens).astype(jnp.float32)
    pick = lambda logits: jnp.take_along_axis(
        jax.nn.log_softmax(logits / temperature), tokens[..., None], -1)[..., 0]
    return jnp.exp(jnp.minimum(pick(target_logits) - pick(draft_logits), 0.0))


def acceptance_loss(cfg: AcceptanceTrainConfig, head_cfg: AcceptanceHeadConfig, draft_cfg,
                    target_cfg):
    """loss_fn(head params, (target params, draft params), windows, key) -> (loss,
    metrics) over the drafted tokens of each window's continuation."""
    head = AcceptanceHead(head_cfg)

    def loss_fn(head_params, frozen, windows, key):
        target_params, draft_params = frozen
        key = jax.random.key(cfg.seed) if key is None else key  # evaluation: a fixed draw
        sequence = sample_continuations(draft_params, draft_cfg, windows[:, :cfg.prompt_len],
                                        windows.shape[1] - cfg.prompt_len, key,
                                        cfg.temperature)
        draft = sequence_forward(draft_params, draft_cfg, sequence)
        target_logits = sequence_forward(target_params, target_cfg, sequence[:, :-1]).logits
        labels = acceptance_labels(target_logits, draft.logits[:, :-1], sequence[:, 1:],
                                   cfg.temperature)
        # The head reads the state after the draft read token t + 1; drafted tokens
        # start at prompt_len.
        logits = head.apply(head_params, draft.hidden[:, 1:])
        weights = (jnp.arange(labels.shape[1]) >= cfg.prompt_len - 1).astype(jnp.float32)
        mean = lambda x: jnp.sum(x * weights) / (jnp.sum(weights) * x.shape[0])
        rate = mean(labels)
        metrics = {"accept_rate": rate, "brier": mean((jax.nn.sigmoid(logits) - labels) ** 2),
                   "brier_constant": mean((rate - labels) ** 2)}
        return mean(optax.sigmoid_binary_cross_entropy(logits, labels)), metrics

    return loss_fn


def train_acceptance(cfg: AcceptanceTrainConfig, target, draft, train_stream: np.ndarray,
                     val_stream: Optional[np.ndarray] = None, stop_at: Optional[int] = None,
                     progress: bool = True):
    """(AcceptanceHeadConfig, TrainResult): the head for `draft` proposing to `target`."""
    check_pair(target.config, draft.config)
    head_cfg = AcceptanceHeadConfig(draft.config.hidden_size, cfg.num_blocks, cfg.temperature)
    params = init_acceptance_head(head_cfg, jax.random.PRNGKey(cfg.seed))
    loss_fn = acceptance_loss(cfg, head_cfg, draft.config, target.config)
    result = fit(cfg, params, loss_fn, train_stream, val_stream,
                 frozen=(target.params, draft.params), stop_at=stop_at, progress=progress)
    return head_cfg, result


def run_acceptance(cfg: AcceptanceTrainConfig, stop_at: Optional[int] = None) -> str:
    """Data, training (resumable) and export to `output`/acceptance_head."""
    target, streams = target_and_corpus(cfg.target, cfg.output, cfg.corpus, cfg.generations)
    draft = load_hf(cfg.draft, load_tokenizer=False)
    head_cfg, result = train_acceptance(cfg, target, draft, streams["train"],
                                        streams["validation"], stop_at)
    export = os.path.join(cfg.output, "acceptance_head")
    save_acceptance_head(export, head_cfg, jax.device_get(result.params))
    write_summary(cfg.output, result, export)
    return export


def load_config(path: str, **overrides) -> AcceptanceTrainConfig:
    """An AcceptanceTrainConfig from YAML; `overrides` that are not None win."""
    return load_yaml_config(AcceptanceTrainConfig, path, **overrides)
