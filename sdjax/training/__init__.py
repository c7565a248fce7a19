"""Training: language models (`train_lm`) and draft heads (`train_heads`), sharing one
optax + orbax loop (`sdjax.training.loop`)."""

from sdjax.training.lm import LMTrainConfig, lm_loss, run_lm, train_lm
from sdjax.training.loop import LoopConfig, TrainResult, batch_at, eval_windows, fit

__all__ = ["LMTrainConfig", "LoopConfig", "TrainResult", "batch_at", "eval_windows", "fit",
           "lm_loss", "run_lm", "train_lm"]
