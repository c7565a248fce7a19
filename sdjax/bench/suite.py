"""`sdjax bench`: Spec-Bench's method on the testbed or a real model.

For each task category (sdjax.bench.tasks) and method, at batch 1 and the same
prompts: tau (mean tokens per draft-verify cycle), acceptance by depth, tokens/s,
walltime speedup over autoregressive decoding measured in the same run, compile
time (reported apart), XLA's peak-memory account, and whether the tokens equal
plain greedy decoding. Methods take turns on each prompt, in rounds (a shared, noisy
machine); each prompt's time is the median over rounds. `--vs-transformers` runs the
matching `transformers` configurations (greedy, assisted generation with the same
draft, prompt lookup, `assistant_early_exit`) on the same checkpoints and prompts, and
its greedy in the other dtype too: every row is also compared with the faster greedy.
Each row's predicted speedup is tau x (one-token forward) / (forward of the tree's
nodes + one `propose`), with the costs timed on the category's first prompt in
turns (`step_costs`), before `transformers` loads.

Writes results.json, results.md, speedup.png and acceptance.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

import sdjax
from sdjax import testbed
from sdjax.bench.common import DRAFT_TREE, machine
from sdjax.bench.cost import forward_timer, interleaved_medians, propose_timer, verify_timer
from sdjax.bench.tasks import CATEGORIES, build_tasks
from sdjax.calibrate import skip_layers
from sdjax.cli import add_stop_head_flags, positive_int, stop_threshold
from sdjax.decode import acceptance_summary
from sdjax.drafters import (
    CrossVocabDraft,
    DraftModel,
    PromptLookup,
    load_datastore,
    with_token_map,
)
from sdjax.drafters.acceptance import (
    DEFAULT_STOP_THRESHOLD,
    load_acceptance_head,
    with_acceptance_head,
)
from sdjax.drafters.cross_vocab import load_cross_draft
from sdjax.drafters.draft_model import load_draft_model
from sdjax.drafters.lookahead import Lookahead
from sdjax.drafters.rest import rest_for
from sdjax.drafters.self_draft import SelfDraft
from sdjax.heads import KINDS, bench_drafters, load_heads
from sdjax.pretrained import (
    NAMES,
    TESTBED,
    cache_dir,
    pretrained_path,
    shipped_drafts,
    stdlib_datastore,
    stdlib_text,
    stdlib_vocab,
)

# The methods each kind of trained draft runs (`sdjax.heads.registry` sizes them).
HEAD_METHODS = {name: tuple(kind.bench) for name, kind in KINDS.items()}
# REST alone, and with the row's own text as a second source (they need a datastore).
REST_METHODS = ("rest", "rest_context")
# Self-speculation with the target's own layers: early exit, and calibrated layer skipping.
SELF_METHODS = ("early_exit", "layer_skip")
# Lookahead decoding's Jacobi window alone, and with the row's own n-grams in its pool.
LOOKAHEAD_METHODS = ("lookahead", "lookahead_context")
METHODS = ("autoregressive", "prompt_lookup", *REST_METHODS, *LOOKAHEAD_METHODS, *SELF_METHODS,
           "draft_chain", "draft_adaptive", "draft_stop_head", "draft_tree", "cross_vocab",
           *(m for kind in KINDS for m in HEAD_METHODS[kind]))

# sdjax method -> the `transformers` configuration that does the same thing.
TORCH_COUNTERPART = {"autoregressive": "greedy", "draft_chain": "assisted",
                     "prompt_lookup": "prompt_lookup", "early_exit": "early_exit",
                     "cross_vocab": "universal_assisted"}
# `transformers`' greedy in the dtype the report's target does not use.
OTHER_GREEDY = "greedy, other dtype"


def self_drafts(target: sdjax.LoadedModel, wanted: Sequence[str], gamma: int,
                exit_layer: Optional[int] = None, num_skip: int = 1,
                draft_vocab: int = 16384) -> Dict[str, tuple]:
    """The `wanted` SELF_METHODS and LOOKAHEAD_METHODS, the drafts made of the target
    itself: early exit after `exit_layer` layers (default: all but the last, or the
    only one), the `num_skip` layers `sdjax.calibrate.skip_layers` picks on 2 x 256
    tokens of the stdlib's train split, and Lookahead's window; their heads over its
    `draft_vocab` most frequent tokens when the vocabulary is larger."""
    cfg = target.config
    if not set(SELF_METHODS + LOOKAHEAD_METHODS) & set(wanted):
        return {}
    vocab = None
    if draft_vocab < cfg.vocab_size:
        vocab = {"vocab_ids": stdlib_vocab(target.tokenizer, draft_vocab, cfg.vocab_size)}
    found = {}
    if "early_exit" in wanted:
        exit_layer = max(cfg.num_layers - 1, 1) if exit_layer is None else exit_layer
        found["early_exit"] = (SelfDraft.early_exit(exit_layer, num_draft=gamma), vocab)
    if "layer_skip" in wanted:
        kept = skip_layers(target.params, cfg, stdlib_text(target.tokenizer, 2, 256), num_skip,
                           None if vocab is None else vocab["vocab_ids"])
        found["layer_skip"] = (SelfDraft(kept, num_draft=gamma), vocab)
    if "lookahead" in wanted:
        found["lookahead"] = (Lookahead(), vocab)
    if "lookahead_context" in wanted:
        found["lookahead_context"] = (Lookahead(from_context=True), vocab)
    return found


def methods(draft: Optional[sdjax.LoadedModel], gamma: int, lookup: int,
            heads: Sequence[tuple] = (), datastore=None,
            self_draft: Optional[Dict[str, tuple]] = None, stop_head: Optional[tuple] = None,
            stop_threshold: float = DEFAULT_STOP_THRESHOLD,
            cross_draft: Optional[tuple] = None) -> Dict[str, tuple]:
    """name -> (drafter, draft_params). `heads`: (HeadsConfig, params) pairs; without a
    draft model, no draft-model methods; without a datastore, no REST; `self_draft`:
    what `self_drafts` built; `stop_head`: the draft's SpecDec++ acceptance head (config,
    params), whose chains run up to 2 x gamma; `cross_draft`: (a draft model with a
    tokenizer of its own, its `TokenMap`), drafting chains of gamma."""
    found = {
        "autoregressive": (None, None),
        "prompt_lookup": (PromptLookup(num_draft=lookup), None),
        **(self_draft or {}),
    }
    if datastore is not None:
        found.update(rest=(rest_for(datastore), datastore),
                     rest_context=(rest_for(datastore, context=1), datastore))
    if draft is not None:
        found.update({
            "draft_chain": (DraftModel(draft.config, num_draft=gamma), draft.params),
            "draft_adaptive": (DraftModel(draft.config, num_draft=gamma + 2, adaptive=True),
                               draft.params),
            "draft_tree": (DraftModel(draft.config, tree=DRAFT_TREE), draft.params),
        })
    if draft is not None and stop_head is not None:
        found["draft_stop_head"] = (
            DraftModel(draft.config, num_draft=2 * gamma, stop_head=stop_head[0],
                       stop_threshold=stop_threshold),
            with_acceptance_head(draft.params, stop_head[1]))
    if cross_draft is not None:
        found["cross_vocab"] = (CrossVocabDraft(cross_draft[0].config, num_draft=gamma),
                                with_token_map(cross_draft[0].params, cross_draft[1]))
    for cfg, params in heads:
        found.update({name: (drafter, params) for name, drafter in bench_drafters(cfg).items()})
    return found


def load_pair(target: str, draft: Optional[str], heads: Sequence[str] = (),
              dtype: str = "float32"):
    """(target, draft or None, [(heads config, params), ...]) from their folders; the
    draft's params are its `DraftModel` draft_params (with the ids of its reduced
    vocabulary when its folder has them, `load_draft_model`)."""
    if draft:
        model, draft_params = load_draft_model(draft, dtype=dtype, load_tokenizer=False)
        draft = model._replace(params=draft_params)
    return (sdjax.load_hf(target, dtype=dtype), draft or None,
            [load_heads(folder) for folder in heads])


def _torch_kwargs(name: str, assistant, gamma: int, lookup: int, exit_layer: int,
                  cross: Optional[tuple] = None) -> dict:
    """generate()'s arguments for `name`; `cross`: (the other tokenizer's assistant, the
    target's tokenizer, the assistant's)."""
    if name in ("assisted", "universal_assisted"):
        model = assistant if name == "assisted" else cross[0]
        model.generation_config.num_assistant_tokens = gamma
        model.generation_config.num_assistant_tokens_schedule = "constant"
        if name == "assisted":
            return {"assistant_model": model}
        return {"assistant_model": model, "tokenizer": cross[1], "assistant_tokenizer": cross[2]}
    if name == "early_exit":  # the model itself cut after exit_layer layers, its whole head
        return {"assistant_early_exit": exit_layer, "num_assistant_tokens": gamma,
                "num_assistant_tokens_schedule": "constant"}
    if name == "prompt_lookup":
        return {"prompt_lookup_num_tokens": lookup, "max_matching_ngram_size": 3}
    return {}


def run(args) -> dict:
    """Decodes every task with every chosen method; returns the report."""
    target, draft, heads = load_pair(args.target, args.draft, args.heads, args.dtype)
    if target.tokenizer is None:
        raise ValueError(f"{args.target} has no tokenizer; the benchmark tasks need one")
    tasks = build_tasks(target.tokenizer, args.prompts, args.seed, args.categories)
    base = sdjax.SpecConfig(model=target.config, max_new_tokens=args.new_tokens,
                            eos_token_id=(), temperature=args.temperature, seed=args.seed)
    datastore = None
    if set(REST_METHODS) & set(args.methods):
        datastore = (load_datastore(args.datastore, target.tokenizer) if args.datastore
                     else stdlib_datastore(target.tokenizer))
    self_draft = self_drafts(target, args.methods, args.gamma, args.exit_layer, args.skip,
                             args.draft_vocab)
    if args.stop_head and draft is None:
        raise ValueError("--stop-head needs a draft model (--draft DIR): the one it was "
                         "trained for")
    threshold = stop_threshold(args)
    stop_head = load_acceptance_head(args.stop_head) if args.stop_head else None
    cross = None
    if "cross_vocab" in args.methods:
        cross = load_cross_draft(args.cross_draft, target, args.dtype)
    available = methods(draft, args.gamma, args.lookup, heads, datastore, self_draft,
                        stop_head, threshold, cross)
    missing = sorted(set(args.methods) - set(available))
    if missing:
        raise ValueError(f"methods {missing} need draft heads of that kind (--heads DIR), "
                         "a draft model (--draft DIR) or its stop head (--stop-head DIR)")
    chosen = {name: available[name] for name in METHODS if name in args.methods}
    prompts = [(c, i, t.prompt) for c, ts in tasks.items() for i, t in enumerate(ts)]

    def decode(name, prompt):
        drafter, draft_params = chosen[name]
        return sdjax.generate(target.params, prompt, base.replace(drafter=drafter),
                              draft_params=draft_params)

    first, seconds = {}, {}
    for name in tqdm(chosen, desc="compile + first pass", unit="method"):
        first[name] = [decode(name, p) for _, _, p in prompts]
        seconds[name] = [[] for _ in prompts]
    # Every method decodes a prompt before the next prompt: a slow spell of this shared
    # machine then falls on all methods of that prompt alike, not on one method.
    for _ in tqdm(range(args.repeats), desc="timed rounds", unit="round"):
        for k, (_, _, prompt) in enumerate(prompts):
            for name in chosen:
                seconds[name][k].append(decode(name, prompt).stats["decode_seconds"])

    costs = {category: step_costs(target, chosen, ts[0].prompt, args.cost_repeats, base)
             for category, ts in tqdm(tasks.items(), desc="cost split", unit="category")}
    torch_seconds, torch_same = {}, {}
    if args.vs_transformers:  # after every sdjax timing: torch's threads stay behind
        early_exit = chosen.get("early_exit", (None,))[0]
        torch_seconds, torch_same = _run_transformers(
            args, prompts, first, early_exit and early_exit.layers[-1] + 1)
    rows, greedy_rates, greedy_same = [], {}, {}
    for category in tasks:
        index = [k for k, (c, _, _) in enumerate(prompts) if c == category]
        rate = lambda secs: args.new_tokens * len(index) / sum(
            statistics.median(secs[k]) for k in index)
        ar_rate = rate(seconds["autoregressive"])  # main() always runs the baseline
        torch_greedy = {}  # dtype -> transformers' greedy tokens/s
        if torch_seconds:
            torch_greedy = {args.dtype: rate(torch_seconds["greedy"]),
                            _other_dtype(args.dtype): rate(torch_seconds[OTHER_GREEDY])}
            greedy_rates[category] = torch_greedy
            greedy_same[category] = all(torch_same[OTHER_GREEDY][k] for k in index)
        fastest_greedy = max(torch_greedy.values(), default=None)
        for name in chosen:
            outs = [first[name][k] for k in index]
            tau, by_depth = acceptance_summary(
                np.concatenate([o.stats["accepted_hist"] for o in outs]))
            row = {
                "category": category, "method": name, "tokens_per_second": rate(seconds[name]),
                "speedup": rate(seconds[name]) / ar_rate, "tau": tau,
                "acceptance_by_depth": [float(a) for a in by_depth],
                "compile_seconds": sum(o.stats["compile_seconds"] for o in outs),
                "memory_mb": max(o.stats["memory_bytes"] for o in outs) / 2**20,
                "same_as_greedy": None if args.temperature else all(
                    np.array_equal(first[name][k].tokens, first["autoregressive"][k].tokens)
                    for k in index),
                **costs[category][name],
            }
            row["predicted_speedup"] = tau * row["ar_ms"] / (row["verify_ms"] + row["draft_ms"])
            if fastest_greedy:  # the yardstick: either dtype, whichever is faster
                row["vs_transformers_fastest_greedy"] = row["tokens_per_second"] / fastest_greedy
            counterpart = TORCH_COUNTERPART.get(name)
            if torch_seconds and counterpart:
                theirs = rate(torch_seconds[counterpart])
                row.update(transformers_tokens_per_second=theirs,
                           transformers_speedup=theirs / torch_greedy[args.dtype],
                           vs_transformers=row["tokens_per_second"] / theirs,
                           transformers_same_as_greedy=all(torch_same[counterpart][k]
                                                           for k in index))
            rows.append(row)
    return {
        "target": _name(args.target), "draft": args.draft and _name(args.draft),
        "dtype": args.dtype, "machine": machine(),
        "new_tokens": args.new_tokens, "prompts_per_category": args.prompts,
        "repeats": args.repeats, "temperature": args.temperature,
        "gamma": args.gamma, "lookup": args.lookup, "rows": rows,
        # transformers' greedy by category and dtype (tokens/s), and whether the other
        # dtype's tokens equal sdjax's greedy ones (bfloat16 rounds differently)
        "transformers_greedy": greedy_rates, "transformers_other_dtype_same": greedy_same,
        "prompt_sources": {c: [t.source for t in ts] for c, ts in tasks.items()},
    }


def step_costs(target, chosen: dict, prompt, repeats: int, cfg: sdjax.SpecConfig) -> dict:
    """method -> {ar_ms, verify_ms, draft_ms}: one target forward of 1 token and of the
    method's tree size over the prompt's cache (with any non-candidates beside the
    tree: the loop's own `verify_forward`), and one `propose` alone under `cfg`'s
    sampling settings; the median ms of calls that take turns (`interleaved_medians`),
    each size measured once.
    tau x ar / (verify + draft) is the speedup the method would reach if the loop's
    bookkeeping (verification rule, commits, drafter state) cost nothing."""
    prompt, timers, parts = np.asarray(prompt), {}, {}
    for name, (drafter, draft_params) in chosen.items():
        nodes = 1 if drafter is None else drafter.shape.num_nodes
        for n in (1, nodes):
            if f"forward {n}" not in timers:
                timers[f"forward {n}"] = forward_timer(target, n, len(prompt))
        verify = f"forward {nodes}"
        if drafter is not None and drafter.num_extra:  # the tree and its non-candidates
            verify = f"verify {name}"
            timers[verify] = verify_timer(target, drafter, draft_params, prompt, cfg)
        if drafter is not None:
            timers[f"propose {name}"] = propose_timer(target, drafter, draft_params, prompt, cfg)
        parts[name] = verify
    ms = interleaved_medians(timers, repeats)
    return {name: {"ar_ms": ms["forward 1"], "verify_ms": ms[verify],
                   "draft_ms": ms.get(f"propose {name}", 0.0)}
            for name, verify in parts.items()}


def _name(folder: str) -> str:
    """A checkpoint folder as the report names it: bundled ones by name, not by path."""
    for root, label in ((testbed.ROOT, "sdjax.testbed"), (cache_dir(), "sdjax cache")):
        inside = os.path.relpath(os.path.abspath(folder), root)
        if not inside.startswith(".."):
            return f"{label}:{inside}"
    return folder


def _run_transformers(args, prompts, first, exit_layer: Optional[int]):
    """Median seconds per prompt for each `transformers` configuration, and whether its
    tokens equal sdjax's greedy ones. Its greedy runs in both dtypes (`OTHER_GREEDY`):
    which is faster depends on the CPU (bfloat16 is emulated without AVX-512 BF16)."""
    import torch
    import transformers

    from sdjax.bench.common import torch_generate

    load = lambda path, dtype=args.dtype: transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype)).eval()
    model = load(args.target)
    assistant = load(args.draft) if args.draft else None
    names, cross = _counterparts(args.methods), None
    if "universal_assisted" in names:
        tokenizer = lambda path: transformers.AutoTokenizer.from_pretrained(path)
        cross = (load(args.cross_draft), tokenizer(args.target), tokenizer(args.cross_draft))
    # name -> (model, its generate() arguments, made afresh for each call: `_torch_kwargs`
    # sets the assistant's generation config)
    configurations = {name: (model, lambda name=name: _torch_kwargs(
        name, assistant, args.gamma, args.lookup, exit_layer, cross)) for name in names}
    configurations[OTHER_GREEDY] = (load(args.target, _other_dtype(args.dtype)), dict)
    seconds = {n: [[] for _ in prompts] for n in configurations}
    same = {n: [] for n in configurations}
    for name, (generator, kwargs) in configurations.items():  # warm-up, and the tokens
        for k, (_, _, prompt) in enumerate(prompts):
            tokens = torch_generate(generator, [prompt], args.new_tokens, **kwargs())[0][0]
            reference = first["autoregressive"][k].tokens[0]
            same[name].append(bool(np.array_equal(tokens, reference[:len(tokens)])))
    for _ in tqdm(range(args.repeats), desc="transformers rounds", unit="round"):
        for k, (_, _, prompt) in enumerate(prompts):  # in turns, as sdjax's methods
            for name, (generator, kwargs) in configurations.items():
                seconds[name][k].append(torch_generate(generator, [prompt], args.new_tokens,
                                                       **kwargs())[1])
    return seconds, same


def _counterparts(methods: Sequence[str]) -> List[str]:
    """The `transformers` configurations matching `methods` (greedy always: the baseline)."""
    return sorted({"greedy"} | {TORCH_COUNTERPART[m] for m in methods if m in TORCH_COUNTERPART})


def _other_dtype(dtype: str) -> str:
    return "bfloat16" if dtype == "float32" else "float32"


def markdown(report: dict) -> str:
    """The results table, one row per category and method, under the machine's line (and
    `transformers`' greedy speed in both dtypes, when it ran)."""
    torch = bool(report.get("transformers_greedy"))
    head = ("| category | method | tok/s | speedup vs AR | predicted | measured / predicted "
            "| tau | acceptance by depth | draft ms | verify ms | compile s | memory MB "
            "| = greedy |")
    rule = "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
    if torch:
        head += (" transformers tok/s | its speedup | sdjax / transformers "
                 "| sdjax / transformers' fastest greedy |")
        rule += "---:|---:|---:|---:|"
    lines = [f"{report['machine']}, {report['dtype']} target", ""]
    if torch:
        lines += ["transformers' greedy, tokens/s: " + "; ".join(
            f"{category} " + " / ".join(f"{dtype} {rate:.1f}" for dtype, rate in rates.items())
            for category, rates in report["transformers_greedy"].items()), ""]
    lines += [head, rule]
    for r in report["rows"]:
        depth = " ".join(f"{a:.2f}" for a in r["acceptance_by_depth"]) or "—"
        line = (f"| {r['category']} | {r['method']} | {r['tokens_per_second']:.1f} | "
                f"{r['speedup']:.2f}x | {r['predicted_speedup']:.2f}x | "
                f"{r['speedup'] / r['predicted_speedup']:.2f} | {r['tau']:.2f} | {depth} | "
                f"{r['draft_ms']:.1f} | {r['verify_ms']:.1f} | {r['compile_seconds']:.1f} "
                f"| {r['memory_mb']:.0f} | {r['same_as_greedy']} |")
        if torch:
            if "transformers_tokens_per_second" in r:
                line += (f" {r['transformers_tokens_per_second']:.1f} | "
                         f"{r['transformers_speedup']:.2f}x | {r['vs_transformers']:.2f}x |")
            else:
                line += " — | — | — |"
            line += f" {r['vs_transformers_fastest_greedy']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def plot(report: dict, out: str) -> List[str]:
    """speedup.png (per method and category) and acceptance.png (by depth, per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    names = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "autoregressive"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [next(r["speedup"] for r in rows if r["method"] == name and r["category"] == c)
                  for c in categories]
        ax.bar(np.arange(len(categories)) + i * width, values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(categories)) + width * (len(names) - 1) / 2, categories)
    ax.set_ylabel("walltime speedup over autoregressive")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [os.path.join(out, "speedup.png"), os.path.join(out, "acceptance.png")]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        method_rows = [r for r in rows if r["method"] == name]
        depth = max(len(r["acceptance_by_depth"]) for r in method_rows)
        mean = np.mean([np.pad(r["acceptance_by_depth"], (0, depth - len(r["acceptance_by_depth"])))
                        for r in method_rows], axis=0)
        ax.plot(np.arange(1, depth + 1), mean, marker="o", label=name)
    ax.set_xlabel("draft depth d")
    ax.set_ylabel("fraction of cycles accepting >= d drafts")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `sdjax bench` flags."""
    parser.add_argument("--model", choices=NAMES, help="a named target model: gemma3-270m "
                        "(the [gemma3] extra) or testbed (the default)")
    parser.add_argument("--target", help="target checkpoint folder (default: --model)")
    parser.add_argument("--draft", help="draft checkpoint folder (default: the testbed's, "
                                        "with the testbed target; none otherwise)")
    parser.add_argument("--cross-draft", metavar="DIR",
                        help="method cross_vocab's draft model, whose tokenizer is not the "
                             "target's (default: the testbed's draft, for a named model but "
                             "the testbed)")
    parser.add_argument("--heads", nargs="+", default=None, metavar="DIR",
                        help="draft-head folders (default: the drafts shipped for the "
                             "named model)")
    parser.add_argument("--prompts", type=positive_int, default=8, help="prompts per category")
    parser.add_argument("--new-tokens", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (median)")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES),
                        choices=CATEGORIES)
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"subset of: {' '.join(METHODS)} (default: all available)")
    parser.add_argument("--gamma", type=positive_int, default=4, help="draft-model chain length")
    parser.add_argument("--lookup", type=positive_int, default=7,
                        help="prompt-lookup tokens (7: 8 verified rows, BENCHMARKS.md)")
    add_stop_head_flags(parser, "method draft_stop_head (chains up to 2 x gamma): ")
    parser.add_argument("--datastore", metavar="DIR",
                        help="REST's datastore (`sdjax datastore build`; default: the "
                             "stdlib's train split, built into the cache on first use)")
    parser.add_argument("--exit-layer", type=positive_int,
                        help="early_exit's layers (default: all but the last)")
    parser.add_argument("--skip", type=positive_int, default=1,
                        help="layers layer_skip skips (picked on the stdlib's train split)")
    parser.add_argument("--draft-vocab", type=positive_int, default=16384,
                        help="early_exit / layer_skip's exit head: the most frequent "
                             "stdlib tokens (when the vocabulary is larger)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost-repeats", type=positive_int, default=10,
                        help="rounds of timed calls, each cost (target forwards, one "
                             "draft) once a round, for the predicted speedup")
    parser.add_argument("--vs-transformers", action="store_true",
                        help="also time the matching transformers configurations, and "
                             "its greedy decoding in both float32 and bfloat16")
    parser.add_argument("--out", default="bench_out", help="folder for the report files")


