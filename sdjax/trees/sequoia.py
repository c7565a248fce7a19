"""Sequoia trees (Chen et al., 2024): the token tree that maximises the expected
number of tokens per cycle for a node budget and a depth limit.

Under Sequoia's positional acceptance assumption, the k-th ranked child of any node
is the accepted one with probability `acceptance[k]` (so sum(acceptance) <= 1), and
a tree T yields F(T) = sum over nodes v of the product of acceptance[rank(u)] over
the non-root nodes u on v's root path (the root counts 1: the token every cycle
emits). With c(n, d) the best F over trees of n nodes and depth <= d,

    c(1, d) = 1,    c(n, d) = 1 + max over a_1 + ... + a_m = n - 1 (all a_k >= 1)
                                   of sum_k acceptance[k] * c(a_k, d - 1),

children using ranks 1..m without gaps. The inner maximum is a knapsack over ranks,
solved below by dynamic programming in O(depth * ranks * n^2).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from sdjax.trees.shape import TreeShape

NEG = -np.inf


def expected_tokens(shape: TreeShape, acceptance: Sequence[float]) -> float:
    """F(T): expected tokens per cycle of `shape` under positional acceptance."""
    acceptance = np.asarray(acceptance, float)
    reach = np.ones(shape.num_nodes)
    for i in range(1, shape.num_nodes):
        rank = shape.rank[i]
        reach[i] = reach[shape.parents[i]] * (acceptance[rank] if rank < len(acceptance) else 0)
    return float(reach.sum())


def _solve(acceptance: np.ndarray, num_nodes: int, max_depth: int):
    """c[d][n] for n in 1..num_nodes and the children sizes that achieve it."""
    ranks = len(acceptance)
    best = np.full((max_depth + 1, num_nodes + 1), NEG)
    best[:, 1] = 1.0
    split: Dict[Tuple[int, int], Tuple[int, ...]] = {}
    for d in range(1, max_depth + 1):
        sub = best[d - 1]  # values of child subtrees, by size
        # knap[k][m]: best sum using ranks k.. for m nodes; ranks must not have gaps.
        knap = np.full((ranks + 1, num_nodes), NEG)
        knap[:, 0] = 0.0
        choice = np.zeros((ranks + 1, num_nodes), int)
        for k in range(ranks - 1, -1, -1):
            for m in range(1, num_nodes):
                sizes = np.arange(1, m + 1)
                fits = np.isfinite(sub[sizes])
                subtree = np.where(fits, acceptance[k] * np.where(fits, sub[sizes], 0.0), NEG)
                values = subtree + knap[k + 1, m - sizes]
                j = int(np.argmax(values))
                knap[k, m], choice[k, m] = values[j], sizes[j]
        for n in range(2, num_nodes + 1):
            best[d, n] = 1.0 + knap[0, n - 1]
            if not np.isfinite(best[d, n]):
                continue  # n nodes do not fit in depth d
            sizes, m, k = [], n - 1, 0
            while m > 0:
                sizes.append(int(choice[k, m]))
                m -= choice[k, m]
                k += 1
            split[d, n] = tuple(sizes)
    return best, split


def sequoia(acceptance: Sequence[float], num_nodes: int, max_depth: int) -> TreeShape:
    """The tree of `num_nodes` nodes (root included) and depth <= max_depth that
    maximises `expected_tokens`, nodes in breadth-first order, siblings by rank."""
    acceptance = np.asarray(acceptance, float)
    if num_nodes < 1 or max_depth < 0:
        raise ValueError("need num_nodes >= 1 and max_depth >= 0")
    if (acceptance < 0).any() or acceptance.sum() > 1 + 1e-6:
        raise ValueError("acceptance must be probabilities of disjoint events (sum <= 1)")
    if num_nodes > 1 + sum(len(acceptance) ** d for d in range(1, max_depth + 1)):
        raise ValueError(f"{num_nodes} nodes do not fit in depth {max_depth} with "
                         f"{len(acceptance)} ranks")
    best, split = _solve(acceptance, num_nodes, max_depth)
    # Breadth-first construction: each queued node carries its size and depth budget.
    parents: List[int] = [-1]
    queue = [(0, num_nodes, max_depth)]
    while queue:
        node, size, depth = queue.pop(0)
        if size == 1:
            continue
        for child_size in split[depth, size]:
            parents.append(node)
            queue.append((len(parents) - 1, child_size, depth - 1))
    return TreeShape(tuple(parents))
