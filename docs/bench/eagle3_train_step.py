"""Seconds per EAGLE-3 training step on Gemma 3 270M (BENCHMARKS.md, issue #11).

    python docs/bench/eagle3_train_step.py --draft-vocab 16384 --batch 4 --seq-len 256

One jitted step of `sdjax.training.fit`'s update (target forward for features and the
teacher, the unrolled draft, backward, AdamW) on random windows; the median of three
steps after the compiling one.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.heads import eagle_config, init_eagle
from sdjax.heads.losses import eagle_loss
from sdjax.pretrained import load_pretrained
from sdjax.training.loop import LoopConfig, _train_step, make_optimizer, trainable


def main():
    """Times the step and prints seconds and tokens per second."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft-vocab", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    target = load_pretrained("gemma3-270m", dtype=args.dtype)
    cfg = eagle_config(target.config, "eagle3", draft_vocab=args.draft_vocab)
    params = init_eagle(cfg, target.params, jax.random.PRNGKey(0), np.arange(args.draft_vocab))
    loss = lambda p, frozen, windows, key=None: eagle_loss(
        p, frozen, windows, key, target_cfg=target.config, eagle_cfg=cfg, ttt_steps=3,
        head_decay=0.8, token_weight=0.1, feature_noise=0.1)
    tx = make_optimizer(LoopConfig(output="unused"))
    state = {"params": params, "opt_state": tx.init(trainable(params)),
             "step": jnp.zeros((), jnp.int32)}
    step = _train_step(loss, tx, 0)
    windows = jnp.asarray(np.random.default_rng(0).integers(
        0, 1000, (args.batch, args.seq_len + 1)), jnp.int32)
    state, value = step(state, target.params, windows)  # compile
    times = []
    for _ in range(3):
        start = time.perf_counter()
        state, value = step(state, target.params, windows)
        value.block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"draft vocab {args.draft_vocab}, {args.dtype}, {args.batch} x {args.seq_len}: "
          f"{seconds:.2f} s/step, {args.batch * args.seq_len / seconds:.0f} tokens/s")


if __name__ == "__main__":
    main()
