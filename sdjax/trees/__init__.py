"""Draft shapes: the static topology of the token tree a drafter fills each cycle."""

from sdjax.trees.sequoia import expected_tokens, sequoia
from sdjax.trees.shape import TreeShape, branches, chain, from_choices, kary

__all__ = ["TreeShape", "branches", "chain", "expected_tokens", "from_choices", "kary", "sequoia"]
