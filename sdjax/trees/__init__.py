"""Draft shapes: the static topology of the token tree a drafter fills each cycle, and
its per-row array form (`Topology`), which dynamic drafters build anew each cycle."""

from sdjax.trees.sequoia import expected_tokens, sequoia
from sdjax.trees.shape import TreeShape, branches, chain, from_choices, kary
from sdjax.trees.topology import DynamicShape, Topology, as_topology, from_parents, static_topology

__all__ = ["DynamicShape", "Topology", "TreeShape", "as_topology", "branches", "chain",
           "expected_tokens", "from_choices", "from_parents", "kary", "sequoia", "static_topology"]
