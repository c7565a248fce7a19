"""SpecInfer's ensemble drafting: several draft models, one merged token tree.

Each member drafts its own chain or tree from the common root; the merged tree
hangs every member's nodes under that root (member 1's first, then member 2's...).
Every node keeps the distribution it was drawn from, so the tree verifier's
multi-step rejection sampling stays lossless across members (SpecInfer, Miao et
al. 2024). Members re-feed a window of max depth + 1 tokens each cycle, which keeps
each one's cache in step with tokens another member proposed. `draft_params` is
the tuple of the members' parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from sdjax.drafters.draft_model import DraftModel
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import TreeShape


@dataclasses.dataclass(frozen=True)
class Ensemble(Drafter):
    """Several draft models' trees merged under one root (SpecInfer)."""
    members: Tuple[DraftModel, ...]

    def __post_init__(self):
        if isinstance(self.members, list):
            object.__setattr__(self, "members", tuple(self.members))
        super().__post_init__()
        if len(self.members) < 2:
            raise ValueError("an ensemble needs at least two draft models")
        if any(m.adaptive or m.stop_head is not None for m in self.members):
            raise ValueError("ensemble members draft fixed shapes (adaptive=False, no "
                             "stop_head)")
        window = 1 + max(m.shape.max_depth for m in self.members)
        members = tuple(dataclasses.replace(m, catch_up=window) for m in self.members)
        object.__setattr__(self, "members", members)

    @property
    def shape(self) -> TreeShape:
        parents = [-1]
        for member in self.members:
            offset = len(parents) - 1  # member node i (> 0) becomes merged node offset + i
            parents += [0 if p == 0 else offset + p for p in member.shape.parents[1:]]
        return TreeShape(tuple(parents))

    def check(self, cfg, draft_params) -> None:
        if not isinstance(draft_params, (tuple, list)) or len(draft_params) != len(self.members):
            raise ValueError(f"Ensemble needs a tuple of {len(self.members)} draft_params")
        for member, params in zip(self.members, draft_params):
            member.check(cfg, params)

    def bind(self, draft_params, target_params):
        return tuple(m.bind(p, target_params) for m, p in zip(self.members, draft_params))

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return tuple(m.init(p, prompt_tokens, prompt_lengths, max_len, features)
                     for m, p in zip(self.members, draft_params))

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        trees, states = [], []
        for i, (member, params, member_state) in enumerate(
                zip(self.members, draft_params, state)):
            tree, member_state = member.propose(params, member_state, sequence, seq_len,
                                                jax.random.fold_in(key, i), cfg)
            trees.append(tree)
            states.append(member_state)
        tokens = jnp.concatenate([trees[0].tokens[:, :1]] + [t.tokens[:, 1:] for t in trees], 1)
        probs = None
        if cfg.temperature > 0:
            probs = jnp.concatenate([trees[0].probs[:, :1]] + [t.probs[:, 1:] for t in trees], 1)
        return DraftTree(tokens, probs), tuple(states)

    def commit(self, state, result, committed_length, features=None):
        return tuple(m.commit(s, result, committed_length, features)
                     for m, s in zip(self.members, state))
