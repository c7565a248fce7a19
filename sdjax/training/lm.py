"""Language-model training on the stdlib corpus (the testbed's target and draft).

    sdjax train lm --config configs/train/testbed_target.yaml

The loop (optimizer, mesh, orbax resume, evaluation) is `sdjax.training.loop`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdjax.config import ModelConfig, from_dict
from sdjax.data import prepare_corpus
from sdjax.models.transformer import init_params, sequence_forward
from sdjax.training.loop import PATH, LoopConfig, TrainResult, fit, load_yaml_config, write_summary
from sdjax.validation import check_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMTrainConfig(LoopConfig):
    """A language-model run; YAML files under configs/train/ fill it."""

    model: Dict[str, Any]  # ModelConfig fields; vocab_size comes from the tokenizer
    # The tokenizer folder, trained there if absent (None: output/tokenizer).
    tokenizer: Optional[str] = dataclasses.field(default=None, metadata=PATH)
    vocab_size: int = 4096  # entries of a newly trained tokenizer
    export_dtype: str = "bfloat16"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "vocab_size", 2)
        if self.export_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"LMTrainConfig.export_dtype must be float32, bfloat16 or "
                             f"float16, got {self.export_dtype!r}")
        from_tokenizer = sorted(TOKENIZER_FIELDS & set(self.model))
        if from_tokenizer:
            raise ValueError(f"model section: {from_tokenizer} come from the tokenizer "
                             "(set LMTrainConfig.vocab_size for a newly trained one)")
        model_config(self.model, self.vocab_size, 0)  # the section's keys and types, now


# ModelConfig fields the tokenizer decides.
TOKENIZER_FIELDS = {"vocab_size", "eos_token_id", "bos_token_id", "pad_token_id"}


def model_config(values: Dict[str, Any], vocab_size: int, eos_token_id: int) -> ModelConfig:
    """The ModelConfig of a config's `model` section, with the tokenizer's ids."""
    values = {"max_position_embeddings": 2048, **values,
              "vocab_size": vocab_size, "eos_token_id": (eos_token_id,),
              "bos_token_id": eos_token_id, "pad_token_id": eos_token_id}
    return from_dict(ModelConfig, values)


def lm_loss(params, cfg: ModelConfig, windows: jax.Array) -> jax.Array:
    """Mean next-token cross entropy over [B, T + 1] windows."""
    chex.assert_rank(windows, 2)
    logits = sequence_forward(params, cfg, windows[:, :-1]).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()


def train_lm(cfg: LMTrainConfig, model_cfg: ModelConfig, train_stream: np.ndarray,
             val_stream: Optional[np.ndarray] = None, stop_at: Optional[int] = None,
             progress: bool = True) -> TrainResult:
    """Trains (or resumes) a model of `model_cfg` from random initialisation."""
    params = init_params(model_cfg, jax.random.PRNGKey(cfg.seed))
    loss_fn = lambda p, _, windows, key: (lm_loss(p, model_cfg, windows), {})
    return fit(cfg, params, loss_fn, train_stream, val_stream, stop_at=stop_at,
               progress=progress)


def run_lm(cfg: LMTrainConfig, stop_at: Optional[int] = None) -> str:
    """Tokenizer, data, training (resumable) and export to `output`/hf; returns that path."""
    from sdjax.models.hf import save_hf

    os.makedirs(cfg.output, exist_ok=True)
    tokenizer, streams = prepare_corpus(
        cfg.tokenizer or os.path.join(cfg.output, "tokenizer"), cfg.vocab_size, cfg.output)
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
    write_summary(cfg.output, result, export, parameters=n_params)
    return export


def load_config(path: str, **overrides) -> LMTrainConfig:
    """An LMTrainConfig from YAML; `overrides` that are not None win."""
    return load_yaml_config(LMTrainConfig, path, **overrides)
