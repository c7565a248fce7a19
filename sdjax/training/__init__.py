"""Training: language models (`train_lm`) for the testbed, with optax and orbax."""

from sdjax.training.lm import (LMTrainConfig, TrainResult, batch_at, eval_windows, lm_loss,
                               run_lm, train_lm)

__all__ = ["LMTrainConfig", "TrainResult", "batch_at", "eval_windows", "lm_loss", "run_lm",
           "train_lm"]
