"""Self-speculation: the target drafts for itself with a subset of its own layers.

The draft runs the target's layers `layers` (early exit, LayerSkip-style: the first
E; training-free layer skipping, Draft & Verify / SWIFT: any subset, picked on real
text by `sdjax.calibrate.skip_layers`), then the target's final norm and LM head, or
that head's rows for a reduced draft vocabulary (`draft_params={"vocab_ids": ids}`):
on Gemma 3 the 262k-row head is about half of a target step, and a draft step that
multiplied by all of it could hardly pay for itself.

It needs no weights and no cache of its own: it reads the target's KV cache, whose
committed entries are the target's own (for the first E layers exactly what the
draft computes; for a skipped-layer draft, the full model's, as Draft & Verify
shares them), and drafts the tree level by level into that cache's pending region,
which the verification forward then rewrites (`Drafter.reads_target_cache`). With
every layer the draft is the target: greedy drafts are all accepted.
`TargetLayersDraft` is what it shares with Kangaroo (`sdjax.heads.Kangaroo`: the first
E layers and a trained adapter).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from sdjax.config import SpecConfig
from sdjax.drafters.levels import draft_levels
from sdjax.drafters.vocab import bind_head, check_head_params
from sdjax.models.transformer import Transformer
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import TreeShape, chain
from sdjax.validation import check_range, matches


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetLayersDraft(Drafter):
    """What drafts made of the target's own first layers share (`SelfDraft`, and
    `sdjax.heads.Kangaroo`, which adds a trained adapter): a chain of `num_draft`
    tokens or the static `tree`, drafted level by level over the target's KV cache.
    `min_confidence` > 0: a row stops drafting at the first level whose best draft
    probability is below it (Kangaroo's early stop); levels no row needs are skipped.
    Subclasses say which target layers the draft runs (`layers`, ascending)."""

    num_draft: int = 4
    tree: Optional[TreeShape] = None
    min_confidence: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "num_draft", 1)
        check_range(self, "min_confidence", 0, 1)
        if self.tree is not None:
            self.tree.check_level_order()

    @property
    def shape(self) -> TreeShape:
        return self.tree if self.tree is not None else chain(self.num_draft)

    @property
    def reads_target_cache(self) -> bool:
        return True

    def check(self, cfg: SpecConfig, draft_params) -> None:
        if self.layers[-1] >= cfg.model.num_layers:
            raise ValueError(f"{type(self).__name__}'s layers {self.layers} name layers the "
                             f"target does not have (it has {cfg.model.num_layers})")

    def check_target_cache(self, target_cache) -> None:
        """Raises unless `propose` got the target's KV cache, which the draft runs over."""
        if target_cache is None:
            raise ValueError(f"{type(self).__name__} drafts over the target's KV cache: call "
                             "propose(..., target_cache=cache), or run_propose")

    def draft(self, forward, cache, vocab_ids, sequence, seq_len, key, cfg: SpecConfig):
        """(tree, cache): the tree drafted by `forward` (see `draft_levels`) over `cache`,
        whose pending region it writes from slot 0 (the root) on."""
        cache, tokens, probs, limit = draft_levels(
            forward, self.shape, 0, cache, sequence, seq_len, key, cfg, cfg.model.vocab_size,
            vocab_ids=vocab_ids, min_confidence=self.min_confidence)
        return DraftTree(tokens, probs, limit), cache


@dataclasses.dataclass(frozen=True)
class SelfDraft(TargetLayersDraft):
    """Drafts with the target's layers `layers` (ascending indices) and its LM head.
    `SelfDraft.early_exit(E)`: the first E."""

    layers: Tuple[int, ...]

    def __post_init__(self):
        super().__post_init__()
        if not self.layers or any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"SelfDraft.layers must be distinct ascending layer indices, "
                             f"got {self.layers}")
        if self.layers[0] < 0:
            raise ValueError(f"SelfDraft.layers must be >= 0, got {self.layers}")

    @classmethod
    def early_exit(cls, exit_layer: int, **kw) -> "SelfDraft":
        """The draft of the target's first `exit_layer` layers (LayerSkip's early exit)."""
        if not matches(exit_layer, int) or exit_layer < 1:
            raise ValueError(f"the exit layer must be an int >= 1, got {exit_layer!r}")
        return cls(tuple(range(int(exit_layer))), **kw)

    def check(self, cfg: SpecConfig, draft_params) -> None:
        super().check(cfg, draft_params)
        check_head_params("SelfDraft", draft_params, cfg.model.vocab_size)

    def bind(self, draft_params, target_params):
        """The target's params, and the LM head's rows of a reduced draft vocabulary
        (gathered once per generate, before the loop)."""
        return {"target": target_params, **bind_head(draft_params, target_params)}

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return ()

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig,
                target_cache=None):
        """The tree, the (empty) state, and the target cache with the drafted tokens'
        KV in its pending region (the verify forward overwrites it)."""
        self.check_target_cache(target_cache)
        model = Transformer(cfg.model)
        target, head = draft_params["target"], draft_params["head"]

        def forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
                    logits_from):
            out = model.apply(target, tokens, positions, cache, mask, run_layers=self.layers,
                              write_offset=write_offset, pending_positions=pending_positions,
                              logits_from=logits_from, head=head)
            return out.logits, out.hidden, out.cache

        tree, cache = self.draft(forward, target_cache, draft_params["vocab_ids"], sequence,
                                 seq_len, key, cfg)
        return tree, state, cache

    def commit(self, state, result, committed_length, features=None):
        return state
