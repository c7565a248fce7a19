"""Cost of one draft-verify cycle's pieces on the bundled testbed, jitted and timed apart.

    python -m sdjax.bench.cost [--context 384] [--repeats 200]

Prints the median time of: a target forward of 1, 2, 5, 9 and 16 new tokens over a
cache holding `--context` tokens (the verify step of an autoregressive step, chains
and trees), the same for the draft model, all Medusa / Hydra heads at one position,
and, per bundled-draft method, the whole cycle inside `generate` split into draft
(`propose` timed alone), verify (the target forward of the tree's node count) and the
rest (verification rule, cache commits, drafter bookkeeping: cycle - draft - verify).
Each separately timed figure includes one jitted call's dispatch (~0.1 ms on CPU),
so the rest is an underestimate.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

import sdjax
from sdjax import testbed
from sdjax.bench.common import DRAFT_TREE
from sdjax.bench.tasks import build_tasks
from sdjax.decode import prefill
from sdjax.decode.loop import verify_forward
from sdjax.drafters import DraftModel
from sdjax.heads import bench_drafters, head_kind, load_heads, make_drafter
from sdjax.models.cache import KVCache
from sdjax.trees import static_topology

Timer = Callable[[], float]


def timer(fn, args) -> Timer:
    """`fn(*args)` compiled and run once; the result times one more call, in ms."""
    jax.block_until_ready(fn(*args))

    def once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return 1e3 * (time.perf_counter() - start)

    return once


def interleaved_medians(timers: Dict[str, Timer], repeats: int) -> Dict[str, float]:
    """Median ms of each timer over `repeats` rounds that call every timer once in turn:
    a shared machine's slow spells then fall on all of them alike, and their ratios
    (the predicted speedups) hold even when the absolute times drift."""
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, once in timers.items():
            samples[name].append(once())
    return {name: float(np.median(times)) for name, times in samples.items()}


def forward_timer(model: sdjax.LoadedModel, new_tokens: int, context: int) -> Timer:
    """One target forward of `new_tokens` over a cache of `context`."""
    cache = KVCache.init(model.config, 1, context + new_tokens).replace(
        length=jnp.array([context], jnp.int32))
    fn = jax.jit(lambda p, tokens, c: sdjax.Transformer(model.config).apply(
        p, tokens, context + jnp.arange(new_tokens)[None], c).logits)
    return timer(fn, (model.params, jnp.zeros((1, new_tokens), jnp.int32), cache))


def forward_ms(model: sdjax.LoadedModel, new_tokens: int, context: int, repeats: int) -> float:
    """Median ms of one target forward of `new_tokens` over a cache of `context`."""
    return interleaved_medians({"forward": forward_timer(model, new_tokens, context)},
                               repeats)["forward"]


def _first_cycle(target: sdjax.LoadedModel, drafter, draft_params, prompt: np.ndarray,
                 cfg: sdjax.SpecConfig):
    """The arguments of the first `run_propose` after a prefill of `prompt` (the root
    appended): (params, state, sequence, seq_len, key, target cache)."""
    length, max_len = len(prompt), len(prompt) + 64 + drafter.shape.num_nodes + \
        drafter.num_extra + 1
    tokens, lengths = jnp.asarray(prompt, jnp.int32)[None], jnp.asarray([length])
    start = prefill(target.params, target.config, tokens, lengths, max_len,
                    drafter.feature_layers)
    params = drafter.bind(draft_params, target.params)
    state = drafter.init(params, tokens, lengths, max_len, start.features)
    sequence = jnp.zeros((1, max_len), jnp.int32).at[0, :length].set(tokens[0])
    sequence = sequence.at[0, length].set(int(start.last_logits[0].argmax()))
    return params, state, sequence, lengths + 1, jax.random.PRNGKey(0), start.cache


def _bench_cfg(target, cfg: Optional[sdjax.SpecConfig]) -> sdjax.SpecConfig:
    return (cfg or sdjax.SpecConfig(model=target.config, eos_token_id=())).replace(
        max_new_tokens=64)


def propose_timer(target: sdjax.LoadedModel, drafter, draft_params, prompt: np.ndarray,
                  cfg: Optional[sdjax.SpecConfig] = None) -> Timer:
    """One `propose` of the drafter after a prefill of `prompt` (the root appended),
    under `cfg`'s sampling settings (default: greedy)."""
    cfg = _bench_cfg(target, cfg)
    fn = jax.jit(lambda p, s, seq, n, k, c: drafter.run_propose(p, s, seq, n, k, cfg, c)[0].tokens)
    return timer(fn, _first_cycle(target, drafter, draft_params, prompt, cfg))


