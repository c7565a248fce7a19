"""Device meshes and the rules that give every parameter, cache and batch a sharding.

Parameters are matched by path to *logical* axes (vocab, embed, heads, kv_heads,
mlp), and logical axes map to mesh axes (`data`, `model`) through LOGICAL_RULES,
the MaxText/t5x way. A dimension that the mesh axis does not divide is left
replicated rather than failing, so one rule set serves every model size. Models
run through plain `jax.jit`: XLA's SPMD partitioner does the rest.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"

LOGICAL_RULES: Dict[str, Optional[str]] = {
    "batch": DATA,
    "vocab": MODEL,
    "heads": MODEL,
    "kv_heads": MODEL,
    "mlp": MODEL,
    "embed": None,
}

# (regex on the "a/b/c" parameter path, logical axis per dimension); first match wins.
PARAM_AXES: Tuple[Tuple[str, Tuple[Optional[str], ...]], ...] = (
    (r"(^|/)embed/embedding$", ("vocab", "embed")),
    (r"pos_embed/embedding$", (None, "embed")),
    (r"(q_proj|qkv_proj)/kernel$", ("embed", "heads")),
    (r"(q_proj|qkv_proj)/bias$", ("heads",)),
    (r"(k_proj|v_proj)/kernel$", ("embed", "kv_heads")),
    (r"(k_proj|v_proj)/bias$", ("kv_heads",)),
    (r"o_proj/kernel$", ("heads", "embed")),
    (r"(gate_proj|up_proj)/kernel$", ("embed", "mlp")),
    (r"(gate_proj|up_proj)/bias$", ("mlp",)),
    (r"down_proj/kernel$", ("mlp", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"head_\d+_lm/kernel$", ("embed", "vocab")),  # draft heads (sdjax.heads)
    (r"head_\d+_(res|in)/kernel$", (None, None)),
    (r"head_\d+_(res|in)/bias$", (None,)),
    (r"(combine|fuse)/kernel$", (None, None)),  # EAGLE drafts
    (r"combine/bias$", (None,)),
    (r"(norm/(scale|bias)|o_proj/bias|down_proj/bias)$", (None,)),
)


def make_mesh(data: int = 1, model: Optional[int] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, model) mesh; `model` defaults to all devices left over from `data`."""
    devices = list(devices or jax.devices())
    model = model or len(devices) // data
    if data * model != len(devices):
        raise ValueError(
            f"mesh {data}x{model} needs {data * model} devices, {len(devices)} available"
        )
    return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def _spec(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> P:
    axes = []
    for name, size in zip(logical, shape):
        axis = LOGICAL_RULES.get(name) if name else None
        axes.append(axis if axis and size % mesh.shape[axis] == 0 else None)
    return P(*axes)


def param_specs(params, mesh: Mesh):
    """A PartitionSpec for every parameter (same tree structure as params)."""

    def spec(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        for pattern, logical in PARAM_AXES:
            if re.search(pattern, name):
                return _spec(logical, leaf.shape, mesh)
        raise ValueError(f"no sharding rule matches parameter {name!r}; add one to PARAM_AXES")

    return jax.tree_util.tree_map_with_path(spec, params)


def shard_params(params, mesh: Mesh):
    """Places params on the mesh as `param_specs` says."""
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh))
    return jax.device_put(params, shardings)


def shard_batch(x, mesh: Mesh):
    """Splits the leading (batch) dimension over the `data` axis."""
    return jax.device_put(x, NamedSharding(mesh, P(DATA, *([None] * (np.ndim(x) - 1)))))


def constrain_cache(cache, mesh: Mesh):
    """Inside jit: batch over `data`, KV heads over `model` (when they divide)."""
    kv_heads = cache.keys[0].shape[2]
    head_axis = MODEL if kv_heads % mesh.shape[MODEL] == 0 else None
    kv = NamedSharding(mesh, P(DATA, None, head_axis, None))
    constrain = lambda x, s: jax.lax.with_sharding_constraint(x, s)
    return cache.replace(
        keys=tuple(constrain(k, kv) for k in cache.keys),
        values=tuple(constrain(v, kv) for v in cache.values),
        length=constrain(cache.length, NamedSharding(mesh, P(DATA))),
    )
