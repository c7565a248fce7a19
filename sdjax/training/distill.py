"""Draft-model alignment: DistillSpec and Seq-KD (Zhou et al. 2024; Kim & Rush 2016).

    sdjax train distill --config configs/train/testbed_distill.yaml

A draft is accepted as often as its distribution q agrees with the target's p: a
chain's greedy acceptance is the chance that their argmaxes agree, and rejection
sampling accepts a token with probability sum_x min(p(x), q(x)) = 1 - TV(p, q).
A draft trained on human text learns the data's distribution, not the target's;
distillation trains it towards p directly. DistillSpec's two choices are config
fields here:

- `divergence`: the per-token D(p || q) minimised, one of DIVERGENCES (forward KL,
  reverse KL, Jensen-Shannon with beta = 1/2, total variation). TV is what
  rejection sampling pays for; the KLs are its smooth surrogates.
- the data the divergence is measured on: corpus windows (fixed data), the
  target's own generations (`generations: FOLDER` from `sdjax train generations`:
  Seq-KD), and with `on_policy` > 0 that fraction of each batch's rows continued by
  the draft itself (DistillSpec's on-policy data: the prefixes the draft will
  actually propose from). The draft samples inside the jitted step from the step's
  PRNG key, so a resumed run is exact.

The draft is a checkpoint folder (`draft`) or, for a target with no smaller sibling
(Gemma 3 270M), copies of some of the target's own layers (`draft_layers`). With
`draft_vocab` = K it scores only the K most frequent target tokens of the training
data (a reduced vocabulary: on Gemma 3 the 262,144-row LM head would be most of a
small draft's cost), and is trained towards the target's distribution restricted to
those K and renormalised, the best a draft that is zero elsewhere can do.

The target is frozen and sharded like any `fit` run's `frozen` params. Evaluation on
fixed held-out windows reports, whatever the divergence trained: `top1` (greedy
acceptance at depth 1: agreement with the target's own greedy token), `accept`
(1 - TV at temperature 1, over the draft's vocabulary) and `fkl`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig
from sdjax.drafters.draft_model import draft_from_layers, load_draft_model, save_draft_model
from sdjax.drafters.vocab import frequent_tokens, to_target
from sdjax.heads.losses import teach
from sdjax.models.cache import KVCache
from sdjax.models.hf import LoadedModel
from sdjax.models.transformer import Transformer, head_rows, sequence_forward
from sdjax.training.loop import (
    MODEL,
    PATH,
    LoopConfig,
    TrainResult,
    evaluate,
    fit,
    load_yaml_config,
    print_metrics,
    target_and_corpus,
    write_summary,
)
from sdjax.validation import check_range


def forward_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p || q) over the last axis: mass-covering (the usual distillation loss)."""
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def reverse_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(q || p) over the last axis: mode-seeking."""
    return forward_kl(log_q, log_p)


def jensen_shannon(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """JSD with beta = 1/2: the mean KL of p and q to their mixture (bounded by log 2)."""
    log_mixture = jnp.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (forward_kl(log_p, log_mixture) + forward_kl(log_q, log_mixture))


def total_variation(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """TV(p, q) = 1/2 sum |p - q|: one minus rejection sampling's acceptance rate."""
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)


