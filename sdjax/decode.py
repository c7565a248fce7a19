"""`generate`: prompt in, tokens out, the whole decode inside one jitted `lax.while_loop`.

Prompts are right-padded to a power-of-two bucket (at least `cfg.min_prompt_bucket`)
so that a new prompt length inside a bucket reuses the compiled loop. Each batch
row stops on its own (EOS or `max_new_tokens`); finished rows keep their cache
untouched while the others go on. Executables are compiled ahead of time and kept
per (config, batch, bucket, mesh), which also lets `generate` report compile time
apart from decode time.
"""

from __future__ import annotations

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
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer
from sdjax.sampling import sample_tokens

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]


class GenerateOutput(NamedTuple):
    tokens: np.ndarray  # [B, max_new_tokens] int32; pad_token_id after each row's end
    num_tokens: np.ndarray  # [B] new tokens per row (an EOS that ended a row counts)
    text: Optional[list]  # decoded new tokens per row, when a tokenizer was given
    stats: Dict[str, Any]


@flax.struct.dataclass
class DecodeState:
    tokens: jax.Array  # [B, max_new_tokens]
    num_tokens: jax.Array  # [B]
    done: jax.Array  # [B] bool
    cache: KVCache
    key: jax.Array
    target_calls: jax.Array  # [B] target forwards that produced this row's tokens


def bucket_length(length: int, min_bucket: int) -> int:
    """Smallest power of two >= length, and at least min_bucket."""
    return max(min_bucket, 1 << max(0, int(length) - 1).bit_length())


def _is_eos(tokens: jax.Array, cfg: SpecConfig) -> jax.Array:
    if not cfg.eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(cfg.eos_ids, jnp.int32))


def decode_loop(params, prompt_tokens, prompt_lengths, key, *, cfg: SpecConfig,
                mesh: Optional[Mesh] = None) -> DecodeState:
    """The jittable decode: prefill the right-padded prompts, then one token per cycle."""
    batch, bucket = prompt_tokens.shape
    model = Transformer(cfg.model)
    rows = jnp.arange(batch)
    cache = KVCache.init(cfg.model, batch, bucket + cfg.max_new_tokens)
    if mesh is not None:
        cache = sharding.constrain_cache(cache, mesh)

    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
    out = model.apply(params, prompt_tokens, positions, cache)
    key, subkey = jax.random.split(key)
    first = sample_tokens(out.logits[rows, prompt_lengths - 1], subkey, cfg)
    tokens = jnp.full((batch, cfg.max_new_tokens), cfg.pad_token_id, jnp.int32)
    state = DecodeState(
        tokens=tokens.at[:, 0].set(first),
        num_tokens=jnp.ones((batch,), jnp.int32),
        done=_is_eos(first, cfg) | (cfg.max_new_tokens == 1),
        cache=out.cache.commit(prompt_lengths),
        key=key,
        target_calls=jnp.ones((batch,), jnp.int32),
    )

    def cycle(state: DecodeState) -> DecodeState:
        active = ~state.done
        last = state.tokens[rows, state.num_tokens - 1]
        out = model.apply(params, last[:, None], state.cache.length[:, None], state.cache)
        key, subkey = jax.random.split(state.key)
        new = sample_tokens(out.logits[:, 0], subkey, cfg)
        slot = jnp.minimum(state.num_tokens, cfg.max_new_tokens - 1)
        tokens = state.tokens.at[rows, slot].set(
            jnp.where(active, new, state.tokens[rows, slot]))
        num_tokens = state.num_tokens + active
        done = state.done | _is_eos(new, cfg) | (num_tokens >= cfg.max_new_tokens)
        return DecodeState(
            tokens=tokens,
            num_tokens=num_tokens,
            done=done,
            cache=out.cache.commit(active.astype(jnp.int32)),
            key=key,
            target_calls=state.target_calls + active,
        )

    return jax.lax.while_loop(lambda s: ~jnp.all(s.done), cycle, state)


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


_COMPILED: Dict[Tuple, Any] = {}


