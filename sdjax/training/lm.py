"""Language-model training: optax AdamW (warmup + cosine), a jitted step over a
(data, model) mesh, orbax checkpoints with exact resume, evaluation loss.

The data order is a pure function of (seed, step): the batch of step s is a set
of random windows of the token stream drawn from `np.random.default_rng([seed, s])`.
A resumed run therefore sees exactly the batches the uninterrupted run would have,
and resuming restores params, optimizer state and step: the result is the same
parameters, bit for bit on one machine.

    sdjax train lm --config configs/train/testbed_target.yaml
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from sdjax import sharding
from sdjax.config import ModelConfig, from_dict
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer, init_params


@dataclasses.dataclass(frozen=True)
class LMTrainConfig:
    """Everything a training run needs; YAML files under configs/train/ fill it."""

    model: Dict[str, Any]  # ModelConfig fields; vocab_size comes from the tokenizer
    output: str  # run folder: tokenizer/, data/, checkpoints/, metrics.jsonl, hf/
    tokenizer: Optional[str] = None  # tokenizer folder, trained there if absent
    # (None: output/tokenizer)
    vocab_size: int = 4096  # entries of a newly trained tokenizer
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
    export_dtype: str = "bfloat16"


class TrainResult(NamedTuple):
    params: Any
    step: int
    history: List[Dict[str, float]]  # one row per logged step: step, loss, lr, [eval_loss]


def model_config(values: Dict[str, Any], vocab_size: int, eos_token_id: int) -> ModelConfig:
    values = {"arch": "llama", "max_position_embeddings": 2048, **values,
              "vocab_size": vocab_size, "eos_token_id": (eos_token_id,),
              "bos_token_id": eos_token_id, "pad_token_id": eos_token_id}
    return from_dict(ModelConfig, values)


# ----------------------------------------------------------------------------- data


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


# -------------------------------------------------------------------------- the step


def lm_loss(params, cfg: ModelConfig, windows: jax.Array) -> jax.Array:
    """Mean next-token cross entropy over [B, T + 1] windows."""
    chex.assert_rank(windows, 2)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    batch, length = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), inputs.shape)
    out = Transformer(cfg).apply(params, inputs, positions, KVCache.init(cfg, batch, length))
    return optax.softmax_cross_entropy_with_integer_labels(out.logits, targets).mean()


def learning_rate_schedule(cfg: LMTrainConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to learning_rate * end_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_ratio)


def make_optimizer(cfg: LMTrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(learning_rate_schedule(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))


def make_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation):
    def step(state, windows):
        loss, grads = jax.value_and_grad(lm_loss)(state["params"], model_cfg, windows)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    return jax.jit(step, donate_argnums=0)


def _mesh(cfg: LMTrainConfig):
    model = cfg.model_parallel
    data = cfg.data_parallel or max(1, jax.device_count() // model)
    if cfg.batch_size % data:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the "
                         f"{data} data-parallel devices")
    return sharding.make_mesh(data, model, jax.devices()[: data * model])


# -------------------------------------------------------------------------- the loop


def train_lm(cfg: LMTrainConfig, model_cfg: ModelConfig, train_stream: np.ndarray,
             val_stream: Optional[np.ndarray] = None, stop_at: Optional[int] = None,
             progress: bool = True) -> TrainResult:
    """Trains (or resumes) to `cfg.steps`, or only up to `stop_at` (to test resume).

    Checkpoints go to `cfg.output`/checkpoints every `cfg.checkpoint_every` steps and
    at the end; an existing checkpoint there is resumed from.
    """
    mesh = _mesh(cfg)
    tx = make_optimizer(cfg)
    params = sharding.shard_params(init_params(model_cfg, jax.random.PRNGKey(cfg.seed)), mesh)
    state = {"params": params, "opt_state": jax.jit(tx.init)(params),
             "step": jnp.zeros((), jnp.int32)}
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(cfg.output, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    if manager.latest_step() is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
    start = int(state["step"])
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    train_step = make_train_step(model_cfg, tx)
    eval_fn = jax.jit(lm_loss, static_argnums=1)
    val = None if val_stream is None else eval_windows(
        val_stream, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    metrics_path = os.path.join(cfg.output, "metrics.jsonl")
    history: List[Dict[str, float]] = []
    schedule_lr = learning_rate_schedule(cfg)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress,
               desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    for step in bar:
        windows = sharding.shard_batch(
            batch_at(train_stream, step, cfg.batch_size, cfg.seq_len, cfg.seed), mesh)
        state, loss = train_step(state, windows)
        done = step + 1
        row = None
        if done % cfg.eval_every == 0 or done == end:
            row = {"step": done, "loss": float(loss), "lr": float(schedule_lr(step)),
                   "seconds": time.perf_counter() - started}
            if val is not None:
                row["eval_loss"] = float(np.mean([
                    eval_fn(state["params"], model_cfg,
                            sharding.shard_batch(val[i:i + cfg.batch_size], mesh))
                    for i in range(0, len(val), cfg.batch_size)]))
            history.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if done % 10 == 0 or row:
            bar.set_postfix(loss=f"{float(loss):.3f}",
                            **({"eval": f"{row['eval_loss']:.3f}"} if row and val is not None
                               else {}))
        if done % cfg.checkpoint_every == 0 or done == end:
            manager.save(done, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    manager.close()
    return TrainResult(state["params"], int(state["step"]), history)


# ------------------------------------------------------------------- the whole job


def _prepare(cfg: LMTrainConfig):
    """Tokenizer (loaded, or trained on the train split) and cached token streams."""
    from sdjax import data

    tok_dir = cfg.tokenizer or os.path.join(cfg.output, "tokenizer")
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tokenizer = data.load_tokenizer(tok_dir)
    else:
        print(f"training a {cfg.vocab_size}-entry BPE tokenizer on the train split "
              f"into {tok_dir}...")
        tokenizer = data.train_tokenizer(data.read_split("train"), cfg.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    streams = {}
    for split in ("train", "validation"):
        path = os.path.join(cfg.output, "data", f"{split}.npy")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, data.encode_corpus(tokenizer, data.read_split(split)))
        streams[split] = np.load(path)
    return tokenizer, streams


def run_lm(cfg: LMTrainConfig, stop_at: Optional[int] = None) -> str:
    """Tokenizer, data, training (resumable) and export to `output`/hf; returns that path."""
    from sdjax.models.hf import save_hf

    os.makedirs(cfg.output, exist_ok=True)
    tokenizer, streams = _prepare(cfg)
    model_cfg = model_config(cfg.model, len(tokenizer), tokenizer.eos_token_id)
    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: init_params(model_cfg, jax.random.PRNGKey(0)))))
    print(f"model: {n_params / 1e6:.2f}M parameters; train stream "
          f"{len(streams['train']) / 1e6:.2f}M tokens, validation "
          f"{len(streams['validation']) / 1e6:.2f}M; {jax.device_count()} device(s)")
    result = train_lm(cfg, model_cfg, streams["train"], streams["validation"], stop_at)
    export = os.path.join(cfg.output, "hf")
    dtype = jnp.dtype(cfg.export_dtype)
    save_hf(export, model_cfg, jax.tree.map(lambda x: np.asarray(x).astype(dtype),
                                            result.params), tokenizer)
    summary = {"parameters": n_params, "steps": result.step, **(result.history[-1]
               if result.history else {})}
    with open(os.path.join(cfg.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"exported {export}: {json.dumps(summary)}")
    return export


def load_config(path: str, **overrides) -> LMTrainConfig:
    """An LMTrainConfig from a YAML file; `overrides` (not None) win."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"training config {path!r} does not exist")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of LMTrainConfig fields")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(LMTrainConfig, values)
