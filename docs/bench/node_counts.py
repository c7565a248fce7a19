"""Verify sizes on Gemma 3 270M in float32 on XLA:CPU: the forward's cost steps at
multiples of 8 new tokens (BENCHMARKS.md, "Node counts").

    python docs/bench/node_counts.py [--prompts 1] [--repeats 10] [--drafts depths]

First the target's forward of n new tokens over a 300-token cache, n = 1, 4, 7, 8, 9, 12,
16, 17 (medians of calls in turns). Then, after `--prompts` prompts of each category of
the benchmark split, pairs of drafts that differ in their tree's node count, greedy,
128 new tokens: prompt lookup drafting 4 tokens (the bench's default until 2026-12-07, 5
nodes) and 7 (8 nodes, the default since); the shipped Medusa and Hydra heads on their
old 9-node default tree and on that tree less its last node (8, the default since); the
shipped EAGLE-3 on EAGLE-2's tree of 8 nodes (the bench's) and of 16 (depth 6, top-k 4).
Each row: tau, the costs timed in turns (`sdjax.bench.cost`), the predicted speedup
tau x ar / (verify + draft) and the measured one, every decode taking turns with
autoregressive decoding, and whether it equals greedy decoding.

`--drafts depths` compares trees of the same 8 nodes instead: the shipped EAGLE-3 on
EAGLE-2's trees of depth 4 (the bench's), 5 and 6 (top-k 2), and with OPT-Tree-style
adaptive depth (up to 6, one level deeper only while some path is at least 0.02 likely).
"""

import argparse

import numpy as np

import sdjax
from sdjax import trees
from sdjax.bench.common import machine
from sdjax.bench.cost import forward_timer, interleaved_medians, propose_timer
from sdjax.bench.tasks import CATEGORIES, build_tasks
from sdjax.decode.compiled import clear_compiled
from sdjax.drafters import PromptLookup
from sdjax.heads import Eagle2, Hydra, Medusa, load_heads
from sdjax.pretrained import pretrained_path, shipped_drafts

NINE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1]]  # the heads' old tree


def drafts(which: str):
    """name -> (drafter, draft params): `which` is "counts" (pairs that differ in node
    count) or "depths" (EAGLE-3 trees of 8 nodes and different depths)."""
    shipped = {kind: load_heads(path) for kind, path in shipped_drafts("gemma3-270m").items()}
    cfg, params = shipped["eagle3"]
    if which == "depths":
        found = {f"eagle3 depth {d}": (Eagle2(cfg, depth=d, top_k=2, num_nodes=8), params)
                 for d in (4, 5, 6)}
        found["eagle3 adaptive to 6"] = (
            Eagle2(cfg, depth=6, top_k=2, num_nodes=8, min_confidence=0.02), params)
        return found
    found = {f"prompt_lookup {n}": (PromptLookup(num_draft=n), None) for n in (4, 7)}
    for kind, drafter_class in (("medusa", Medusa), ("hydra", Hydra)):
        heads_cfg, heads_params = shipped[kind]
        for choices in (NINE, NINE[:-1]):
            found[f"{kind} {len(choices) + 1}"] = (
                drafter_class(heads_cfg, trees.from_choices(choices)), heads_params)
    found["eagle3 8"] = (Eagle2(cfg, depth=4, top_k=2, num_nodes=8), params)
    found["eagle3 16"] = (Eagle2(cfg, depth=6, top_k=4, num_nodes=16), params)
    return found


def main():
    """Prints the forward costs, then a row per draft and prompt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="rounds of the cost timers")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--drafts", choices=("counts", "depths"), default="counts")
    args = parser.parse_args()
    model = sdjax.load_hf(pretrained_path("gemma3-270m"))
    print(machine())
    sizes = (1, 4, 7, 8, 9, 12, 16, 17)
    ms = interleaved_medians({n: forward_timer(model, n, 300) for n in sizes}, args.repeats)
    print("forward of n new tokens, ms: " + ", ".join(f"{n}: {ms[n]:.1f}" for n in sizes))
    base = sdjax.SpecConfig(model=model.config, max_new_tokens=128, eos_token_id=())
    methods = drafts(args.drafts)
    tasks = build_tasks(model.tokenizer, args.prompts, categories=args.categories)
    print("| category | method | nodes | tau | draft ms | verify ms | predicted | measured "
          "| = greedy |\n|---|---|---:|---:|---:|---:|---:|---:|---|")
    for category, category_tasks in tasks.items():
        for task in category_tasks:
            prompt = np.asarray(task.prompt)
            timers = {"forward 1": forward_timer(model, 1, len(prompt))}
            for name, (drafter, params) in methods.items():
                nodes = drafter.shape.num_nodes
                timers.setdefault(f"forward {nodes}", forward_timer(model, nodes, len(prompt)))
                timers[name] = propose_timer(model, drafter, params, prompt)
            costs = interleaved_medians(timers, args.repeats)
            outputs = {}
            for _ in range(2):  # decode_seconds leaves the compile out
                for name, (drafter, params) in {"autoregressive": (None, None),
                                                **methods}.items():
                    out = sdjax.generate(model.params, prompt, base.replace(drafter=drafter),
                                         draft_params=params)
                    outputs.setdefault(name, []).append(out)
            seconds = {name: np.median([o.stats["decode_seconds"] for o in outs])
                       for name, outs in outputs.items()}
            greedy = outputs["autoregressive"][0].tokens
            for name, (drafter, _) in methods.items():
                out, nodes = outputs[name][0], drafter.shape.num_nodes
                draft, verify = costs[name], costs[f"forward {nodes}"]
                predicted = out.stats["tau"] * costs["forward 1"] / (draft + verify)
                print(f"| {category} | {name if args.drafts == 'depths' else name.split()[0]} "
                      f"| {nodes} | {out.stats['tau']:.2f} | "
                      f"{draft:.1f} | {verify:.1f} | {predicted:.2f}x | "
                      f"{seconds['autoregressive'] / seconds[name]:.2f}x | "
                      f"{np.array_equal(out.tokens, greedy)} |", flush=True)
            clear_compiled()


if __name__ == "__main__":
    main()
