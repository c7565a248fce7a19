"""Autoregressive greedy decoding: sdjax vs `transformers` (PyTorch, CPU), same weights.

    python -m sdjax.bench.ar --model gemma3-270m [--new-tokens 128] [--repeats 3]
    python -m sdjax.bench.ar [--layers 6 ...] [--batch 8]  # a random-weight Llama (~28.8M)

Loads the same checkpoint in sdjax and `transformers` in each `--dtype`, checks that
greedy tokens agree with `transformers` float32, then times greedy decoding of
`--new-tokens` after `--batch` real-text prompts (held-out stdlib code, `--prompt-len`
tokens each; random ids for the random model) alternately, and prints tokens/s and
ms/step against the weight-streaming limit of this machine: the bytes of weights one
step reads divided by a measured memory bandwidth. Then the cost of one sdjax forward
of 1, 4, 8 and 16 new tokens over the prompt's cache: what speculative verification
pays. Needs the `torch` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import sdjax
from sdjax.bench.common import add_model_args, build_checkpoint, machine, torch_generate
from sdjax.bench.cost import forward_ms
from sdjax.pretrained import NAMES, pretrained_path

VERIFY_SIZES = (1, 4, 8, 16)


def memory_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second that a jitted reduction reads from a buffer larger than caches."""
    data = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(data).block_until_ready()
    best = min(_seconds(lambda: total(data).block_until_ready()) for _ in range(repeats))
    return data.nbytes / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes_per_token(params, config: sdjax.ModelConfig, dtype: str) -> int:
    """Bytes of weights one decoding step reads: every parameter but the embedding's
    unused rows (a tied embedding is read whole, as the LM head)."""
    count = sum(x.size for x in jax.tree.leaves(params))
    if not config.tie_embeddings:
        count -= (config.vocab_size - 1) * config.hidden_size
    return count * jnp.dtype(dtype).itemsize


def _prompts(args, tokenizer) -> list:
    """`--batch` prompts of `--prompt-len` tokens each."""
    if tokenizer is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, args.vocab, (args.batch, args.prompt_len)).tolist()
    from sdjax.bench.tasks import build_tasks

    tasks = build_tasks(tokenizer, args.batch, categories=["completion"],
                        prompt_tokens={"completion": args.prompt_len})["completion"]
    if any(len(t.prompt) != args.prompt_len for t in tasks):
        raise ValueError(f"fewer than {args.prompt_len} tokens in some prompt: lower "
                         "--prompt-len")
    return [t.prompt for t in tasks]


def main(argv=None) -> dict:
    """Runs the autoregressive benchmark; returns its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=NAMES,
                        help="a named model (default: a random-weight Llama of the sizes below)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", dest="dtypes", nargs="+",
                        default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    add_model_args(parser)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as scratch:
        path = pretrained_path(args.model) if args.model else scratch
        if not args.model:
            build_checkpoint(args, path)
        models = {d: sdjax.load_hf(path, dtype=d) for d in args.dtypes}
        torch_models = {d: transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, d)).eval() for d in args.dtypes}
    first = models[args.dtypes[0]]
    prompts = _prompts(args, first.tokenizer)
    cfgs = {d: sdjax.SpecConfig(model=m.config, max_new_tokens=args.new_tokens,
                                eos_token_id=()) for d, m in models.items()}
    runners = {}
    for d in args.dtypes:
        runners[f"sdjax {d}"] = lambda d=d: _sdjax_run(models[d], prompts, cfgs[d])
        runners[f"transformers {d}"] = lambda d=d: torch_generate(
            torch_models[d], prompts, args.new_tokens)
    tokens, compile_seconds = {}, {}
    for name, run in tqdm(runners.items(), desc="warm-up (compile)", unit="config"):
        start = time.perf_counter()
        tokens[name] = run()[0]
        compile_seconds[name] = time.perf_counter() - start
    times = {name: [] for name in runners}
    for _ in tqdm(range(args.repeats), desc="timing (alternating)", unit="round"):
        for name, run in runners.items():
            times[name].append(run()[1])
    bandwidth = memory_bandwidth()
    num_params = sum(x.size for x in jax.tree.leaves(first.params))
    limit_ms = {d: 1e3 * weight_bytes_per_token(first.params, first.config, d) / bandwidth
                for d in args.dtypes}
    forward = {d: {n: forward_ms(models[d], n, args.prompt_len, 5) for n in VERIFY_SIZES}
               for d in args.dtypes}

    rate = {name: args.batch * args.new_tokens / statistics.median(t)
            for name, t in times.items()}
    best_torch = max(r for n, r in rate.items() if n.startswith("transformers"))
    reference = tokens.get("transformers float32")
    result = {
        "model": args.model or f"random Llama {num_params / 1e6:.1f}M",
        "params_millions": num_params / 1e6, "prompt_tokens": args.prompt_len,
        "batch": args.batch, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "bandwidth_gb_per_s": bandwidth / 1e9, "weight_streaming_limit_ms": limit_ms,
        "tokens_per_second": rate, "compile_or_warmup_seconds": compile_seconds,
        "same_tokens_as_transformers_float32": {
            n: bool(np.array_equal(t, reference)) for n, t in tokens.items()
            if reference is not None},
        "forward_ms_by_new_tokens": forward,
        "machine": machine(),
    }
    _print(result, best_torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _sdjax_run(model, prompts, cfg):
    out = sdjax.generate(model.params, prompts, cfg)
    return out.tokens, out.stats["decode_seconds"]


def _print(result: dict, best_torch: float) -> None:
    limit = result["weight_streaming_limit_ms"]
    print(f"\n{result['model']} ({result['params_millions']:.1f}M parameters), batch "
          f"{result['batch']}, "
          f"prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens, "
          f"median of {result['repeats']}; memory bandwidth "
          f"{result['bandwidth_gb_per_s']:.1f} GB/s\n{result['machine']}")
    print("| implementation | tokens/s | ms/step | vs best transformers | weight-streaming "
          "limit ms | x limit | = transformers f32 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    same = result["same_tokens_as_transformers_float32"]
    for name, rate in result["tokens_per_second"].items():
        ms = 1e3 / rate * result["batch"]  # per decoding step
        floor = limit[name.split()[-1]]
        print(f"| {name} | {rate:.1f} | {ms:.1f} | {rate / best_torch:.2f}x | {floor:.1f} | "
              f"{ms / floor:.2f} | {same.get(name, '—')} |")
    print("\nsdjax forward of n new tokens over the prompt's cache, ms (verification cost):")
    print("| dtype | " + " | ".join(f"n={n}" for n in VERIFY_SIZES) + " | n=8 / n=1 |")
    print("|---|" + "---:|" * (len(VERIFY_SIZES) + 1))
    for dtype, costs in result["forward_ms_by_new_tokens"].items():
        print(f"| {dtype} | " + " | ".join(f"{costs[n]:.1f}" for n in VERIFY_SIZES) +
              f" | {costs[8] / costs[1]:.2f} |")


if __name__ == "__main__":
    main()
