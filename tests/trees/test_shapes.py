"""Tree shapes and the Sequoia construction."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from sdjax import trees


def test_chain_kary_and_choices_topology():
    c = trees.chain(3)
    assert c.parents == (-1, 0, 1, 2) and c.max_depth == 3
    assert c.paths[3].tolist() == [0, 1, 2, 3] and c.paths[1].tolist() == [0, 1, 1, 1]
    k = trees.kary(2, 2)
    assert k.num_nodes == 7 and k.children[0].tolist() == [1, 2]
    assert k.ancestor_mask[6].tolist() == [True, False, True, False, False, False, True]
    m = trees.from_choices([(1,), (0,), (0, 0)])
    assert m.parents == (-1, 0, 0, 1) and m.rank.tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("choices,message", [([(0, 0)], "prefix"), ([(1,)], "without gaps")])
def test_bad_choice_lists(choices, message):
    with pytest.raises(ValueError, match=message):
        trees.from_choices(choices)


def test_parents_must_precede_children():
    with pytest.raises(ValueError, match="precede"):
        trees.TreeShape((-1, 2, 0))


def all_trees(n, max_depth):
    """Every tree of n nodes (children as rank-ordered lists), as parent tuples in BFS."""
    def shapes(size, depth):  # nested tuples of children
        if size == 1:
            yield ()
            return
        if depth == 0:
            return
        for parts in compositions(size - 1):
            for kids in itertools.product(*(list(shapes(p, depth - 1)) for p in parts)):
                yield kids

    def compositions(m):
        if m == 0:
            yield ()
            return
        for first in range(1, m + 1):
            for rest in compositions(m - first):
                yield (first,) + rest

    for nested in shapes(n, max_depth):
        parents, queue = [-1], [(0, nested)]
        while queue:
            node, kids = queue.pop(0)
            for kid in kids:
                parents.append(node)
                queue.append((len(parents) - 1, kid))
        yield trees.TreeShape(tuple(parents))


@pytest.mark.parametrize("acceptance", [[0.6, 0.2, 0.1], [0.3, 0.3, 0.3], [0.9, 0.05]])
@pytest.mark.parametrize("n,depth", [(5, 2), (6, 3), (7, 4)])
def test_sequoia_is_the_best_tree_by_brute_force(acceptance, n, depth):
    best = max(trees.expected_tokens(t, acceptance) for t in all_trees(n, depth))
    tree = trees.sequoia(acceptance, n, depth)
    assert tree.num_nodes == n and tree.max_depth <= depth
    assert trees.expected_tokens(tree, acceptance) == pytest.approx(best)


def test_sequoia_shapes_follow_the_acceptance():
    assert trees.sequoia([0.95, 0.01], 6, 8).parents == trees.chain(5).parents
    wide = trees.sequoia([0.2] * 5, 6, 8)
    assert wide.max_depth == 1  # flat acceptance: spend the budget on siblings
    with pytest.raises(ValueError, match="do not fit"):
        trees.sequoia([0.5, 0.3], 8, 2)
    with pytest.raises(ValueError, match="sum"):
        trees.sequoia([0.7, 0.6], 4, 2)


@pytest.mark.parametrize("shape", [trees.chain(3), trees.kary(2, 2), trees.branches(3, 2),
                                   trees.from_choices([(0,), (1,), (2,), (0, 0), (0, 1),
                                                       (1, 0), (0, 0, 0)])])
def test_topology_from_parents_matches_the_static_shape(shape):
    """What a dynamic drafter builds per row equals the numpy topology of a fixed tree."""
    parents = jnp.asarray(np.broadcast_to(np.asarray(shape.parents), (2, shape.num_nodes)))
    built = trees.from_parents(parents, shape.max_depth + 1, shape.width)  # loose depth bound
    static = trees.static_topology(shape, 2)
    for field in ("parents", "depth", "ancestor_mask", "children", "rank"):
        np.testing.assert_array_equal(getattr(built, field), getattr(static, field), field)
    np.testing.assert_array_equal(built.paths[..., : shape.max_depth + 1], static.paths)
