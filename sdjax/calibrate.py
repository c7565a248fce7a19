"""Calibration on real text: a (target, drafter) pair's acceptance by sibling rank, for
Sequoia trees; and how often a draft made of the target's own layers agrees with it,
to choose `SelfDraft`'s layers.

    acceptance = sdjax.calibrate.rank_acceptance(params, prompts, cfg, draft_params=...)
    tree = sdjax.trees.sequoia(acceptance, num_nodes=32, max_depth=8)
    cfg = cfg.replace(drafter=dataclasses.replace(cfg.drafter, tree=tree))

The drafter (one with a `tree` field, such as `DraftModel`) proposes a one-level
tree of `width` children each cycle; acceptance[k] is the fraction of cycles in
which the k-th ranked child was the accepted one — Sequoia's positional
acceptance, under the same temperature and verifier as `cfg`.

    agrees = sdjax.calibrate.self_draft_agreement(params, model_cfg, tokens, layers)

says at which positions of `tokens` `SelfDraft(layers)`'s first draft is the target's
greedy token, teacher forced in one pass (no decoding).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sdjax import trees
from sdjax.config import ModelConfig, SpecConfig
from sdjax.decode import Prompt, generate
from sdjax.drafters.vocab import check_ids, to_target
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer, head_rows


def rank_acceptance(params, prompts: Prompt, cfg: SpecConfig, *, width: int = 8,
                    draft_params=None, tokenizer=None) -> np.ndarray:
    """[width] probability that the k-th ranked draft child is the accepted one."""
    if cfg.drafter is None or not any(f.name == "tree" for f in dataclasses.fields(cfg.drafter)):
        raise ValueError("calibration needs a drafter that drafts trees (e.g. DraftModel)")
    drafter = dataclasses.replace(cfg.drafter, tree=trees.kary(width, 1))
    out = generate(params, prompts, cfg.replace(drafter=drafter), draft_params=draft_params,
                   tokenizer=tokenizer)
    counts = out.stats["first_rank_hist"].sum(axis=0)
    return counts[:width] / max(counts.sum(), 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _target_pass(params, tokens, *, cfg: ModelConfig):
    """The target over real text [B, T]: its KV in pending slots [0, T) of a cache of
    2T, and its greedy next token at every position."""
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
    out = Transformer(cfg).apply(params, tokens, positions, KVCache.init(cfg, batch, 2 * length))
    return out.cache, jnp.argmax(out.logits, -1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _agreement(params, tokens, target_cache, target_next, vocab_ids, layer_mask, *,
               cfg: ModelConfig):
    """[B, T] whether the draft of the layers `layer_mask` [L] marks (traced: every
    subset shares one compile) proposes the target's greedy next token."""
    length = tokens.shape[1]
    positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
    model = Transformer(cfg)
    # Token t's draft writes slot T + t and sees the target's slots before t and itself:
    # what SelfDraft sees at depth 1 with the text up to t committed.
    mask = jnp.concatenate([jnp.tri(length, k=-1, dtype=bool), jnp.eye(length, dtype=bool)], 1)
    head = None if vocab_ids is None else head_rows(params, vocab_ids)
    draft = model.apply(params, tokens, positions, target_cache, mask, write_offset=length,
                        pending_positions=jnp.tile(positions, (1, 2)), layer_mask=layer_mask,
                        head=head)
    return to_target(vocab_ids, jnp.argmax(draft.logits, -1)) == target_next


def _checked(cfg: ModelConfig, tokens, vocab_ids):
    """tokens [B, T] and vocab_ids as device arrays, refused when out of range."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not tokens.size or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"calibration text must be int token ids [batch, length], got "
                         f"{tokens.dtype} {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError(f"calibration token ids must be in 0..{cfg.vocab_size - 1}")
    if vocab_ids is not None:
        vocab_ids = np.asarray(vocab_ids)
        check_ids(vocab_ids, vocab_ids.size, cfg.vocab_size)
        vocab_ids = jnp.asarray(vocab_ids, jnp.int32)
    return jnp.asarray(tokens, jnp.int32), vocab_ids


def _layer_mask(cfg: ModelConfig, layers: Sequence[int]) -> jax.Array:
    """[L] bool of `layers`, which must be distinct ascending layers of `cfg`."""
    layers = tuple(int(i) for i in layers)
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or \
            layers[-1] >= cfg.num_layers:
        raise ValueError(f"layers must be distinct ascending indices in "
                         f"0..{cfg.num_layers - 1}, got {layers}")
    return jnp.zeros(cfg.num_layers, bool).at[jnp.asarray(layers)].set(True)


def self_draft_agreement(params, cfg: ModelConfig, tokens, layers: Sequence[int],
                         vocab_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """[B, T] bool: whether, after tokens [B, :t + 1] of real text, the draft of the
    target's `layers` (with the LM head's rows `vocab_ids`, or all of it) proposes the
    target's greedy next token, drafting over the target's cache of the text as
    `SelfDraft` does. Its mean is the draft's greedy acceptance rate at depth 1."""
    tokens, vocab_ids = _checked(cfg, tokens, vocab_ids)
    mask = _layer_mask(cfg, layers)
    cache, target_next = _target_pass(params, tokens, cfg=cfg)
    return np.asarray(_agreement(params, tokens, cache, target_next, vocab_ids, mask, cfg=cfg))


def skip_layers(params, cfg: ModelConfig, tokens, num_skip: int,
                vocab_ids: Optional[np.ndarray] = None) -> Tuple[int, ...]:
    """The layers a `SelfDraft` keeps when it skips `num_skip` of the target's
    (training-free layer skipping, as Draft & Verify and SWIFT search for): dropped
    one at a time, each time the layer whose loss keeps the draft's agreement with
    the target on the real text `tokens` [B, T] highest (`self_draft_agreement`)."""
    if not 0 <= num_skip < cfg.num_layers:
        raise ValueError(f"num_skip must be in 0..{cfg.num_layers - 1}, got {num_skip}")
    tokens, vocab_ids = _checked(cfg, tokens, vocab_ids)
    cache, target_next = _target_pass(params, tokens, cfg=cfg)
    agreement = lambda layers: float(jnp.mean(_agreement(
        params, tokens, cache, target_next, vocab_ids, _layer_mask(cfg, layers), cfg=cfg)))
    kept = list(range(cfg.num_layers))
    with tqdm(range(num_skip), desc="layer skipping search", unit="layer") as bar:
        for _ in bar:
            scores = {layer: agreement([k for k in kept if k != layer]) for layer in kept}
            dropped = max(kept, key=lambda layer: scores[layer])  # ties: the lowest
            kept.remove(dropped)
            bar.set_postfix(dropped=dropped, agreement=f"{scores[dropped]:.3f}")
    return tuple(kept)
