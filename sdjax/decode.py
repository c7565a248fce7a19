"""`generate`: prompt in, tokens out, the whole decode inside one jitted `lax.while_loop`.

Prompts are right-padded to a power-of-two bucket (at least `cfg.min_prompt_bucket`)
so that a new prompt length inside a bucket reuses the compiled loop. Each batch
row stops on its own (EOS or `max_new_tokens`); finished rows keep their cache
untouched while the others go on. Executables are compiled ahead of time and kept
per (config, batch, bucket, mesh), which also lets `generate` report compile time
apart from decode time.
"""

from __future__ import annotations

import collections
import functools
import time
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import SpecConfig
from sdjax.drafters import Autoregressive
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer
from sdjax.sampling import sample_tokens
from sdjax.trees import TreeShape, static_topology
from sdjax.verify import RejectionSampling, VerifyResult

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]


class GenerateOutput(NamedTuple):
    tokens: np.ndarray  # [B, max_new_tokens] int32; pad_token_id after each row's end
    num_tokens: np.ndarray  # [B] new tokens per row (an EOS that ended a row counts)
    text: Optional[list]  # decoded new tokens per row, when a tokenizer was given
    stats: Dict[str, Any]


@flax.struct.dataclass
class DecodeState:
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


def _faults(tokens: jax.Array, logits: jax.Array, vocab: int) -> jax.Array:
    bad_ids = jnp.any((tokens < 0) | (tokens >= vocab), axis=1)
    bad_logits = ~jnp.all(jnp.isfinite(logits), axis=(1, 2))
    return bad_ids.astype(jnp.int32) | (2 * bad_logits.astype(jnp.int32))


class DecodeResult(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens]
    num_tokens: jax.Array  # [B]
    accepted: jax.Array  # [B, D + 1]
    first_rank: jax.Array  # [B, K + 1]
    error: jax.Array  # [B]


def bucket_length(length: int, min_bucket: int) -> int:
    """Smallest power of two >= length, and at least min_bucket."""
    return max(min_bucket, 1 << max(0, int(length) - 1).bit_length())


def _is_eos(tokens: jax.Array, cfg: SpecConfig) -> jax.Array:
    if not cfg.eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(cfg.eos_ids, jnp.int32))


def drafter_of(cfg: SpecConfig):
    return Autoregressive() if cfg.drafter is None else cfg.drafter


def sequence_length(bucket: int, cfg: SpecConfig) -> int:
    """Slots for prompt, new tokens, and one tree pending beyond them."""
    return bucket + cfg.max_new_tokens + drafter_of(cfg).shape.num_nodes + 1


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


def bind_target(drafter, draft_params, target_params):
    """The draft params a drafter runs on: its own, plus the target weights it shares
    (EAGLE reads the target's embedding and LM head), joined inside the jit."""
    bind = getattr(drafter, "bind", None)
    return draft_params if bind is None else bind(draft_params, target_params)


