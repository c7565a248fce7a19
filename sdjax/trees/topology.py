"""A tree's structure as per-row arrays: what the decode loop and the verifiers read.

A static `TreeShape` gives every row the same topology (numpy constants, broadcast);
a dynamic drafter (EAGLE-2) builds a new one per row and cycle from its parents with
`from_parents`. Either way N, the depth bound D and the width K are static.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.trees.shape import TreeShape


@dataclasses.dataclass(frozen=True)
class DynamicShape:
    """The static bounds of a tree a drafter builds anew each cycle (EAGLE-2): what the
    loop sizes its buffers by, in place of a `TreeShape`."""

    num_nodes: int
    max_depth: int
    width: int
    is_chain: bool = False


@flax.struct.dataclass
class Topology:
    """A tree's structure as per-row arrays (static or built each cycle)."""
    parents: jax.Array  # [B, N] node 0 (the root) has -1; parents precede children
    depth: jax.Array  # [B, N]
    paths: jax.Array  # [B, N, D + 1] root-to-node path, padded with the node
    ancestor_mask: jax.Array  # [B, N, N] node i sees node j: j is i or an ancestor
    children: jax.Array  # [B, N, K] children in rank order, -1 padded
    rank: jax.Array  # [B, N] position among siblings (0 for the root)
    is_chain: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def num_nodes(self) -> int:
        return self.parents.shape[1]

    @property
    def max_depth(self) -> int:
        return self.paths.shape[2] - 1


def static_topology(shape: TreeShape, batch: int) -> Topology:
    """Every row of the batch has `shape`."""
    rows = lambda x: jnp.broadcast_to(jnp.asarray(x), (batch, *np.shape(x)))
    return Topology(rows(np.asarray(shape.parents, np.int32)), rows(shape.depth),
                    rows(shape.paths), rows(shape.ancestor_mask), rows(shape.children),
                    rows(shape.rank), is_chain=shape.is_chain)


def as_topology(tree: Union[TreeShape, Topology], batch: int) -> Topology:
    """`tree` as a Topology of `batch` rows."""
    return static_topology(tree, batch) if isinstance(tree, TreeShape) else tree


def from_parents(parents: jax.Array, max_depth: int, width: int) -> Topology:
    """The topology of trees given by parents [B, N] (-1 at the root, parents[i] < i,
    siblings in rank order), whose depth is at most `max_depth` and whose nodes have
    at most `width` children. With width 1 the tree is a chain (each node has one child
    and comes after its parent), which chain-only rules such as block verification take."""
    batch, nodes = parents.shape
    index = jnp.arange(nodes)
    up = jnp.where(parents < 0, index, parents)  # the root is its own parent
    # ancestors[s] = the s-th ancestor of each node (stuck at the root)
    ancestors = [jnp.broadcast_to(index, (batch, nodes))]
    for _ in range(max_depth):
        ancestors.append(jnp.take_along_axis(up, ancestors[-1], axis=1))
    ancestors = jnp.stack(ancestors)  # [D + 1, B, N]
    depth = jnp.sum(ancestors[:-1] != 0, axis=0).astype(jnp.int32)
    ancestor_mask = jnp.any(ancestors[..., None] == index, axis=0)  # [B, N, N]
    # paths[b, i, j] = the ancestor of i at depth j, i.e. its (depth - j)-th ancestor
    steps_up = jnp.clip(depth[..., None] - jnp.arange(max_depth + 1), 0, max_depth)
    paths = jnp.take_along_axis(ancestors.transpose(1, 2, 0), steps_up, axis=2)
    paths = jnp.where(jnp.arange(max_depth + 1) <= depth[..., None], paths, index[:, None])
    is_child = parents[:, None, :] == index[None, :, None]  # [B, parent, child]
    rank = jnp.sum(is_child * (jnp.cumsum(is_child, axis=2) - 1), axis=1).astype(jnp.int32)
    children = jax.lax.top_k(jnp.where(is_child, -index, -nodes), width)
    children = jnp.where(children[0] > -nodes, -children[0], -1).astype(jnp.int32)
    return Topology(parents.astype(jnp.int32), depth, paths.astype(jnp.int32), ancestor_mask,
                    children, rank, is_chain=width == 1)
