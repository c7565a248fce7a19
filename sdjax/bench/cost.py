"""Cost of one draft-verify cycle's pieces on the bundled testbed, jitted and timed apart.

    python -m sdjax.bench.cost [--context 384] [--repeats 200]

Prints the median time of: a target forward of 1, 2, 5 and 9 new tokens over a cache
holding `--context` tokens (the verify step of an autoregressive step, chains and
trees), the same for the draft model, and all Medusa / Hydra heads at one position.
Each figure includes one jitted call's dispatch (~0.1 ms on CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import sdjax
from sdjax import testbed
from sdjax.heads import heads_module, load_heads
from sdjax.models.cache import KVCache


def _median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def forward_ms(model: sdjax.LoadedModel, new_tokens: int, context: int, repeats: int) -> float:
    cache = KVCache.init(model.config, 1, context + 16).replace(
        length=jnp.array([context], jnp.int32))
    fn = jax.jit(lambda p, tokens, c: sdjax.Transformer(model.config).apply(
        p, tokens, context + jnp.arange(new_tokens)[None], c).logits)
    return _median_ms(fn, (model.params, jnp.zeros((1, new_tokens), jnp.int32), cache), repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    models = {"target": sdjax.load_hf(testbed.path("target"), load_tokenizer=False),
              "draft": sdjax.load_hf(testbed.path("draft"), load_tokenizer=False)}
    report = {}
    for name, model in models.items():
        report[name] = {n: forward_ms(model, n, args.context, args.repeats) for n in (1, 2, 5, 9)}
        print(f"{name} forward, ms by new tokens: " +
              ", ".join(f"{n}: {t:.3f}" for n, t in report[name].items()))
    for kind in testbed.HEADS:
        cfg, params = load_heads(testbed.path(kind))
        module = heads_module(cfg)
        report[kind] = _median_ms(jax.jit(module.apply), (params, *module.example_inputs()),
                                  args.repeats)
        print(f"{kind}: all {cfg.num_heads} heads at one position {report[kind]:.3f} ms")
    return report


if __name__ == "__main__":
    main()
