"""Verification rules, each a pure function of (target logits, draft tree, key).

`verify_greedy` (temperature 0) accepts the deepest node whose whole path equals the
target's argmax. `verify_rejection` is lossless speculative sampling over a tree:
at each node its children are tried in rank order; child x, drawn from q, is
accepted with probability min(1, p(x) / q(x)); after a rejection the target
distribution becomes the residual norm(max(0, p - q)). When no child is accepted
the next token is drawn from the residual; after an accepted leaf it is a bonus
token from the target.

`draft_probs[i]` is the distribution node i's token was actually drawn from, given
its parent *and its earlier siblings*, which is what makes one rule cover every
multi-draft scheme: i.i.d. siblings (SpecInfer, with replacement) all store the
same q; siblings drawn without replacement store q with the earlier siblings
removed and renormalised (recursive rejection sampling); a deterministic drafter
stores one-hot rows (accept x with probability p(x), else remove it from p). A
chain is Leviathan et al. / Chen et al. speculative sampling.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from sdjax.config import SpecConfig
from sdjax.sampling import warp_logits
from sdjax.trees import TreeShape


@flax.struct.dataclass
class VerifyResult:
    path: jax.Array  # [B, D+1] root-to-last-accepted node indices (padded with the last)
    num_accepted: jax.Array  # [B] accepted drafted tokens, 0..D
    next_token: jax.Array  # [B] correction or bonus token from the target


def _result(shape: TreeShape, node: jax.Array, next_token: jax.Array) -> VerifyResult:
    return VerifyResult(
        path=jnp.asarray(shape.paths)[node],
        num_accepted=jnp.asarray(shape.depth)[node],
        next_token=next_token.astype(jnp.int32),
    )


def verify_greedy(logits: jax.Array, tokens: jax.Array, shape: TreeShape) -> VerifyResult:
    """Longest path of drafted tokens that all equal the target's argmax."""
    target = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B, N]: each node's successor
    parents = jnp.asarray(shape.parents).at[0].set(0)
    matches = (tokens == target[:, parents]).at[:, 0].set(True)
    path_ok = jnp.all(~shape.ancestor_mask[None] | matches[:, None, :], axis=-1)
    node = jnp.argmax(jnp.where(path_ok, shape.depth[None], -1), axis=-1)
    return _result(shape, node, jnp.take_along_axis(target, node[:, None], 1)[:, 0])


def _normalise(x: jax.Array, fallback: jax.Array) -> jax.Array:
    total = x.sum()
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), fallback)


def verify_rejection(
    target_probs: jax.Array,
    draft_probs: jax.Array,
    tokens: jax.Array,
    shape: TreeShape,
    key: jax.Array,
) -> VerifyResult:
    """Lossless tree verification by (recursive) rejection sampling.

    target_probs [B, N, V]: the (warped) target distribution after each node.
    draft_probs [B, N, V]: the distribution each node was drawn from (row 0 unused).
    tokens [B, N], node 0 being the root.
    """
    children = jnp.asarray(shape.children)  # [N, K]

    def row(p_all, q_all, toks, key):
        def try_child(carry, k):
            node, accepted, p = carry
            child = children[node, k]
            x = toks[jnp.maximum(child, 0)]
            q = q_all[jnp.maximum(child, 0)]
            active = (child >= 0) & (accepted < 0)
            u = jax.random.uniform(jax.random.fold_in(key, node * children.shape[1] + k))
            take = active & (u * q[x] < p[x])  # u < p(x) / q(x) without dividing
            residual = _normalise(jnp.maximum(p - q, 0.0), p)
            return (node, jnp.where(take, child, accepted),
                    jnp.where(active & ~take, residual, p)), None

        def step(carry, _):
            node, alive, p = carry
            (_, accepted, p), _ = jax.lax.scan(
                try_child, (node, jnp.where(alive, -1, 0), p), jnp.arange(children.shape[1]))
            moved = alive & (accepted >= 0)
            node = jnp.where(moved, accepted, node)
            return (node, moved, jnp.where(moved, p_all[node], p)), None

        (node, _, p), _ = jax.lax.scan(step, (0, True, p_all[0]), None, length=shape.max_depth)
        key = jax.random.fold_in(key, shape.num_nodes * children.shape[1] + 1)
        return node, jax.random.categorical(key, jnp.log(p))

    keys = jax.random.split(key, tokens.shape[0])
    node, next_token = jax.vmap(row)(target_probs, draft_probs, tokens, keys)
    return _result(shape, node, next_token)


def verify(logits: jax.Array, tokens: jax.Array, draft_probs: Optional[jax.Array],
           shape: TreeShape, key: jax.Array, cfg: SpecConfig) -> VerifyResult:
    """Greedy at temperature 0, lossless rejection sampling otherwise."""
    if cfg.temperature == 0.0:
        return verify_greedy(logits, tokens, shape)
    target = jax.nn.softmax(warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), -1)
    if draft_probs is None:
        draft_probs = jnp.zeros_like(target)  # no drafted nodes: only the root's token
    return verify_rejection(target, draft_probs, tokens, shape, key)
