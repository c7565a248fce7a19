"""Compile seconds of each bench method's decode loop (fresh process), testbed."""
import sdjax
from sdjax import testbed
from sdjax.bench.suite import bundled_heads, load_pair, methods
from sdjax.bench.tasks import build_tasks

target, draft, heads = load_pair(testbed.path("target"), testbed.path("draft"), bundled_heads())
prompt = build_tasks(target.tokenizer, 1, categories=["completion"])["completion"][0].prompt
base = sdjax.SpecConfig(model=target.config, max_new_tokens=64, eos_token_id=())
for name, (drafter, params) in methods(draft, 4, 4, heads).items():
    out = sdjax.generate(target.params, prompt, base.replace(drafter=drafter), draft_params=params)
    print(f"{name:<16} compile {out.stats['compile_seconds']:6.2f} s", flush=True)
