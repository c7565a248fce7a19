"""Reduced draft vocabularies (EAGLE-3's draft-to-target map; SGLang's FR-Spec).

A draft's LM head over the K most frequent target tokens of its training data: on
Gemma 3 the tied 262,144-row LM head is over half of a target step, and a draft step
that multiplied by all of it could never pay for itself. The K draft logits map back
to target ids through `ids` (int32 [K], ascending); the draft's distribution is zero
outside them. The lossless verifiers need nothing more: a draft distribution that
is zero somewhere is still a distribution over the target's vocabulary.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sdjax.models.transformer import head_rows


def frequent_tokens(stream: np.ndarray, size: int, vocab_size: int) -> np.ndarray:
    """The `size` most frequent ids of a token stream (ties: the lower id), ascending."""
    if not 1 <= size <= vocab_size:
        raise ValueError(f"a draft vocabulary of {size} tokens must be in 1..{vocab_size}")
    stream = np.asarray(stream)
    if stream.size and (stream.min() < 0 or stream.max() >= vocab_size):
        raise ValueError(f"token ids outside 0..{vocab_size - 1}: not this target's "
                         "tokenizer")
    counts = np.bincount(stream.astype(np.int64), minlength=vocab_size)
    return np.sort(np.argsort(-counts, kind="stable")[:size]).astype(np.int32)


def check_ids(ids, size: int, vocab_size: int) -> None:
    """Raises unless `ids` are `size` ascending int ids in 0..vocab_size - 1. A repeated
    id would merge two draft probabilities into one target token, and the verifier
    would then check the draft against a law it was not drawn from. Values are checked
    where they are concrete (not under an outer jit)."""
    if ids is None or np.shape(ids) != (size,) or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"a reduced draft vocabulary needs its {size} target ids "
                         "(int 'vocab_ids' among the draft params)")
    if isinstance(ids, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    if ids[0] < 0 or ids[-1] >= vocab_size or np.any(np.diff(ids) <= 0):
        raise ValueError(f"the draft's vocab_ids must be distinct ascending ids in "
                         f"0..{vocab_size - 1}")


def check_head_params(owner: str, draft_params, vocab_size: int) -> None:
    """Raises unless `draft_params` are None (the target's whole LM head) or
    {"vocab_ids": ids} (its rows for a reduced vocabulary): the draft params of a
    drafter that scores with the target's own head (`SelfDraft`, `Lookahead`)."""
    if draft_params is None:
        return
    got = sorted(draft_params) if isinstance(draft_params, Mapping) else type(
        draft_params).__name__
    if got != ["vocab_ids"]:
        raise ValueError(f"{owner}'s draft_params are None (the target's whole LM head) or "
                         f"{{'vocab_ids': ids}} (a reduced vocabulary), got {got}")
    ids = np.asarray(draft_params["vocab_ids"])
    if ids.ndim != 1 or not ids.size:
        raise ValueError(f"{owner}'s vocab_ids must be a non-empty 1-D array of ids, "
                         f"got shape {ids.shape}")
    check_ids(ids, ids.size, vocab_size)


def bind_head(draft_params, target_params) -> dict:
    """{"vocab_ids", "head"}: None for the whole LM head, or the reduced vocabulary's
    ids and the rows for them of `target_params`' LM head (the target's, or a draft
    model's own), gathered once per generate, before the loop."""
    if draft_params is None:
        return {"vocab_ids": None, "head": None}
    ids = jnp.asarray(draft_params["vocab_ids"], jnp.int32)
    return {"vocab_ids": ids, "head": head_rows(target_params, ids)}


def restrict(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """Target-vocabulary logits [..., V] -> the draft vocabulary's [..., K]."""
    return jnp.take(logits, ids, axis=-1)


def to_target(ids, tokens: jax.Array) -> jax.Array:
    """Draft-vocabulary indices -> target ids (unchanged when `ids` is None: a draft
    over the whole vocabulary)."""
    return tokens if ids is None else jnp.take(ids, tokens)


def widen(probs: jax.Array, ids: jax.Array, vocab_size: int) -> jax.Array:
    """Draft-vocabulary probabilities [..., K] -> [..., V], zero outside `ids`."""
    out = jnp.zeros((*probs.shape[:-1], vocab_size), probs.dtype)
    return out.at[..., ids].set(probs)