# DistillSpec's divergences D(p || q), p the target's log-probabilities, q the draft's.
DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": jensen_shannon,
               "tvd": total_variation}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(LoopConfig):
    """`sdjax train distill` settings (a YAML file in configs/train/)."""
    # checkpoint folder with its tokenizer, or a named model ("gemma3-270m")
    target: str = dataclasses.field(metadata=MODEL)
    # the draft model's checkpoint folder (the target's vocabulary); its weights start
    # the run and the distilled draft is exported to `output`/hf in the same format
    draft: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    # or: the draft starts as copies of these target layers (ascending), its embedding
    # and final norm (`draft_from_layers`)
    draft_layers: Optional[Tuple[int, ...]] = None
    # K: the draft scores the K most frequent target tokens of the training data only
    # (None: the draft folder's reduced vocabulary if it has one, else all)
    draft_vocab: Optional[int] = None
    divergence: str = "fkl"  # a key of DIVERGENCES
    # Fraction of each batch's rows whose continuation the draft samples itself
    # (on-policy data); the others read the corpus, or the generations.
    on_policy: float = 0.0
    prompt_len: int = 64  # on-policy rows: corpus tokens the draft continues from
    sample_temperature: float = 1.0  # the draft's sampling temperature on-policy (0: greedy)
    # Train on the target's own generations (`sdjax train generations`; Seq-KD)
    # instead of the corpus; validation stays the corpus.
    generations: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    corpus: Tuple[str, ...] = ("stdlib",)  # `sdjax.data.corpus.SOURCES`, concatenated
    export_dtype: str = "bfloat16"

    def __post_init__(self):
        super().__post_init__()
        if (self.draft is None) == (self.draft_layers is None):
            raise ValueError("DistillConfig needs one of draft (a checkpoint folder) and "
                             "draft_layers (the target's layers the draft starts from)")
        if self.draft_vocab is not None:
            check_range(self, "draft_vocab", 1)
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"DistillConfig.divergence must be one of {sorted(DIVERGENCES)}, "
                             f"got {self.divergence!r}")
        check_range(self, "on_policy", 0, 1)
        if self.on_policy and not self.on_policy_rows:
            raise ValueError(f"DistillConfig.on_policy={self.on_policy} of batch_size="
                             f"{self.batch_size} rounds to no on-policy row")
        check_range(self, "sample_temperature", 0)
        if self.on_policy:
            check_range(self, "prompt_len", 1, self.seq_len - 1)
        if self.export_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"DistillConfig.export_dtype must be float32, bfloat16 or "
                             f"float16, got {self.export_dtype!r}")

    @property
    def on_policy_rows(self) -> int:
        """How many rows of each batch the draft continues (the first ones)."""
        return round(self.on_policy * self.batch_size)


def sample_continuations(params, cfg: ModelConfig, prompts: jax.Array, new_tokens: int,
                         key: jax.Array, temperature: float, vocab_ids=None) -> jax.Array:
    """[B, P] prompts -> [B, P + new_tokens]: each row continued by the model, one
    cached forward per token (`lax.scan`); greedy at temperature 0; over the reduced
    vocabulary `vocab_ids` [K] when given. Jittable."""
    batch, length = prompts.shape
    model = Transformer(cfg)
    head = None if vocab_ids is None else head_rows(params, vocab_ids)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), prompts.shape)
    out = model.apply(params, prompts, positions,
                      KVCache.init(cfg, batch, length + new_tokens), logits_from=length - 1,
                      head=head)

    def pick(logits, step_key):
        index = (logits.argmax(-1) if temperature == 0.0 else
                 jax.random.categorical(step_key, logits / temperature))
        return to_target(vocab_ids, index).astype(jnp.int32)

    def step(carry, step_key):
        cache, logits = carry
        token = pick(logits, step_key)
        out = model.apply(params, token[:, None], cache.length[:, None], cache, head=head)
        return (out.cache.commit(1), out.logits[:, -1]), token

    keys = jax.random.split(key, new_tokens)
    carry = (out.cache.commit(jnp.full((batch,), length)), out.logits[:, -1])
    (_, logits), tokens = jax.lax.scan(step, carry, keys[:-1])  # the last needs no forward
    return jnp.concatenate([prompts, tokens.T, pick(logits, keys[-1])[:, None]], axis=1)


def on_policy_weights(shape, rows: int, prompt_len: int) -> jax.Array:
    """[B, T] loss weights of positions when the first `rows` rows' tokens from
    `prompt_len` on are the draft's samples: position t predicts token t + 1, so those
    rows count from position prompt_len - 1; the other rows (data) count everywhere."""
    weights = jnp.ones(shape, jnp.float32)
    return weights.at[:rows, :prompt_len - 1].set(0.0)


