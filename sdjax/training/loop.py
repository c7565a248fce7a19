"""The training loop every sdjax trainer shares: optax AdamW (warmup + cosine), a
jitted step over a (data, model) mesh, orbax checkpoints with exact resume, a fixed
evaluation set, a progress bar and a metrics.jsonl log.

The data order is a pure function of (seed, step): the batch of step s is a set
of random windows of the token stream drawn from `np.random.default_rng([seed, s])`.
So is the loss function's PRNG key (`fold_in(key(seed), step)`, made inside the step).
A resumed run therefore sees exactly the batches and noise the uninterrupted run would have,
and resuming restores params, optimizer state and step: the result is the same
parameters, bit for bit on one machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sdjax import sharding
from sdjax.training.checkpoints import CheckpointError, RunCheckpoints
from sdjax.validation import check_fields, check_range, from_dict

# Field metadata of a path: in a YAML config it is relative to the file's folder.
PATH = {"path": True}
# ... of a model: a path, or a named model (`sdjax.pretrained.NAMES`) kept as it is.
MODEL = {"path": True, "model": True}

# loss_fn(params, frozen, windows [B, T + 1], key) -> (loss, {metric name: value}); key
# is the step's PRNG key in training, None in evaluation (no noise, no dropout).
LossFn = Callable[[Any, Any, jax.Array, Optional[jax.Array]], tuple]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Optimisation and bookkeeping settings shared by every trainer."""

    output: str = dataclasses.field(metadata=PATH)  # checkpoints/, metrics.jsonl, exports
    seq_len: int = 512
    batch_size: int = 16
    steps: int = 1000
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # cosine decays to learning_rate * end_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 250
    seed: int = 0
    data_parallel: int = 0  # devices on the `data` axis; 0 = all of them / model_parallel
    model_parallel: int = 1  # devices on the `model` axis (parameter sharding)

    def __post_init__(self):
        check_fields(self)
        for name in ("batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every",
                     "model_parallel"):
            check_range(self, name, 1)
        check_range(self, "seq_len", 2)
        check_range(self, "learning_rate", 0, low_open=True)
        check_range(self, "grad_clip", 0, low_open=True)
        check_range(self, "end_lr_ratio", 0, 1)
        for name in ("warmup_steps", "weight_decay", "data_parallel", "seed"):
            check_range(self, name, 0)


class TrainResult(NamedTuple):
    """What `fit` returns."""
    params: Any
    step: int
    history: List[Dict[str, float]]  # one row per logged step: step, loss, lr, eval_*


def batch_at(stream: np.ndarray, step: int, batch_size: int, seq_len: int,
             seed: int) -> np.ndarray:
    """[batch_size, seq_len + 1] int32 windows of the stream for this step."""
    if len(stream) <= seq_len + 1:
        raise ValueError(f"token stream of {len(stream)} tokens is too short for "
                         f"seq_len={seq_len}")
    starts = np.random.default_rng([seed, step]).integers(0, len(stream) - seq_len - 1,
                                                          batch_size)
    return stream[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def eval_windows(stream: np.ndarray, count: int, seq_len: int) -> np.ndarray:
    """[count, seq_len + 1] evenly spaced windows: the fixed evaluation set."""
    starts = np.linspace(0, len(stream) - seq_len - 1, count).astype(np.int64)
    return stream[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def learning_rate_schedule(cfg: LoopConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to learning_rate * end_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_ratio)


def make_optimizer(cfg: LoopConfig) -> optax.GradientTransformation:
    """Gradient clipping, then AdamW on the warmup + cosine schedule."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(learning_rate_schedule(cfg), b1=0.9, b2=0.95,
                                   weight_decay=cfg.weight_decay))


def make_mesh(cfg: LoopConfig):
    """The (data, model) training mesh; the batch must divide over `data`."""
    model = cfg.model_parallel
    data = cfg.data_parallel or max(1, jax.device_count() // model)
    if cfg.batch_size % data:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the "
                         f"{data} data-parallel devices")
    return sharding.make_mesh(data, model, jax.devices()[: data * model])


def trainable(params):
    """The floating-point leaves of params (the others None): what `fit` optimises.
    Integer leaves, such as a reduced draft vocabulary's ids, ride along unchanged."""
    return jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jnp.inexact) else None, params)


