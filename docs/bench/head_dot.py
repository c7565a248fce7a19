"""The chunked LM head (`sdjax.models.transformer.head_dot`) against the plain product on
Gemma 3 270M in float32 (BENCHMARKS.md, "A cheaper float32 verify on CPU").

    python docs/bench/head_dot.py

Both forms alternate in one process: a forward of n new tokens over a 200-token cache
(median of 10 calls, 3 rounds), then `generate` of 128 tokens after one completion
prompt autoregressively and with the shipped EAGLE-3 and Hydra drafts (each form
compiled afresh; median of 4 timed calls). The plain form is `head_dot` limited to one
row, which it leaves to `dot_general`.
"""

import numpy as np

import sdjax
from sdjax.bench.common import machine
from sdjax.bench.cost import forward_ms
from sdjax.bench.tasks import build_tasks
from sdjax.decode.compiled import clear_compiled
from sdjax.heads import bench_drafters, load_heads
from sdjax.models import transformer
from sdjax.pretrained import pretrained_path, shipped_drafts

FORMS = {"plain": 1, "chunked": transformer.HEAD_CHUNK_MAX_ROWS}  # rows it chunks up to
SIZES = (1, 2, 4, 8, 16)


def main():
    """Prints the forward costs and the decoding speeds of both forms."""
    model = sdjax.load_hf(pretrained_path("gemma3-270m"))
    print(machine())
    costs = {}
    for _ in range(3):
        for form, rows in FORMS.items():
            transformer.HEAD_CHUNK_MAX_ROWS = rows
            for n in SIZES:
                costs.setdefault((form, n), []).append(forward_ms(model, n, 200, 10))
    for form in FORMS:
        print(f"forward ms, {form}: " + " ".join(
            f"n={n}: {np.median(costs[(form, n)]):.1f}" for n in SIZES))

    prompt = build_tasks(model.tokenizer, 1, categories=["completion"])["completion"][0].prompt
    base = sdjax.SpecConfig(model=model.config, max_new_tokens=128, eos_token_id=())
    methods = {"autoregressive": (None, None)}
    for kind in ("eagle3", "hydra"):
        cfg, params = load_heads(shipped_drafts("gemma3-270m")[kind])
        methods[kind] = (bench_drafters(cfg)[kind], params)
    seconds, outputs = {}, {}
    for _ in range(2):
        for form, rows in FORMS.items():
            transformer.HEAD_CHUNK_MAX_ROWS = rows
            clear_compiled()  # the compiled loops are keyed on the config, not on the form
            for method, (drafter, draft_params) in methods.items():
                cfg = base.replace(drafter=drafter)
                outs = [sdjax.generate(model.params, prompt, cfg, draft_params=draft_params)
                        for _ in range(3)]
                seconds.setdefault((form, method), []).extend(
                    o.stats["decode_seconds"] for o in outs[1:])
                outputs[(form, method)] = outs[0]
    greedy = outputs[("plain", "autoregressive")].tokens
    for method in methods:
        plain, chunked = (np.median(seconds[(form, method)]) for form in FORMS)
        same = all(np.array_equal(outputs[(form, method)].tokens, greedy) for form in FORMS)
        print(f"{method}: plain {128 / plain:.1f} tokens/s, chunked {128 / chunked:.1f} "
              f"({plain / chunked:.2f}x), tau {outputs[('chunked', method)].stats['tau']:.2f}, "
              f"= greedy {same}")


if __name__ == "__main__":
    main()