def verify_timer(target: sdjax.LoadedModel, drafter, draft_params, prompt: np.ndarray,
                 cfg: Optional[sdjax.SpecConfig] = None) -> Timer:
    """The decode loop's verify forward (`verify_forward`) over the drafter's first
    tree after a prefill of `prompt`: with non-candidates beside the tree (Lookahead's
    window), what a forward of the tree's nodes alone leaves out."""
    cfg = _bench_cfg(target, cfg)
    args = _first_cycle(target, drafter, draft_params, prompt, cfg)
    tree, _, cache = jax.jit(lambda *a: drafter.run_propose(*a[:5], cfg, a[5]))(*args)
    topology = static_topology(drafter.shape, 1) if tree.topology is None else tree.topology
    model = sdjax.Transformer(target.config)
    fn = jax.jit(lambda p, t, c: verify_forward(model, p, t, topology, c, drafter.feature_layers,
                                                drafter.num_extra)[1:])
    return timer(fn, (target.params, tree, cache))


def cycle_split(target, drafters: dict, prompt, new_tokens: int, context: int,
                repeats: int) -> dict:
    """method -> {cycle, draft, verify, rest} in ms, tau, ms per token."""
    base = sdjax.SpecConfig(model=target.config, max_new_tokens=new_tokens, eos_token_id=())
    report = {}
    for name, (drafter, draft_params) in drafters.items():
        cfg = base.replace(drafter=drafter)
        sdjax.generate(target.params, prompt, cfg, draft_params=draft_params)
        outs = [sdjax.generate(target.params, prompt, cfg, draft_params=draft_params)
                for _ in range(3)]
        best = min(outs, key=lambda o: o.stats["decode_seconds"])
        cycle = 1e3 * best.stats["decode_seconds"] / best.stats["cycles"].sum()
        nodes = 1 if drafter is None else drafter.shape.num_nodes
        timers = {"verify": forward_timer(target, nodes, context)}
        if drafter is not None:
            timers["draft"] = propose_timer(target, drafter, draft_params, np.asarray(prompt))
        ms = interleaved_medians(timers, repeats)
        draft, verify = ms.get("draft", 0.0), ms["verify"]
        report[name] = dict(cycle=cycle, draft=draft, verify=verify,
                            rest=cycle - draft - verify, tau=best.stats["tau"],
                            ms_per_token=cycle / best.stats["tau"])
        r = report[name]
        print(f"{name:<16} {r['cycle']:7.2f} {r['draft']:7.2f} {r['verify']:7.2f} "
              f"{r['rest']:7.2f} {r['tau']:5.2f} {r['ms_per_token']:7.2f}", flush=True)
    return report


def main(argv=None) -> dict:
    """Prints and returns the cost report (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    target = sdjax.load_hf(testbed.path("target"))
    models = {"target": target,
              "draft": sdjax.load_hf(testbed.path("draft"), load_tokenizer=False)}
    report = {}
    for name, model in models.items():
        report[name] = {n: forward_ms(model, n, args.context, args.repeats)
                        for n in (1, 2, 5, 9, 16)}
        print(f"{name} forward, ms by new tokens: " +
              ", ".join(f"{n}: {t:.3f}" for n, t in report[name].items()))
    drafters = {"autoregressive": (None, None),
                "draft_chain": (DraftModel(models["draft"].config, 4), models["draft"].params),
                "draft_tree": (DraftModel(models["draft"].config, tree=DRAFT_TREE),
                               models["draft"].params)}
    for kind in testbed.HEADS:
        cfg, params = load_heads(testbed.path(kind))
        if head_kind(kind).module is not None:  # heads that all run at once
            module = head_kind(kind).module(cfg)
            bound = make_drafter(cfg).bind(params, target.params)  # with the target's weights
            heads_timer = timer(jax.jit(module.apply), (bound, *module.example_inputs()))
            report[kind] = interleaved_medians({kind: heads_timer}, args.repeats)[kind]
            print(f"{kind}: all {cfg.num_heads} heads at one position {report[kind]:.3f} ms")
        drafters.update({n: (d, params) for n, d in bench_drafters(cfg).items()})
    task = build_tasks(target.tokenizer, 1, categories=["completion"])["completion"][0]
    prompt = task.prompt[-args.context:]
    print(f"\ncycle split on one completion prompt ({len(prompt)} tokens), ms:")
    print(f"{'method':<16} {'cycle':>7} {'draft':>7} {'verify':>7} {'rest':>7} {'tau':>5} "
          f"{'ms/token':>8}")
    report["cycles"] = cycle_split(target, drafters, prompt, args.new_tokens, len(prompt),
                                   args.repeats)
    return report


if __name__ == "__main__":
    main()
