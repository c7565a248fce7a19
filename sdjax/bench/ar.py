"""Autoregressive greedy decoding: sdjax vs `transformers` (PyTorch, CPU), same weights.

    python -m sdjax.bench.ar [--new-tokens 128] [--repeats 5]

Builds a random-weight Llama checkpoint with `transformers` (about 28M parameters by
default), loads the same file in sdjax, checks that both produce the same greedy
tokens, then times them alternately and prints tokens/s, their ratio and sdjax's
compile time. Needs the `torch` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
from tqdm import tqdm

import sdjax
from sdjax.bench.common import add_model_args, build_checkpoint


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    add_model_args(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        num_params = build_checkpoint(args, path)
        model = sdjax.load_hf(path, dtype=args.dtype)
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, args.dtype)).eval()

    prompt = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.prompt_len))
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=args.new_tokens, eos_token_id=())

    def run_sdjax():
        out = sdjax.generate(model.params, prompt.tolist(), cfg)
        return out.tokens, out.stats["decode_seconds"]

    def run_torch():
        start = time.perf_counter()
        with torch.no_grad():
            out = torch_model.generate(
                torch.as_tensor(prompt), do_sample=False, max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens, pad_token_id=0)
        return out[:, args.prompt_len:].numpy(), time.perf_counter() - start

    first = sdjax.generate(model.params, prompt.tolist(), cfg)
    compile_seconds = first.stats["compile_seconds"]
    reference, _ = run_torch()  # warm-up, and the reference tokens
    same_tokens = bool((first.tokens == reference).all())

    times = {"sdjax": [], "transformers": []}
    for _ in tqdm(range(args.repeats), desc="timing (alternating)", unit="round"):
        times["sdjax"].append(run_sdjax()[1])
        times["transformers"].append(run_torch()[1])

    new_tokens = args.batch * args.new_tokens
    rate = {k: new_tokens / statistics.median(v) for k, v in times.items()}
    result = {
        "params_millions": num_params / 1e6, "dtype": args.dtype, "batch": args.batch,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "sdjax_tokens_per_s": rate["sdjax"],
        "transformers_tokens_per_s": rate["transformers"],
        "ratio": rate["sdjax"] / rate["transformers"],
        "sdjax_compile_s": compile_seconds, "same_greedy_tokens": same_tokens,
    }
    print(f"\nLlama {num_params / 1e6:.1f}M params, {args.dtype}, batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}")
    print("| implementation | tokens/s | ms/step | vs transformers |")
    print("|---|---:|---:|---:|")
    for name in ("sdjax", "transformers"):
        print(f"| {name} | {rate[name]:.1f} | {1000 / rate[name] * args.batch:.2f} | "
              f"{rate[name] / rate['transformers']:.2f}x |")
    print(f"sdjax compile: {compile_seconds:.2f} s; identical greedy tokens: {same_tokens}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
