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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sdjax.drafters import acceptance, cross_vocab
from sdjax.heads import registry as heads_registry
from sdjax.models.cache import KVCache

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
MODEL_AXES: Tuple[Tuple[str, Tuple[Optional[str], ...]], ...] = (
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
    (r"(norm/(scale|bias)|o_proj/bias|down_proj/bias)$", (None,)),
)
# REST's datastore (`sdjax.drafters.Datastore`): every device holds all of it.
DATASTORE_AXES = ((r"^\.(tokens|suffix_array)$", (None,)),)
# The transformer's rules, then every kind of draft head's (`sdjax.heads.registry`), then
# SpecDec++'s acceptance head's and a cross-tokenizer draft's token map.
PARAM_AXES = MODEL_AXES + DATASTORE_AXES + tuple(dict.fromkeys(
    rule for kind in heads_registry.KINDS.values() for rule in kind.param_axes)) + (
    acceptance.PARAM_AXES + cross_vocab.PARAM_AXES)


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


def put(tree, shardings):
    """`jax.device_put`, also onto meshes that span processes: there every process
    holds the whole value and contributes the shards of its own devices."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def place(x, target):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
            return x  # already placed (params a pipeline shards once and reuses)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, target)  # global already: jax moves it
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: their data
            return jax.random.wrap_key_data(place(jax.random.key_data(x), target),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: place(x, shardings), tree)
    return jax.tree.map(place, tree, shardings)


def shard_params(params, mesh: Mesh):
    """Places params on the mesh as `param_specs` says."""
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh))
    return put(params, shardings)


def shard_batch(x, mesh: Mesh):
    """Splits the leading (batch) dimension over the `data` axis."""
    return put(x, NamedSharding(mesh, P(DATA, *([None] * (np.ndim(x) - 1)))))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full value on every device of the mesh."""
    return NamedSharding(mesh, P())


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


def constrain_batch_leading(tree, mesh: Mesh):
    """Inside jit: a drafter's state (caches, feature buffers, per-row arrays, all
    batch first) split over `data`, caches' KV heads over `model` as well."""
    def constrain(x):
        if isinstance(x, KVCache):
            return constrain_cache(x, mesh)
        axis = DATA if np.ndim(x) and x.shape[0] % mesh.shape[DATA] == 0 else None
        spec = P(axis, *([None] * (np.ndim(x) - 1))) if np.ndim(x) else P()
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(constrain, tree, is_leaf=lambda x: isinstance(x, KVCache))
