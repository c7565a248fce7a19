"""The compiled decode loops this process keeps, keyed on what changes the program.

The key is the config without its host-only fields (`SpecConfig.program`: a new seed
or length limit reuses the executable), the mesh, and every argument's shape, dtype
and placement: bfloat16 params after float32 ones, or a new-style key after a raw
one, compile a second program instead of failing. Executables are compiled ahead of
time, which also lets `generate` report compile time apart from decode time.

What the cache keeps is bounded by what it costs: every XLA:CPU executable holds
hundreds of memory mappings (~365 for the testbed, ~850 for 24 layers, ~2,900 for
100), and a process past the kernel's `vm.max_map_count` aborts inside LLVM. Before
each compile the least recently used executables are dropped until the process's
mappings (read from /proc/self/maps) plus the largest cost seen so far stay below
the limit minus a reserve; at most MAX_COMPILED are kept in any case.
"""

from __future__ import annotations

import collections
import functools
import gc
import time
from typing import Any, Optional, Tuple

import jax
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import SpecConfig
from sdjax.decode.loop import decode_loop

MAX_COMPILED = 32
MAP_RESERVE = 0.1  # fraction of vm.max_map_count left to everything else in the process
_COMPILED: collections.OrderedDict[Tuple, Any] = collections.OrderedDict()  # LRU first
_compilations = 0
_largest_cost = 0  # the most mappings one compile added so far


def mapped_regions() -> Optional[int]:
    """How many memory mappings this process holds (None off Linux)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def map_limit() -> Optional[int]:
    """The kernel's bound on a process's mappings (None when it cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _evict(keep: int) -> None:
    """Drops least recently used executables until `keep` are left."""
    while len(_COMPILED) > keep:
        _COMPILED.popitem(last=False)
    gc.collect()  # the executable's mappings go with its last reference


def _make_room() -> None:
    """Evicts until one more executable of the largest cost seen fits the map budget."""
    limit, regions = map_limit(), mapped_regions()
    if limit is None or regions is None:
        return
    budget = (1 - MAP_RESERVE) * limit
    while _COMPILED and regions + _largest_cost > budget:
        _evict(len(_COMPILED) - 1)
        regions = mapped_regions()


def _placement(x) -> Optional[jax.sharding.Sharding]:
    """Where a committed array lives (None: wherever the executable wants it)."""
    return x.sharding if isinstance(x, jax.Array) and x.committed else None


def signature(args) -> Tuple:
    """What the compiled program depends on in its arguments."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((jax.typeof(x), _placement(x)) for x in leaves)


def compiled_decode(cfg: SpecConfig, mesh: Optional[Mesh], args):
    """The AOT-compiled decode for these arguments: (executable, compile seconds)."""
    global _compilations, _largest_cost
    program = cfg.program()
    cache_key = (program, mesh, signature(args))
    if cache_key in _COMPILED:
        _COMPILED.move_to_end(cache_key)
        return _COMPILED[cache_key], 0.0
    _make_room()
    before = mapped_regions()
    start = time.perf_counter()
    out_shardings = None if mesh is None else sharding.replicated(mesh)
    fn = jax.jit(functools.partial(decode_loop, cfg=program, mesh=mesh),
                 out_shardings=out_shardings)
    executable = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    _compilations += 1
    if before is not None:
        _largest_cost = max(_largest_cost, mapped_regions() - before)
    _COMPILED[cache_key] = executable
    if len(_COMPILED) > MAX_COMPILED:
        _evict(MAX_COMPILED)
    return executable, seconds


def compile_count() -> int:
    """How many decode executables have been compiled in this process."""
    return _compilations


def clear_compiled() -> None:
    """Drops every kept executable (JAX's own caches are the caller's business)."""
    _COMPILED.clear()
