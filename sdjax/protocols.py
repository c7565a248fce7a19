"""The two contracts every speculative method implements, and the data they exchange.

A `Drafter` proposes a `DraftTree` each cycle; the target scores every node in one
forward (and any `NonCandidates` beside them, whose logits go back to the drafter);
a `Verifier` turns the tree's scores into a `VerifyResult` (the accepted path and
one more token). The decode loop (`sdjax.decode`) only ever talks to these two, so a
new method is a new subclass of one of them, never a new loop.

Both are abstract bases for frozen dataclasses: configs are hashable, because
`SpecConfig` (which holds them) is part of what the compiled loop is keyed on.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp

from sdjax.trees import DynamicShape, Topology, TreeShape
from sdjax.validation import check_fields

if TYPE_CHECKING:
    from sdjax.config import SpecConfig
    from sdjax.models.cache import KVCache


@flax.struct.dataclass
class NonCandidates:
    """Tokens the verify forward scores beside the tree without drafting them
    (Lookahead's Jacobi window): each has its own position and attention pattern; none
    is ever accepted or committed to the cache, and tree nodes never attend to them,
    so the tree's logits are those of a forward without them. The logits of those
    from `scored_from` on go back to the drafter's `commit` (`extra_logits`); the
    others only serve as context (no LM head is spent on them)."""

    tokens: jax.Array  # [B, M]
    offsets: jax.Array  # [B, M] or [M] position relative to the root
    mask: jax.Array  # [B, M, N + M] or [M, N + M]: the tree nodes and non-candidates each sees
    head: Optional[jax.Array] = None  # [K, D] LM head rows to score them over (None: all)
    scored_from: int = flax.struct.field(pytree_node=False, default=0)


@flax.struct.dataclass
class DraftTree:
    """What a drafter proposes in one cycle."""

    tokens: jax.Array  # [B, N] node 0 = the root
    probs: Optional[jax.Array] = None  # [B, N, V] what each node was drawn from (sampling)
    limit: Optional[jax.Array] = None  # [B] most drafts a row may accept (adaptive length)
    topology: Optional[Topology] = None  # per-cycle structure (dynamic trees); None: `shape`
    extra: Optional[NonCandidates] = None  # scored beside the tree, never accepted

    def forward_inputs(self, topology: Topology):
        """(tokens [B, N + M], offsets from the root [B, N + M], mask [B, N + M, N + M])
        of the verify forward: the tree's nodes, then the non-candidates."""
        if self.extra is None:
            return self.tokens, topology.depth, topology.ancestor_mask
        batch, nodes = self.tokens.shape
        extra = self.extra
        count = extra.tokens.shape[1]
        offsets = jnp.broadcast_to(extra.offsets, (batch, count))
        tree_rows = jnp.concatenate(
            [topology.ancestor_mask, jnp.zeros((batch, nodes, count), bool)], axis=2)
        extra_rows = jnp.broadcast_to(extra.mask, (batch, count, nodes + count))
        return (jnp.concatenate([self.tokens, extra.tokens], axis=1),
                jnp.concatenate([topology.depth, offsets], axis=1),
                jnp.concatenate([tree_rows, extra_rows], axis=1))


@flax.struct.dataclass
class VerifyResult:
    """What a verifier accepted in one cycle."""

    path: jax.Array  # [B, D+1] root-to-last-accepted node indices (padded with the last)
    num_accepted: jax.Array  # [B] accepted drafted tokens, 0..D
    next_token: jax.Array  # [B] correction or bonus token from the target


class Drafter(abc.ABC):
    """Proposes the tokens the target verifies. Pure methods, called inside the jit.

    `features` are the target's final hidden states [B, T, D] of the forward that
    precedes the call (the prefill's, then each verification's over the tree
    nodes), or the layers named in `feature_layers`, side by side (EAGLE-3).
    `sequence[B, L]` holds each row's prompt and generated tokens, `seq_len[B]` how
    many; the last one is the tree's root (committed, its KV not yet in the cache).
    The drafter's state is a pytree of its own (a small named struct). Subclasses
    that define `__post_init__` call this one first: it checks every field's type.
    """

    def __post_init__(self):
        check_fields(self)

    @property
    @abc.abstractmethod
    def shape(self) -> Union[TreeShape, DynamicShape]:
        """The static tree (or a dynamic tree's static bounds) every cycle proposes."""

    @abc.abstractmethod
    def init(self, draft_params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
             max_len: int, features: jax.Array) -> Any:
        """The state after the prompt (right-padded [B, bucket]) was prefilled."""

    @abc.abstractmethod
    def propose(self, draft_params, state, sequence: jax.Array, seq_len: jax.Array,
                key: jax.Array, cfg: SpecConfig) -> Tuple[DraftTree, Any]:
        """This cycle's tree, and the state it leaves."""

    @abc.abstractmethod
    def commit(self, state, result: VerifyResult, committed_length: jax.Array,
               features: jax.Array) -> Any:
        """The state once `result` was accepted; `committed_length` [B] is the target
        cache's new length, `features` the verify forward's over the tree's nodes."""

    @property
    def reads_target_cache(self) -> bool:
        """Whether `propose` also takes `target_cache=`, the target's `KVCache` (its
        committed prefix: self-speculation drafts with the target's own layers over it
        instead of keeping a second cache), and returns it third, with whatever the
        draft wrote into its pending region. That region is scratch: the verify
        forward rewrites every pending slot it reads, so drafting there copies nothing."""
        return False

    def run_propose(self, draft_params, state, sequence: jax.Array, seq_len: jax.Array,
                    key: jax.Array, cfg: SpecConfig,
                    target_cache: KVCache) -> Tuple[DraftTree, Any, KVCache]:
        """`propose` as the loop (and the cost benchmark) calls it: (tree, state, the
        target cache to verify over)."""
        if not self.reads_target_cache:
            return (*self.propose(draft_params, state, sequence, seq_len, key, cfg),
                    target_cache)
        return self.propose(draft_params, state, sequence, seq_len, key, cfg,
                            target_cache=target_cache)

    @property
    def num_extra(self) -> int:
        """Non-candidate tokens (`DraftTree.extra`) each cycle's forward also scores; a
        drafter with any takes `extra_logits=` [B, M - scored_from, V or K] in `commit`."""
        return 0

    def run_commit(self, state, result: VerifyResult, committed_length: jax.Array,
                   features: jax.Array, extra_logits: Optional[jax.Array]) -> Any:
        """`commit` as the loop calls it: the non-candidates' logits go to drafters
        that score any."""
        if not self.num_extra:
            return self.commit(state, result, committed_length, features)
        return self.commit(state, result, committed_length, features,
                           extra_logits=extra_logits)

    @property
    def feature_layers(self) -> Tuple[int, ...]:
        """Target layers the drafter reads (`transformers` numbering); () = final."""
        return ()

    def check(self, cfg: SpecConfig, draft_params) -> None:
        """Raises ValueError when `draft_params` cannot drive this drafter on cfg's
        target (called by `generate` before compiling). This default is for drafters
        without a model: draft params given to one would be silently ignored."""
        if draft_params is not None:
            raise ValueError(f"{type(self).__name__} drafts without a model; draft_params "
                             "were given (pass draft_params=None, or choose a drafter "
                             "that uses them)")

    def bind(self, draft_params, target_params):
        """The params `init` / `propose` see: draft_params joined with any target
        weights the draft shares (EAGLE's embedding), inside the jit."""
        return draft_params


class Verifier(abc.ABC):
    """Accepts a path of a draft tree from the target's logits over its nodes."""

    #: Whether sampled output follows the target's law exactly (greedy always does).
    lossless: bool = True

    def __post_init__(self):
        check_fields(self)

    @abc.abstractmethod
    def __call__(self, logits: jax.Array, tokens: jax.Array, draft_probs: Optional[jax.Array],
                 tree: Union[TreeShape, Topology], key: jax.Array,
                 cfg: SpecConfig) -> VerifyResult:
        """logits [B, N, V] of the target at the tree's N nodes (tokens [B, N])."""