def _with_trainable(params, updated):
    """params with its floating-point leaves replaced by `updated`'s."""
    return jax.tree.map(lambda new, old: old if new is None else new, updated, params,
                        is_leaf=lambda x: x is None)


def _train_step(loss_fn: LossFn, tx: optax.GradientTransformation, seed: int):
    def step(state, frozen, windows):
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        weights = trainable(state["params"])
        (loss, _), grads = jax.value_and_grad(
            lambda w: loss_fn(_with_trainable(state["params"], w), frozen, windows, key),
            has_aux=True)(weights)
        updates, opt_state = tx.update(grads, state["opt_state"], weights)
        params = _with_trainable(state["params"], optax.apply_updates(weights, updates))
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    return jax.jit(step, donate_argnums=0)


# Fields a resumed run may change: how far it goes and how often it reports. Paths are
# not compared (a run folder may move between machines).
RESUMABLE_CHANGES = frozenset({"steps", "eval_every", "eval_batches", "checkpoint_every"})


def run_settings(cfg: LoopConfig) -> dict:
    """The fields of `cfg` that decide a run's trajectory (as JSON values): recorded with
    its checkpoints, so that resuming under others (another seed, learning rate, batch
    shape) is refused instead of silently training a different run."""
    return json.loads(json.dumps(
        {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
         if f.name not in RESUMABLE_CHANGES and not f.metadata.get("path")}, default=str))


def fit(cfg: LoopConfig, params, loss_fn: LossFn, train_stream: np.ndarray,
        val_stream: Optional[np.ndarray] = None, frozen=None, stop_at: Optional[int] = None,
        progress: bool = True) -> TrainResult:
    """Trains `params` (or resumes) to `cfg.steps`, or only up to `stop_at`.

    `frozen` (e.g. a target model's params) enters the loss but is never updated;
    both are sharded by the rules of `sdjax.sharding`. Checkpoints go to
    `cfg.output`/checkpoints every `cfg.checkpoint_every` steps and at the end; the
    newest intact checkpoint there is resumed from (`sdjax.training.checkpoints`).
    Evaluation logs eval_loss and the loss function's metrics, averaged over the fixed
    validation windows.
    """
    mesh = make_mesh(cfg)
    tx = make_optimizer(cfg)
    # The step donates its state: copy, so the caller's arrays (e.g. a draft model it
    # evaluates again after) survive when sharding them moved nothing.
    params = jax.tree.map(lambda x: x.copy(), sharding.shard_params(params, mesh))
    frozen = None if frozen is None else sharding.shard_params(frozen, mesh)
    state = {"params": params, "opt_state": jax.jit(tx.init)(trainable(params)),
             "step": jnp.zeros((), jnp.int32)}
    checkpoints = RunCheckpoints(cfg.output, params, run_settings(cfg))
    try:
        state = checkpoints.restore(state) or state
        start = int(state["step"])
        if stop_at is not None and stop_at < start:
            raise CheckpointError(f"stop_at={stop_at} is before step {start}, where the run "
                                  f"in {cfg.output} resumes")
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        train_step = _train_step(loss_fn, tx, cfg.seed)
        evaluator = None if val_stream is None else Evaluator(cfg, loss_fn, val_stream, mesh)
        history: List[Dict[str, float]] = []
        schedule = learning_rate_schedule(cfg)
        bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress,
                   desc="train", unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        for step in bar:
            windows = sharding.shard_batch(
                batch_at(train_stream, step, cfg.batch_size, cfg.seq_len, cfg.seed), mesh)
            state, loss = train_step(state, frozen, windows)
            done = step + 1
            row = None
            if done % cfg.eval_every == 0 or done == end:
                row = {"step": done, "loss": float(loss), "lr": float(schedule(step)),
                       "seconds": time.perf_counter() - started}
                if evaluator is not None:
                    row.update(evaluator(state["params"], frozen))
                history.append(row)
                if jax.process_index() == 0:
                    with open(os.path.join(cfg.output, "metrics.jsonl"), "a") as f:
                        f.write(json.dumps(row) + "\n")
            if done % 10 == 0 or row:
                bar.set_postfix(loss=f"{float(loss):.3f}",
                                **({"eval": f"{row['eval_loss']:.3f}"} if row and evaluator
                                   else {}))
            if done % cfg.checkpoint_every == 0 or done == end:
                checkpoints.save(done, state)
    finally:
        checkpoints.close()
    return TrainResult(state["params"], int(state["step"]), history)