def distill_loss(cfg: DistillConfig, draft_cfg: ModelConfig, target_cfg: ModelConfig,
                 vocab_ids=None):
    """loss_fn(draft params, target params, windows [B, T + 1], key) -> (loss, metrics):
    the mean divergence over the positions whose next token is data or the draft's
    own sample (on-policy rows: only the sampled part); with `vocab_ids` [K] between
    the draft's and the target's distributions over those K tokens (the target's
    renormalised there; in training only those rows of its LM head are computed)."""
    divergence = DIVERGENCES[cfg.divergence]
    rows = cfg.on_policy_rows
    ids = None if vocab_ids is None else jnp.asarray(vocab_ids, jnp.int32)

    def loss_fn(params, target_params, windows, key):
        inputs = windows[:, :-1]
        weights = jnp.ones(inputs.shape, jnp.float32)
        if rows and key is not None:  # training only: evaluation reads fixed windows
            sampled = sample_continuations(
                jax.lax.stop_gradient(params), draft_cfg, inputs[:rows, :cfg.prompt_len],
                inputs.shape[1] - cfg.prompt_len, key, cfg.sample_temperature, ids)
            inputs = inputs.at[:rows].set(sampled)
            weights = on_policy_weights(inputs.shape, rows, cfg.prompt_len)
        teacher = teach(target_params, target_cfg, inputs, ids, training=key is not None)
        log_p = jax.nn.log_softmax(teacher.logits)
        head = None if ids is None else head_rows(params, ids)
        log_q = jax.nn.log_softmax(sequence_forward(params, draft_cfg, inputs,
                                                    head=head).logits)
        mean = lambda x: jnp.sum(x * weights) / jnp.sum(weights)
        metrics = {"top1": mean(teacher.token == to_target(ids, log_q.argmax(-1))),
                   "accept": mean(1.0 - total_variation(log_p, log_q)),
                   "fkl": mean(forward_kl(log_p, log_q))}
        return mean(divergence(log_p, log_q)), metrics

    return loss_fn


def check_pair(target_cfg: ModelConfig, draft_cfg: ModelConfig) -> None:
    """A draft distils towards the target token by token: the vocabularies must match."""
    if draft_cfg.vocab_size != target_cfg.vocab_size:
        raise ValueError(f"the draft's vocabulary has {draft_cfg.vocab_size} entries, the "
                         f"target's {target_cfg.vocab_size}: distillation compares their "
                         "distributions token by token, so they must share a tokenizer")


def train_distill(cfg: DistillConfig, target: LoadedModel, draft: LoadedModel,
                  train_stream: np.ndarray, val_stream: Optional[np.ndarray] = None,
                  stop_at: Optional[int] = None, progress: bool = True,
                  vocab_ids=None) -> TrainResult:
    """Distils `draft` (float32; over the reduced vocabulary `vocab_ids` when given)
    towards the frozen `target`."""
    check_pair(target.config, draft.config)
    loss_fn = distill_loss(cfg, draft.config, target.config, vocab_ids)
    return fit(cfg, {"params": draft.params["params"]}, loss_fn, train_stream, val_stream,
               frozen=target.params, stop_at=stop_at, progress=progress)


def initial_draft(cfg: DistillConfig, target: LoadedModel, train_stream: np.ndarray):
    """(the draft before distillation as a LoadedModel, its vocabulary's ids or None):
    the `draft` folder, or copies of the target's `draft_layers`; `draft_vocab` (the
    K most frequent training tokens) replaces the folder's own reduced vocabulary."""
    if cfg.draft_layers is not None:
        draft_cfg, params = draft_from_layers(target.config, target.params, cfg.draft_layers)
        draft, ids = LoadedModel(draft_cfg, params, None), None
    else:
        model, draft_params = load_draft_model(cfg.draft, load_tokenizer=False)
        draft, ids = model, draft_params.get("vocab_ids")
    check_pair(target.config, draft.config)
    if cfg.draft_vocab is not None:
        ids = frequent_tokens(train_stream, cfg.draft_vocab, target.config.vocab_size)
    return draft, ids


def run_distill(cfg: DistillConfig, stop_at: Optional[int] = None) -> str:
    """Data, distillation (resumable) and export to `output`/hf; returns that path."""
    target, streams = target_and_corpus(cfg.target, cfg.output, cfg.corpus, cfg.generations)
    draft, ids = initial_draft(cfg, target, streams["train"])
    before = evaluate(cfg, draft.params, distill_loss(cfg, draft.config, target.config, ids),
                      streams["validation"], frozen=target.params)
    print_metrics("the draft before distillation", before)
    result = train_distill(cfg, target, draft, streams["train"], streams["validation"],
                           stop_at, vocab_ids=ids)
    export = os.path.join(cfg.output, "hf")
    dtype = jnp.dtype(cfg.export_dtype)
    params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), result.params)
    if ids is not None:
        params = {**params, "vocab_ids": ids}
    save_draft_model(export, draft.config, params, target.tokenizer)
    write_summary(cfg.output, result, export, before=before, draft_vocab=None if ids is None
                  else int(ids.size))
    return export


def load_config(path: str, **overrides) -> DistillConfig:
    """A DistillConfig from YAML; `overrides` that are not None win."""
    return load_yaml_config(DistillConfig, path, **overrides)