def decode_loop(params, draft_params, prompt_tokens, prompt_lengths, key, *,
                cfg: SpecConfig, mesh: Optional[Mesh] = None) -> DecodeResult:
    """The jittable decode: prefill, then draft -> tree forward -> verify -> commit
    until every row is done. Autoregressive decoding is the drafter of zero tokens."""
    batch, bucket = prompt_tokens.shape
    drafter = drafter_of(cfg)
    verifier = cfg.verifier or RejectionSampling()
    shape = drafter.shape
    model = Transformer(cfg.model)
    draft_params = bind_target(drafter, draft_params, params)
    feature_layers = getattr(drafter, "feature_layers", ())
    max_len = sequence_length(bucket, cfg)
    cache = KVCache.init(cfg.model, batch, max_len)
    if mesh is not None:
        cache = sharding.constrain_cache(cache, mesh)

    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
    out = model.apply(params, prompt_tokens, positions, cache, hidden_layers=feature_layers)
    key, first_key = jax.random.split(key)
    first = sample_tokens(out.logits[jnp.arange(batch), prompt_lengths - 1], first_key, cfg)
    sequence = jnp.zeros((batch, max_len), jnp.int32).at[:, :bucket].set(prompt_tokens)
    state = DecodeState(
        sequence=sequence,
        seq_len=prompt_lengths,
        prompt_len=prompt_lengths,
        done=jnp.zeros((batch,), bool),
        cache=out.cache.commit(prompt_lengths),
        draft_state=drafter.init(draft_params, prompt_tokens, prompt_lengths, max_len,
                                  out.features()),
        key=key,
        accepted=jnp.zeros((batch, shape.max_depth + 1), jnp.int32),
        first_rank=jnp.zeros((batch, shape.width + 1), jnp.int32),
        error=_faults(first[:, None], out.logits, cfg.model.vocab_size),
    )
    state = _append(state.replace(done=state.error > 0), first[:, None],
                    jnp.ones((batch,), jnp.int32), cfg)
    static = static_topology(shape, batch) if isinstance(shape, TreeShape) else None
    width = shape.width

    def cycle(state: DecodeState) -> DecodeState:
        active = ~state.done
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        tree, draft_state = drafter.propose(
            draft_params, state.draft_state, state.sequence, state.seq_len, draft_key, cfg)
        topo = static if tree.topology is None else tree.topology
        out = model.apply(params, tree.tokens, state.cache.length[:, None] + topo.depth,
                          state.cache, topo.ancestor_mask, hidden_layers=feature_layers)
        error = state.error | jnp.where(active, _faults(tree.tokens, out.logits,
                                                        cfg.model.vocab_size), 0)
        state = state.replace(done=state.done | (error > 0), error=error)
        result = verifier(out.logits, tree.tokens, tree.probs, topo, verify_key, cfg)
        if tree.limit is not None:
            result = _truncate(result, tree.tokens, tree.limit)
        num = result.num_accepted
        drafted = jnp.take_along_axis(tree.tokens, result.path[:, 1:], axis=1)
        new = jnp.concatenate([drafted, result.next_token[:, None]], axis=1)
        new = jnp.where(jnp.arange(new.shape[1])[None] == num[:, None],
                        result.next_token[:, None], new)
        cache = out.cache.commit(jnp.where(active, num + 1, 0),
                                 None if topo.is_chain else result.path)
        state = _append(state, new, num + 1, cfg)
        first_node = result.path[:, min(1, shape.max_depth)]  # the root's accepted child
        first_rank = jnp.where(
            num > 0, jnp.take_along_axis(topo.rank, first_node[:, None], 1)[:, 0], width)
        return state.replace(
            cache=cache,
            draft_state=drafter.commit(draft_state, result, cache.length, out.features()),
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


# ------------------------------------------------------------------- host-side API


def _encode(prompt: Prompt, tokenizer) -> list:
    """Prompt(s) as a list of token-id lists."""
    if isinstance(prompt, str) or (
        isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)
    ):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer (pass tokenizer=...)")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        return [tokenizer(t)["input_ids"] for t in texts]
    array = np.asarray(prompt) if isinstance(prompt, (np.ndarray, jax.Array)) else None
    if array is not None:
        if array.ndim not in (1, 2):
            raise ValueError(f"prompt ids must have rank 1 or 2, got shape {array.shape}")
        return [list(r) for r in np.atleast_2d(array)]
    prompt = list(prompt)
    if prompt and np.ndim(prompt[0]) == 0:
        return [prompt]
    return [list(r) for r in prompt]


