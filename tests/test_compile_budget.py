"""The compiled-loop cache never takes the process past the kernel's map limit.

Each XLA:CPU executable holds hundreds of memory mappings; a process past
`vm.max_map_count` aborts inside LLVM. The subprocess below first fills its map
space with ballast (shared anonymous mappings, which the kernel never merges) up to
a few executables short of the limit, as a long-lived notebook holding other
things would be, then decodes with eight more configurations of a 6-layer model. With
the map budget it exits 0; with the budget switched off (the old count-only bound of
32 executables) the same run must abort, or the test proves nothing.
"""

import subprocess
import sys

import pytest

from sdjax.decode import compiled

SCRIPT = r"""
import mmap, sys
import jax
import sdjax
from sdjax.decode import compiled

if sys.argv[1] == "off":
    compiled.MAP_RESERVE = -100.0  # a budget no process reaches: only MAX_COMPILED bounds
cfg = sdjax.ModelConfig(vocab_size=64, hidden_size=16, num_layers=6, num_heads=1,
                        num_kv_heads=1, head_dim=16, intermediate_size=16,
                        max_position_embeddings=128)
params = sdjax.init_params(cfg, jax.random.PRNGKey(0))
spec = lambda n: sdjax.SpecConfig(model=cfg, max_new_tokens=n, eos_token_id=())
before = compiled.mapped_regions()
sdjax.generate(params, [1, 2, 3], spec(1))
cost = compiled.mapped_regions() - before
ballast = []
while compiled.mapped_regions() < compiled.map_limit() - 2 * cost - 1000:
    ballast += [mmap.mmap(-1, 4096) for _ in range(500)]
for n in range(2, 10):
    sdjax.generate(params, [1, 2, 3], spec(n))
print("decoded", compiled.mapped_regions(), compiled.map_limit(), cost, flush=True)
"""


def _run(budget: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, budget], capture_output=True,
                          text=True, timeout=900)


pytestmark = pytest.mark.skipif(compiled.map_limit() is None, reason="needs Linux /proc")


def test_many_configurations_near_the_map_limit_decode_and_exit_0():
    result = _run("on")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "decoded" in result.stdout


@pytest.mark.slow  # 25 s: the negative control, run with -m slow (it aborts in LLVM)
def test_without_the_budget_the_same_run_aborts():
    result = _run("off")
    assert result.returncode != 0 and "decoded" not in result.stdout, result.stdout
