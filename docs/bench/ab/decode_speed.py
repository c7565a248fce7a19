"""Best-of-7 decode ms per token of each bench method (testbed, one completion prompt)."""
import sdjax
from sdjax import testbed
from sdjax.bench.suite import bundled_heads, load_pair, methods
from sdjax.bench.tasks import build_tasks

target, draft, heads = load_pair(testbed.path("target"), testbed.path("draft"), bundled_heads())
prompt = build_tasks(target.tokenizer, 1, categories=["completion"])["completion"][0].prompt
base = sdjax.SpecConfig(model=target.config, max_new_tokens=128, eos_token_id=())
for name, (drafter, params) in methods(draft, 4, 4, heads).items():
    cfg = base.replace(drafter=drafter)
    sdjax.generate(target.params, prompt, cfg, draft_params=params)
    runs = [sdjax.generate(target.params, prompt, cfg, draft_params=params) for _ in range(7)]
    best = min(out.stats["decode_seconds"] for out in runs)
    print(f"{name:<16} {1e3 * best / 128:6.3f} ms/token", flush=True)
