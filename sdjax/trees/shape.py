"""Static tree topologies.

Node 0 is the root: the last committed token, whose KV is not yet in the cache.
Every other node is a drafted token; `parents[i] < i`, and siblings are listed in
rank order (the drafter's first choice first). A chain of gamma drafts is the tree
whose node i has parent i - 1. Everything here is numpy, fixed at trace time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence, Tuple

import numpy as np

from sdjax.validation import check_fields


@dataclasses.dataclass(frozen=True)
class TreeShape:
    """A static draft tree: each node's parent, node 0 the root (see the module)."""
    parents: Tuple[int, ...]

    def __post_init__(self):
        check_fields(self)
        if not self.parents or self.parents[0] != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        for i, p in enumerate(self.parents[1:], start=1):
            if not 0 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must precede children")

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @functools.cached_property
    def depth(self) -> np.ndarray:
        depth = np.zeros(self.num_nodes, np.int32)
        for i, p in enumerate(self.parents[1:], start=1):
            depth[i] = depth[p] + 1
        return depth

    @property
    def is_chain(self) -> bool:
        return self.parents == tuple(range(-1, self.num_nodes - 1))

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    @functools.cached_property
    def paths(self) -> np.ndarray:
        """[N, max_depth + 1]: root-to-node path of each node, padded with the node."""
        out = np.zeros((self.num_nodes, self.max_depth + 1), np.int32)
        for i in range(self.num_nodes):
            path, node = [], i
            while node >= 0:
                path.append(node)
                node = self.parents[node]
            path = path[::-1]
            out[i] = path + [i] * (self.max_depth + 1 - len(path))
        return out

    @functools.cached_property
    def ancestor_mask(self) -> np.ndarray:
        """[N, N] bool: node i attends to node j iff j is i itself or an ancestor."""
        mask = np.zeros((self.num_nodes, self.num_nodes), bool)
        for i in range(self.num_nodes):
            mask[i, self.paths[i, : self.depth[i] + 1]] = True
        return mask

    @functools.cached_property
    def children(self) -> np.ndarray:
        """[N, K] children of each node in rank order, padded with -1."""
        kids = [[] for _ in range(self.num_nodes)]
        for i, p in enumerate(self.parents[1:], start=1):
            kids[p].append(i)
        width = max(1, max(len(k) for k in kids))
        return np.array([k + [-1] * (width - len(k)) for k in kids], np.int32)

    def check_level_order(self) -> None:
        """Raises unless nodes are listed level by level (BFS order), as a tree drafted
        one depth level per forward needs."""
        if list(self.depth) != sorted(self.depth):
            raise ValueError("a drafted tree must list its nodes level by level (BFS order)")

    @property
    def width(self) -> int:
        """The most children any node has (at least 1)."""
        return self.children.shape[1]

    @functools.cached_property
    def rank(self) -> np.ndarray:
        """[N] position of each node among its siblings (0 for the root)."""
        rank = np.zeros(self.num_nodes, np.int32)
        for kids in self.children:
            for r, k in enumerate(kids[kids >= 0]):
                rank[k] = r
        return rank


def chain(gamma: int) -> TreeShape:
    """The root followed by gamma drafted tokens in a line."""
    return TreeShape(tuple(range(-1, gamma)))


def kary(k: int, depth: int) -> TreeShape:
    """The full k-ary tree of the given depth (k ** depth leaves)."""
    parents, level = [-1], [0]
    for _ in range(depth):
        nxt = []
        for node in level:
            for _ in range(k):
                parents.append(node)
                nxt.append(len(parents) - 1)
        level = nxt
    return TreeShape(tuple(parents))


def branches(num_branches: int, length: int) -> TreeShape:
    """num_branches chains of `length` tokens under the root, level by level."""
    parents = [-1] + [0] * num_branches
    for d in range(1, length):
        parents += [1 + (d - 1) * num_branches + b for b in range(num_branches)]
    return TreeShape(tuple(parents))


def from_choices(choices: Sequence[Sequence[int]]) -> TreeShape:
    """A Medusa-style tree: each choice is a path of sibling ranks from the root,
    e.g. (0,), (1,), (0, 0) = the top two first tokens and the top continuation of
    the first. Every prefix of a choice must itself be a choice."""
    ordered = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
    index = {(): 0}
    parents = [-1]
    for c in ordered:
        if not c or c[:-1] not in index:
            raise ValueError(f"choice {c} needs its prefix {c[:-1]} in the tree")
        index[c] = len(parents)
        parents.append(index[c[:-1]])
    shape = TreeShape(tuple(parents))
    for c, node in index.items():
        if c and shape.rank[node] != c[-1]:
            raise ValueError(f"choice {c}: sibling ranks must be 0, 1, 2, ... without gaps")
    return shape