class Evaluator:
    """eval_loss and the loss function's eval_ metrics on the fixed validation windows,
    averaged: what `fit` logs."""

    def __init__(self, cfg: LoopConfig, loss_fn: LossFn, val_stream: np.ndarray, mesh):
        self.fn = jax.jit(lambda params, frozen, windows: loss_fn(params, frozen, windows, None))
        self.windows = eval_windows(val_stream, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
        self.batch_size, self.mesh = cfg.batch_size, mesh

    def __call__(self, params, frozen) -> Dict[str, float]:
        rows = []
        for i in range(0, len(self.windows), self.batch_size):
            loss, metrics = self.fn(params, frozen, sharding.shard_batch(
                self.windows[i:i + self.batch_size], self.mesh))
            rows.append({"eval_loss": loss, **{f"eval_{k}": v for k, v in metrics.items()}})
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate(cfg: LoopConfig, params, loss_fn: LossFn, val_stream: np.ndarray,
             frozen=None) -> Dict[str, float]:
    """What `fit` would log for `params` on the validation windows (e.g. an untrained
    draft's, to compare)."""
    mesh = make_mesh(cfg)
    frozen = None if frozen is None else sharding.shard_params(frozen, mesh)
    return Evaluator(cfg, loss_fn, val_stream, mesh)(sharding.shard_params(params, mesh),
                                                     frozen)


def print_metrics(label: str, metrics: Dict[str, float]) -> None:
    """One line: `label`: name value, ... (e.g. a run's start, before training)."""
    print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def load_yaml_config(cls, path: str, **overrides):
    """A config dataclass from a YAML file; `overrides` (not None) win. Paths in the
    file (fields marked PATH) are relative to the file's folder, overrides to the
    current directory."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"training config {path!r} does not exist")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of {cls.__name__} fields")
    from sdjax.pretrained import NAMES

    folder = os.path.dirname(os.path.abspath(path))
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        if field.metadata.get("model") and value in NAMES:
            continue
        if field.metadata.get("path") and isinstance(value, str):
            values[field.name] = os.path.normpath(os.path.join(folder, value))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values)


def target_and_corpus(target: str, output: str, corpus, generations: Optional[str] = None):
    """(the frozen target, {"train", "validation"} token streams of `corpus` in its
    tokenizer, cached under `output`/data; with `generations`, a folder of the target's
    own continuations, "train" is those): what every trainer on a target reads."""
    from sdjax.data import prepare_corpus
    from sdjax.models.hf import load_hf
    from sdjax.pretrained import model_folder
    from sdjax.training.generations import read_generations

    os.makedirs(output, exist_ok=True)
    folder = model_folder(target)
    model = load_hf(folder)
    if model.tokenizer is None:
        raise ValueError(f"{target} has no tokenizer to read the training corpus with")
    streams = prepare_corpus(folder, 0, output, corpus)[1]
    if generations:
        streams["train"] = read_generations(generations, model.config)
    return model, streams


def write_summary(output: str, result: TrainResult, export: str, **extra) -> None:
    """output/summary.json: the final logged row, the steps and `extra`; and a line."""
    summary = {**extra, "steps": result.step, **(result.history[-1] if result.history else {})}
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"exported {export}: {json.dumps(summary)}")
