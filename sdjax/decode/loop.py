"""The jitted decode: prefill, then draft -> tree forward -> verify -> commit in one
`lax.while_loop` until every row is done.

Each batch row stops on its own (EOS or `max_new_tokens`); finished rows keep their
cache untouched while the others go on. Faults found inside the loop (token ids out
of range, non-finite logits) stop the row and are raised by `generate`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import SpecConfig
from sdjax.decode.prompts import prefill
from sdjax.drafters import Autoregressive
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer
from sdjax.protocols import Drafter, DraftTree, VerifyResult
from sdjax.sampling import sample_tokens
from sdjax.trees import Topology, TreeShape, static_topology
from sdjax.verify import RejectionSampling


@flax.struct.dataclass
class DecodeState:
    """The while_loop's carry."""
    sequence: jax.Array  # [B, L] prompt + generated tokens of each row
    seq_len: jax.Array  # [B] tokens in sequence; the last is the next tree's root
    prompt_len: jax.Array  # [B]
    done: jax.Array  # [B] bool
    cache: KVCache  # target KV of sequence[:, :seq_len - 1]
    draft_state: Any
    key: jax.Array
    accepted: jax.Array  # [B, D + 1] accepted drafts per cycle (sums to the cycles)
    first_rank: jax.Array  # [B, K + 1] rank of the accepted first draft (K: none)
    error: jax.Array  # [B] int32 bit set of ERRORS that stopped the row


# Faults detected inside the jitted loop; a faulty row stops and generate raises.
ERRORS = {1: (ValueError, "the drafter proposed token ids outside the vocabulary"),
          2: (FloatingPointError, "the target produced non-finite logits (NaN or inf)")}


def faults(tokens: jax.Array, logits: jax.Array, vocab: int) -> jax.Array:
    """[B] ERRORS bits: drafted ids outside the vocabulary, non-finite logits."""
    bad_ids = jnp.any((tokens < 0) | (tokens >= vocab), axis=1)
    bad_logits = ~jnp.all(jnp.isfinite(logits), axis=(1, 2))
    return bad_ids.astype(jnp.int32) | (2 * bad_logits.astype(jnp.int32))


class DecodeResult(NamedTuple):
    """What the jitted decode returns (device arrays, padded batch)."""
    tokens: jax.Array  # [B, max_new_tokens]
    num_tokens: jax.Array  # [B]
    accepted: jax.Array  # [B, D + 1]
    first_rank: jax.Array  # [B, K + 1]
    error: jax.Array  # [B]


def _is_eos(tokens: jax.Array, cfg: SpecConfig) -> jax.Array:
    if not cfg.eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(cfg.eos_ids, jnp.int32))


def drafter_of(cfg: SpecConfig) -> Drafter:
    """The config's drafter; plain decoding is the drafter of zero tokens."""
    return Autoregressive() if cfg.drafter is None else cfg.drafter


def sequence_length(bucket: int, cfg: SpecConfig) -> int:
    """Slots for prompt, new tokens, and one tree (and its non-candidates) pending
    beyond them."""
    drafter = drafter_of(cfg)
    return bucket + cfg.max_new_tokens + drafter.shape.num_nodes + drafter.num_extra + 1


def _append(state: DecodeState, new: jax.Array, count: jax.Array, cfg: SpecConfig):
    """Appends the first count[b] of new[b] (clipped at EOS and max_new_tokens)."""
    steps = jnp.arange(new.shape[1])
    eos = _is_eos(new, cfg) & (steps[None] < count[:, None])
    count = jnp.where(eos.any(axis=1), jnp.argmax(eos, axis=1) + 1, count)
    room = cfg.max_new_tokens - (state.seq_len - state.prompt_len)
    count = jnp.where(state.done, 0, jnp.minimum(count, room))
    rows = jnp.arange(new.shape[0])[:, None]
    sequence = state.sequence.at[rows, state.seq_len[:, None] + steps].set(new)
    seq_len = state.seq_len + count
    done = state.done | eos.any(axis=1) | (seq_len - state.prompt_len >= cfg.max_new_tokens)
    return state.replace(sequence=sequence, seq_len=seq_len, done=done)


def _truncate(result: VerifyResult, tokens: jax.Array, limit: jax.Array) -> VerifyResult:
    """Keeps at most `limit` accepted drafts per row. Every emitted token (accepted or
    drawn) follows the target given the ones before it, so cutting the emitted run at
    a length fixed before the cycle stays lossless: the first dropped draft becomes
    the next token."""
    num = jnp.minimum(result.num_accepted, limit)
    after = jnp.minimum(num + 1, result.path.shape[1] - 1)[:, None]
    cut_token = jnp.take_along_axis(tokens, jnp.take_along_axis(result.path, after, 1), 1)[:, 0]
    return result.replace(
        num_accepted=num,
        next_token=jnp.where(result.num_accepted > limit, cut_token, result.next_token))


