"""The compiled decode loops this process keeps, keyed on what changes the program.

The key is the config without its host-only fields (`SpecConfig.program`: a new seed
or length limit reuses the executable), the mesh, and every argument's shape, dtype
and placement: bfloat16 params after float32 ones, or a new-style key after a raw
one, compile a second program instead of failing. Executables are compiled ahead of
time, which also lets `generate` report compile time apart from decode time.
"""

from __future__ import annotations

import collections
import functools
import time
from typing import Any, Optional, Tuple

import jax
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import SpecConfig
from sdjax.decode.loop import decode_loop

# Least recently used first. The bound matters: every XLA:CPU executable holds
# hundreds of memory mappings, and a process that keeps thousands alive hits the
# kernel's map limit and crashes.
MAX_COMPILED = 32
_COMPILED: collections.OrderedDict[Tuple, Any] = collections.OrderedDict()
_compilations = 0


def _placement(x) -> Optional[jax.sharding.Sharding]:
    """Where a committed array lives (None: wherever the executable wants it)."""
    return x.sharding if isinstance(x, jax.Array) and x.committed else None


def signature(args) -> Tuple:
    """What the compiled program depends on in its arguments."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((jax.typeof(x), _placement(x)) for x in leaves)


def compiled_decode(cfg: SpecConfig, mesh: Optional[Mesh], args):
    """The AOT-compiled decode for these arguments: (executable, compile seconds)."""
    global _compilations
    program = cfg.program()
    cache_key = (program, mesh, signature(args))
    if cache_key in _COMPILED:
        _COMPILED.move_to_end(cache_key)
        return _COMPILED[cache_key], 0.0
    start = time.perf_counter()
    out_shardings = None if mesh is None else sharding.replicated(mesh)
    fn = jax.jit(functools.partial(decode_loop, cfg=program, mesh=mesh),
                 out_shardings=out_shardings)
    executable = fn.lower(*args).compile()
    _compilations += 1
    _COMPILED[cache_key] = executable
    if len(_COMPILED) > MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return executable, time.perf_counter() - start


def compile_count() -> int:
    """How many decode executables have been compiled in this process."""
    return _compilations


def clear_compiled() -> None:
    """Drops every kept executable (JAX's own caches are the caller's business)."""
    _COMPILED.clear()