def prepare_prompts(prompt: Prompt, cfg: SpecConfig, tokenizer=None, batch_multiple: int = 1):
    """Validated, right-padded prompt ids [B', bucket] and lengths [B'].

    B' is the batch rounded up to `batch_multiple` with one-token dummy rows, so that
    it divides over devices; the caller drops them again.
    """
    rows = _encode(prompt, tokenizer)
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    vocab = cfg.model.vocab_size
    for i, row in enumerate(rows):
        bad = [t for t in row if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")
    longest = max(len(r) for r in rows)
    if longest + cfg.max_new_tokens > cfg.seq_limit:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} exceeds the "
            f"model's {cfg.seq_limit} positions; shorten the prompt or the generation"
        )
    bucket = bucket_length(longest, cfg.min_prompt_bucket)
    padded_batch = -(-len(rows) // batch_multiple) * batch_multiple
    tokens = np.full((padded_batch, bucket), cfg.pad_token_id, np.int32)
    lengths = np.ones((padded_batch,), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths, len(rows)


# Compiled decodes by (config, batch, bucket, mesh), least recently used first. The
# bound matters: every XLA:CPU executable holds hundreds of memory mappings, and a
# process that keeps thousands alive hits the kernel's map limit and crashes.
MAX_COMPILED = 32
_COMPILED: "collections.OrderedDict[Tuple, Any]" = collections.OrderedDict()
_compilations = 0


def compiled_decode(cfg: SpecConfig, batch: int, bucket: int, mesh: Optional[Mesh], args):
    """The AOT-compiled decode for these static shapes: (executable, compile seconds)."""
    global _compilations
    cache_key = (cfg, batch, bucket, mesh)
    if cache_key in _COMPILED:
        _COMPILED.move_to_end(cache_key)
        return _COMPILED[cache_key], 0.0
    start = time.perf_counter()
    fn = jax.jit(functools.partial(decode_loop, cfg=cfg, mesh=mesh))
    executable = fn.lower(*args).compile()
    _compilations += 1
    _COMPILED[cache_key] = executable
    if len(_COMPILED) > MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return executable, time.perf_counter() - start


def compile_count() -> int:
    """How many decode executables have been compiled in this process."""
    return _compilations


def clear_compiled() -> None:
    """Drops every kept executable (and JAX's own caches)."""
    _COMPILED.clear()
    _pmapped_decode.cache_clear()
    jax.clear_caches()


def _check_drafter(cfg: SpecConfig, draft_params) -> None:
    check = getattr(cfg.drafter, "check", None)  # drafters with models of their own
    if check is not None:
        check(cfg, draft_params)


def _raise_faults(error: np.ndarray) -> None:
    for bit, (kind, message) in ERRORS.items():
        rows = np.flatnonzero(error & bit)
        if rows.size:
            raise kind(f"{message} (batch rows {rows.tolist()})")


def acceptance_summary(accepted_hist: np.ndarray):
    """(tau, acceptance_by_depth) from a histogram [..., D + 1] of accepted drafts.

    tau: mean tokens per cycle (accepted drafts + 1) over all rows and cycles;
    acceptance_by_depth[d]: the fraction of cycles that accepted at least d + 1 drafts.
    """
    per_depth = np.asarray(accepted_hist).reshape(-1, np.shape(accepted_hist)[-1]).sum(0)
    total_cycles = max(int(per_depth.sum()), 1)
    tau = float((per_depth * np.arange(1, len(per_depth) + 1)).sum() / total_cycles)
    return tau, per_depth[::-1].cumsum()[::-1][1:] / total_cycles


def _memory_bytes(executable) -> int:
    """XLA's own account of the decode's peak footprint: arguments + outputs + temps."""
    stats = executable.memory_analysis()
    if stats is None:
        return 0
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _output(result: DecodeResult, real_batch: int, tokenizer, stats: dict) -> GenerateOutput:
    _raise_faults(np.asarray(result.error)[:real_batch])
    tokens = np.asarray(result.tokens)[:real_batch]
    num_tokens = np.asarray(result.num_tokens)[:real_batch]
    accepted = np.asarray(result.accepted)[:real_batch]
    text = None
    if tokenizer is not None:
        text = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                for row, n in zip(tokens, num_tokens)]
    cycles = accepted.sum(axis=1)  # draft-verify cycles each row took part in
    stats = dict(stats, cycles=cycles, target_calls=cycles + 1, accepted_hist=accepted,
                 first_rank_hist=np.asarray(result.first_rank)[:real_batch],
                 new_tokens=int(num_tokens.sum()))
    stats["tau"], stats["acceptance_by_depth"] = acceptance_summary(accepted)
    stats["tokens_per_second"] = stats["new_tokens"] / max(stats["decode_seconds"], 1e-9)
    return GenerateOutput(tokens, num_tokens, text, stats)


def generate(
    params,
    prompt: Prompt,
    cfg: SpecConfig,
    *,
    draft_params=None,
    tokenizer=None,
    key: Optional[jax.Array] = None,
    mesh: Optional[Mesh] = None,
) -> GenerateOutput:
    """Generates up to `cfg.max_new_tokens` tokens for each prompt.

    prompt: text (needs `tokenizer`), a list of texts, token ids, or a list of id lists
    (ragged is fine). `draft_params` are the draft model's, for drafters that have one.
    With `mesh`, parameters are sharded by the logical-axis rules of `sdjax.sharding`,
    the batch over its `data` axis, and the cache over both.
    """
    _check_drafter(cfg, draft_params)
    multiple = mesh.shape[sharding.DATA] if mesh is not None else 1
    tokens, lengths, real_batch = prepare_prompts(prompt, cfg, tokenizer, multiple)
    chex.assert_rank(tokens, 2)
    key = jax.random.PRNGKey(cfg.seed) if key is None else key
    args = (params, draft_params, jnp.asarray(tokens), jnp.asarray(lengths), key)
    if mesh is not None:
        args = (sharding.shard_params(params, mesh), draft_params,
                *(sharding.shard_batch(a, mesh) for a in args[2:4]), key)
    executable, compile_seconds = compiled_decode(cfg, *tokens.shape, mesh, args)
    start = time.perf_counter()
    result = jax.block_until_ready(executable(*args))
    stats = {"compile_seconds": compile_seconds,
             "decode_seconds": time.perf_counter() - start,
             "memory_bytes": _memory_bytes(executable)}
    return _output(result, real_batch, tokenizer, stats)


@functools.lru_cache(maxsize=8)
def _pmapped_decode(cfg: SpecConfig, devices: Tuple):
    return jax.pmap(functools.partial(decode_loop, cfg=cfg),
                    in_axes=(None, None, 0, 0, 0), devices=list(devices))


def generate_pmapped(params, prompt: Prompt, cfg: SpecConfig, *, draft_params=None,
                     tokenizer=None, key: Optional[jax.Array] = None,
                     devices=None) -> GenerateOutput:
    """Data-parallel `generate`: the prompts are split evenly over `devices` (all local
    devices by default), each shard decoded by a replica with its own copy of params."""
    _check_drafter(cfg, draft_params)
    devices = tuple(devices or jax.local_devices())
    n = len(devices)
    tokens, lengths, real_batch = prepare_prompts(prompt, cfg, tokenizer, n)
    key = jax.random.PRNGKey(cfg.seed) if key is None else key
    start = time.perf_counter()
    result = jax.block_until_ready(_pmapped_decode(cfg, devices)(
        params, draft_params, tokens.reshape(n, -1, tokens.shape[1]), lengths.reshape(n, -1),
        jax.random.split(key, n)))
    elapsed = time.perf_counter() - start
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), result)
    return _output(flat, real_batch, tokenizer,
                   {"compile_seconds": float("nan"), "decode_seconds": elapsed})