def verify_forward(model: Transformer, params, tree: DraftTree, topo: Topology,
                   cache: KVCache, feature_layers, num_extra: int = 0):
    """The target's forward over the tree's nodes and the `num_extra` non-candidates
    after them: (the cache with pending KV for all of them; the tree's logits
    [B, N, V] and features; the scored non-candidates' logits, over
    `tree.extra.head`'s rows if given, or None)."""
    tokens, offsets, mask = tree.forward_inputs(topo)
    positions = cache.length[:, None] + offsets
    nodes = tree.tokens.shape[1]
    if tokens.shape[1] != nodes + num_extra:  # more would write past the sequence's slots
        raise ValueError(f"the drafter declared num_extra={num_extra} non-candidates but "
                         f"proposed {tokens.shape[1] - nodes}")
    if tree.extra is None:
        out = model.apply(params, tokens, positions, cache, mask, hidden_layers=feature_layers)
        return out.cache, out.logits, out.features(), None
    out = model.apply(params, tokens, positions, cache, mask, hidden_layers=feature_layers,
                      logits_from=tokens.shape[1])
    logits = model.apply(params, out.hidden[:, :nodes], method=Transformer.lm_logits)
    extra_logits = model.apply(params, out.hidden[:, nodes + tree.extra.scored_from:],
                               tree.extra.head, method=Transformer.lm_logits)
    return out.cache, logits, out.features()[:, :nodes], extra_logits


def decode_loop(params, draft_params, prompt_tokens, prompt_lengths, key, *,
                cfg: SpecConfig, mesh: Optional[Mesh] = None) -> DecodeResult:
    """The jittable decode: prefill, then draft -> tree forward -> verify -> commit
    until every row is done. Autoregressive decoding is the drafter of zero tokens."""
    batch, bucket = prompt_tokens.shape
    drafter = drafter_of(cfg)
    verifier = cfg.verifier or RejectionSampling()
    shape = drafter.shape
    model = Transformer(cfg.model)
    draft_params = drafter.bind(draft_params, params)
    feature_layers = drafter.feature_layers
    max_len = sequence_length(bucket, cfg)
    constrain = (lambda tree: tree) if mesh is None else (
        lambda tree: sharding.constrain_batch_leading(tree, mesh))

    start = prefill(params, cfg.model, prompt_tokens, prompt_lengths, max_len, feature_layers,
                    mesh)
    key, first_key = jax.random.split(key)
    first = sample_tokens(start.last_logits, first_key, cfg)
    sequence = jnp.zeros((batch, max_len), jnp.int32).at[:, :bucket].set(prompt_tokens)
    state = DecodeState(
        sequence=sequence,
        seq_len=prompt_lengths,
        prompt_len=prompt_lengths,
        done=jnp.zeros((batch,), bool),
        cache=start.cache,
        draft_state=constrain(drafter.init(draft_params, prompt_tokens, prompt_lengths,
                                           max_len, start.features)),
        key=key,
        accepted=jnp.zeros((batch, shape.max_depth + 1), jnp.int32),
        first_rank=jnp.zeros((batch, shape.width + 1), jnp.int32),
        error=faults(first[:, None], start.last_logits[:, None], cfg.model.vocab_size),
    )
    state = _append(state.replace(done=state.error > 0), first[:, None],
                    jnp.ones((batch,), jnp.int32), cfg)
    static = static_topology(shape, batch) if isinstance(shape, TreeShape) else None
    width = shape.width

    def cycle(state: DecodeState) -> DecodeState:
        active = ~state.done
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        tree, draft_state, cache = drafter.run_propose(
            draft_params, state.draft_state, state.sequence, state.seq_len, draft_key, cfg,
            state.cache)
        topo = static if tree.topology is None else tree.topology
        cache, logits, features, extra_logits = verify_forward(
            model, params, tree, topo, cache, feature_layers, drafter.num_extra)
        fed = tree.tokens if tree.extra is None else jnp.concatenate(
            [tree.tokens, tree.extra.tokens], axis=1)
        error = state.error | jnp.where(active, faults(fed, logits, cfg.model.vocab_size), 0)
        state = state.replace(done=state.done | (error > 0), error=error)
        result = verifier(logits, tree.tokens, tree.probs, topo, verify_key, cfg)
        if tree.limit is not None:
            result = _truncate(result, tree.tokens, tree.limit)
        num = result.num_accepted
        drafted = jnp.take_along_axis(tree.tokens, result.path[:, 1:], axis=1)
        new = jnp.concatenate([drafted, result.next_token[:, None]], axis=1)
        new = jnp.where(jnp.arange(new.shape[1])[None] == num[:, None],
                        result.next_token[:, None], new)
        cache = cache.commit(jnp.where(active, num + 1, 0),
                             None if topo.is_chain else result.path)
        state = _append(state, new, num + 1, cfg)
        first_node = result.path[:, min(1, shape.max_depth)]  # the root's accepted child
        first_rank = jnp.where(
            num > 0, jnp.take_along_axis(topo.rank, first_node[:, None], 1)[:, 0], width)
        return state.replace(
            cache=cache,
            draft_state=constrain(drafter.run_commit(draft_state, result, cache.length,
                                                     features, extra_logits)),
            key=key,
            accepted=state.accepted + jax.nn.one_hot(num, shape.max_depth + 1,
                                                     dtype=jnp.int32) * active[:, None],
            first_rank=state.first_rank + jax.nn.one_hot(first_rank, width + 1,
                                                         dtype=jnp.int32) * active[:, None],
        )

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), cycle, state)
    num_tokens = state.seq_len - state.prompt_len
    steps = jnp.arange(cfg.max_new_tokens)
    tokens = jnp.take_along_axis(state.sequence, state.prompt_len[:, None] + steps, axis=1)
    tokens = jnp.where(steps[None] < num_tokens[:, None], tokens, cfg.pad_token_id)
    return DecodeResult(tokens, num_tokens, state.accepted, state.first_rank,
                        state.error)