def main(args) -> dict:
    """Runs the benchmark from parsed arguments and writes the report files."""
    unknown = sorted(set(args.methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.target is None:
        args.target = pretrained_path(args.model or TESTBED)
    on_testbed = os.path.samefile(args.target, testbed.path("target"))
    if args.heads is None:
        named = TESTBED if on_testbed else args.model
        args.heads = list(shipped_drafts(named).values()) if named else []
    if args.draft is None and on_testbed:
        args.draft = testbed.path("draft")
    if args.cross_draft is None and args.model and not on_testbed:
        args.cross_draft = testbed.path("draft")
    if args.methods is None:
        kinds = {load_heads(folder)[0].kind for folder in args.heads}
        from_heads = {m for kind in kinds for m in HEAD_METHODS[kind]}
        head_methods = {m for names in HEAD_METHODS.values() for m in names}
        args.methods = [m for m in METHODS if m in from_heads or (
            m not in head_methods and (args.draft or not m.startswith("draft_"))
            and (m != "draft_stop_head" or args.stop_head)
            and (m != "cross_vocab" or args.cross_draft)
            and (m not in REST_METHODS or args.datastore or args.model)
            and (m not in SELF_METHODS or args.model))]
    if "autoregressive" not in args.methods:
        args.methods = ["autoregressive", *args.methods]  # the baseline of every ratio
    report = run(args)
    os.makedirs(args.out, exist_ok=True)
    table = markdown(report)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    paths = plot(report, args.out)
    print(table)
    print(f"\nwrote {args.out}/results.json, results.md, " + ", ".join(
        os.path.basename(p) for p in paths))
    return report
