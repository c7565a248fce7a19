"""Draft shapes: the static topology of the token tree a drafter fills each cycle."""

from sdjax.trees.shape import TreeShape, chain, from_choices, kary

__all__ = ["TreeShape", "chain", "from_choices", "kary"]
