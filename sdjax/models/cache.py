"""Preallocated key/value cache with per-row lengths.

Slots `[0, length[b])` of row b hold committed tokens; slot s holds position s.
A forward pass writes its T new tokens, *pending*, at slots `length .. length+T`
without moving `length`; `commit` then keeps the accepted ones. A speculative
tree's accepted path is gathered into `length .. length+n` first, so rejected
entries never become visible to later steps. Nothing is ever reallocated.
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from sdjax.config import ModelConfig


@flax.struct.dataclass
class KVCache:
    """Per-layer keys and values at static size, and each row's committed length."""
    keys: Tuple[jax.Array, ...]  # per layer [B, S, kv_heads, head_dim]
    values: Tuple[jax.Array, ...]
    length: jax.Array  # [B] int32: committed tokens per row

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        zeros = lambda: tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers))
        return cls(keys=zeros(), values=zeros(), length=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[1]

    def pending_slots(self, num_new: int, offset: int = 0) -> jax.Array:
        """[B, num_new] slot indices where a forward of num_new tokens writes."""
        return self.length[:, None] + offset + jnp.arange(num_new, dtype=jnp.int32)

    def write_pending(self, layer: int, k: jax.Array, v: jax.Array,
                      offset: int = 0) -> "KVCache":
        """Writes layer's new k/v [B, T, kv_heads, head_dim] into the pending region,
        `offset` slots after the committed prefix."""
        rows = jnp.arange(k.shape[0])[:, None]
        slots = self.pending_slots(k.shape[1], offset)
        keys = list(self.keys)
        values = list(self.values)
        keys[layer] = keys[layer].at[rows, slots].set(k.astype(keys[layer].dtype))
        values[layer] = values[layer].at[rows, slots].set(v.astype(values[layer].dtype))
        return self.replace(keys=tuple(keys), values=tuple(values))

    def commit(self, num_accepted: jax.Array, path: Optional[jax.Array] = None) -> "KVCache":
        """Accepts num_accepted[B] pending tokens per row.

        path[B, P] (P >= max accepted) lists, in order, which pending entries were
        accepted; they are moved to the front of the pending area. Without a path the
        accepted tokens are the first num_accepted pending ones (a chain) and nothing
        moves.
        """
        num_accepted = jnp.asarray(num_accepted, jnp.int32)
        if path is None:
            return self.replace(length=self.length + num_accepted)
        rows = jnp.arange(path.shape[0])[:, None]
        src = self.length[:, None] + path
        dst = self.pending_slots(path.shape[1])
        move = lambda x: x.at[rows, dst].set(x[rows, src])
        return self.replace(
            keys=tuple(move(k) for k in self.keys),
            values=tuple(move(v) for v in self.values),
            length=self.length + num_accepted,
        )