def compiled_decode(cfg: SpecConfig, batch: int, bucket: int, mesh: Optional[Mesh], args):
    """The AOT-compiled decode for these static shapes: (executable, compile seconds)."""
    cache_key = (cfg, batch, bucket, mesh)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    start = time.perf_counter()
    fn = jax.jit(functools.partial(decode_loop, cfg=cfg, mesh=mesh))
    executable = fn.lower(*args).compile()
    _COMPILED[cache_key] = executable
    return executable, time.perf_counter() - start


def compile_count() -> int:
    """How many decode executables have been compiled in this process."""
    return len(_COMPILED)


def _output(state: DecodeState, real_batch: int, tokenizer, stats: dict) -> GenerateOutput:
    tokens = np.asarray(state.tokens)[:real_batch]
    num_tokens = np.asarray(state.num_tokens)[:real_batch]
    text = None
    if tokenizer is not None:
        text = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                for row, n in zip(tokens, num_tokens)]
    stats = dict(stats, target_calls=np.asarray(state.target_calls)[:real_batch],
                 new_tokens=int(num_tokens.sum()))
    stats["tokens_per_second"] = stats["new_tokens"] / max(stats["decode_seconds"], 1e-9)
    return GenerateOutput(tokens, num_tokens, text, stats)


def generate(
    params,
    prompt: Prompt,
    cfg: SpecConfig,
    *,
    tokenizer=None,
    key: Optional[jax.Array] = None,
    mesh: Optional[Mesh] = None,
) -> GenerateOutput:
    """Generates up to `cfg.max_new_tokens` tokens for each prompt.

    prompt: text (needs `tokenizer`), a list of texts, token ids, or a list of id lists
    (ragged is fine). With `mesh`, parameters are sharded by the logical-axis rules of
    `sdjax.sharding`, the batch over its `data` axis, and the cache over both.
    """
    multiple = mesh.shape[sharding.DATA] if mesh is not None else 1
    tokens, lengths, real_batch = prepare_prompts(prompt, cfg, tokenizer, multiple)
    chex.assert_rank(tokens, 2)
    key = jax.random.PRNGKey(cfg.seed) if key is None else key
    args = (params, jnp.asarray(tokens), jnp.asarray(lengths), key)
    if mesh is not None:
        args = (sharding.shard_params(params, mesh),
                *(sharding.shard_batch(a, mesh) for a in args[1:3]), key)
    executable, compile_seconds = compiled_decode(cfg, *tokens.shape, mesh, args)
    start = time.perf_counter()
    state = jax.block_until_ready(executable(*args))
    stats = {"compile_seconds": compile_seconds,
             "decode_seconds": time.perf_counter() - start}
    return _output(state, real_batch, tokenizer, stats)


@functools.lru_cache(maxsize=None)
def _pmapped_decode(cfg: SpecConfig, devices: Tuple):
    return jax.pmap(functools.partial(decode_loop, cfg=cfg),
                    in_axes=(None, 0, 0, 0), devices=list(devices))


def generate_pmapped(params, prompt: Prompt, cfg: SpecConfig, *, tokenizer=None,
                     key: Optional[jax.Array] = None, devices=None) -> GenerateOutput:
    """Data-parallel `generate`: the prompts are split evenly over `devices` (all local
    devices by default), each shard decoded by a replica with its own copy of params."""
    devices = tuple(devices or jax.local_devices())
    n = len(devices)
    tokens, lengths, real_batch = prepare_prompts(prompt, cfg, tokenizer, n)
    key = jax.random.PRNGKey(cfg.seed) if key is None else key
    start = time.perf_counter()
    state = jax.block_until_ready(_pmapped_decode(cfg, devices)(
        params, tokens.reshape(n, -1, tokens.shape[1]), lengths.reshape(n, -1),
        jax.random.split(key, n)))
    elapsed = time.perf_counter() - start
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]) if x.ndim > 1 else x, state)
    return _output(flat, real_batch, tokenizer,
                   {"compile_seconds": float("nan"), "decode_seconds": elapsed})
