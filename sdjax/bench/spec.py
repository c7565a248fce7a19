"""Speculative methods vs autoregressive, in sdjax and in `transformers`, one run.

    python -m sdjax.bench.spec [--new-tokens 128] [--repeats 3]

This measures the engine, not a draft's quality (that is `sdjax bench`, on the
trained testbed): a random-weight Llama (as `sdjax.bench.ar`) on a copy-heavy
prompt, and the target itself as its own draft model (the sanity pair: every draft
is accepted, so tau = gamma + 1 and the figure is the engine's overhead). Prompt lookup
profits from the loops random-weight models fall into. Prints, per method:
tokens/s, tau, walltime speedup over the same library's autoregressive decode,
engine efficiency (speedup / tau) and the ratio to the `transformers` counterpart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import numpy as np
from tqdm import tqdm

import sdjax
from sdjax.bench.common import add_model_args, build_checkpoint, torch_generate
from sdjax.drafters import DraftModel, PromptLookup


def main(argv=None) -> dict:
    """Runs the Spec-Bench-style comparison; returns its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gamma", type=int, default=4, help="draft-model chain length")
    parser.add_argument("--lookup-draft", type=int, default=8,
                        help="prompt-lookup tokens (4 is always measured too)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    add_model_args(parser)
    args = parser.parse_args(argv)

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        num_params = build_checkpoint(args, path)
        model = sdjax.load_hf(path)
        load = lambda: transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32).eval()
        torch_model, torch_assistant = load(), load()

    rng = np.random.default_rng(0)
    block = rng.integers(0, args.vocab, 48).tolist()
    prompt = block + rng.integers(0, args.vocab, 8).tolist() + block[:8]
    base = sdjax.SpecConfig(model=model.config, max_new_tokens=args.new_tokens,
                            eos_token_id=())
    torch_assistant.generation_config.num_assistant_tokens = args.gamma
    torch_assistant.generation_config.num_assistant_tokens_schedule = "constant"
    lookup = lambda n: {"prompt_lookup_num_tokens": n, "max_matching_ngram_size": 3}
    # name -> (sdjax config, draft params, transformers generate kwargs or None)
    methods = {
        "autoregressive": (base, None, {}),
        f"prompt lookup ({args.lookup_draft} tokens)":
            (base.replace(drafter=PromptLookup(args.lookup_draft)), None,
             lookup(args.lookup_draft)),
        "prompt lookup (4 tokens)": (base.replace(drafter=PromptLookup(4)), None, lookup(4)),
        "prompt lookup (3 branches x 4 tokens)":
            (base.replace(drafter=PromptLookup(4, num_branches=3)), None, None),
        f"draft model = target (gamma {args.gamma})":
            (base.replace(drafter=DraftModel(model.config, args.gamma)), model.params,
             {"assistant_model": torch_assistant}),
    }
    sdjax_methods = {name: m[:2] for name, m in methods.items()}
    torch_kwargs = {name: m[2] for name, m in methods.items() if m[2] is not None}

    def run_sdjax(name):
        cfg, draft_params = sdjax_methods[name]
        out = sdjax.generate(model.params, prompt, cfg, draft_params=draft_params)
        return out.tokens[0], out.stats["decode_seconds"], out.stats

    def run_torch(name):
        return torch_generate(torch_model, prompt, args.new_tokens, **torch_kwargs[name])

    first = {name: run_sdjax(name) for name in sdjax_methods}  # compiles
    reference = first["autoregressive"][0]
    torch_tokens = {name: run_torch(name)[0] for name in torch_kwargs}  # warm-up
    times = {("sdjax", name): [] for name in sdjax_methods}
    times.update({("transformers", name): [] for name in torch_kwargs})
    for _ in tqdm(range(args.repeats), desc="timing (alternating)", unit="round"):
        for name in sdjax_methods:
            times["sdjax", name].append(run_sdjax(name)[1])
            if name in torch_kwargs:
                times["transformers", name].append(run_torch(name)[1])

    rate = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    rows = []
    for name in sdjax_methods:
        stats = first[name][2]
        speedup = rate["sdjax", name] / rate["sdjax", "autoregressive"]
        theirs = rate.get(("transformers", name), float("nan"))
        rows.append({
            "method": name, "sdjax_tokens_per_s": rate["sdjax", name], "tau": stats["tau"],
            "speedup_vs_ar": speedup, "efficiency": speedup / stats["tau"],
            "transformers_tokens_per_s": theirs,
            "transformers_speedup_vs_ar": theirs / rate["transformers", "autoregressive"],
            "vs_transformers": rate["sdjax", name] / theirs,
            "compile_s": stats["compile_seconds"],
            "sdjax_equals_greedy": bool((first[name][0] == reference).all()),
            "transformers_equals_greedy": bool((torch_tokens[name] == reference).all())
            if name in torch_tokens else None,
        })
    print(f"\nLlama {num_params / 1e6:.1f}M params (random weights), float32, batch 1, "
          f"prompt {len(prompt)} (copy-heavy), {args.new_tokens} new tokens, "
          f"median of {args.repeats}")
    print("| method | sdjax tok/s | tau | speedup vs AR | efficiency | transformers tok/s "
          "| its speedup vs AR | sdjax vs transformers | same tokens (sdjax/hf) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    show = lambda x, unit="": "—" if x != x else f"{x:.2f}{unit}"  # NaN: no counterpart
    for r in rows:
        print(f"| {r['method']} | {r['sdjax_tokens_per_s']:.1f} | {r['tau']:.2f} | "
              f"{r['speedup_vs_ar']:.2f}x | {r['efficiency']:.2f} | "
              f"{show(r['transformers_tokens_per_s'])} | "
              f"{show(r['transformers_speedup_vs_ar'], 'x')} | {show(r['vs_transformers'], 'x')} "
              f"| {r['sdjax_equals_greedy']}/{r['transformers_equals_greedy']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return {"rows": rows, "params_millions": num_params / 1e6}


if __name__ == "__main__":
    main()
