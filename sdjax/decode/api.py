"""`generate`: prompt in, tokens out; the user-facing side of the decode loop."""

from __future__ import annotations

import time
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sdjax import sharding
from sdjax.config import SpecConfig
from sdjax.decode.compiled import compiled_decode
from sdjax.decode.loop import ERRORS, DecodeResult, drafter_of
from sdjax.decode.prompts import Prompt, prepare_prompts
from sdjax.models.transformer import check_params


class GenerateOutput(NamedTuple):
    """What `generate` returns (host arrays)."""
    tokens: np.ndarray  # [B, max_new_tokens] int32; pad_token_id after each row's end
    num_tokens: np.ndarray  # [B] new tokens per row (an EOS that ended a row counts)
    text: Optional[list]  # decoded new tokens per row, when a tokenizer was given
    stats: Dict[str, Any]


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


def prng_key(key, seed: int) -> jax.Array:
    """`key` (new-style `jax.random.key` or raw `jax.random.PRNGKey`), or the seed's."""
    if key is None:
        return jax.random.key(seed)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random.key or PRNGKey, got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape:
            raise ValueError(f"key must be a single key, got a batch of shape {key.shape}")
        return key
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"a raw key must be uint32[2] (jax.random.PRNGKey), got "
                         f"{key.dtype}{list(key.shape)}")
    return jax.random.wrap_key_data(key)


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
    `key` (either key style) overrides `cfg.seed`. With `mesh`, parameters (the
    target's and the draft's) are sharded by the logical-axis rules of
    `sdjax.sharding`, the batch over its `data` axis, caches and drafter state over
    both; the mesh may span processes (`jax.distributed`).
    """
    check_params(params, cfg.model)
    drafter_of(cfg).check(cfg, draft_params)
    multiple = mesh.shape[sharding.DATA] if mesh is not None else 1
    tokens, lengths, real_batch = prepare_prompts(prompt, cfg, tokenizer, multiple)
    key = prng_key(key, cfg.seed)
    if mesh is None:
        args = (params, draft_params, jnp.asarray(tokens), jnp.asarray(lengths), key)
    else:
        args = (sharding.shard_params(params, mesh),
                None if draft_params is None else sharding.shard_params(draft_params, mesh),
                sharding.shard_batch(tokens, mesh), sharding.shard_batch(lengths, mesh),
                sharding.put(key, sharding.replicated(mesh)))
    executable, compile_seconds = compiled_decode(cfg, mesh, args)
    start = time.perf_counter()
    result = jax.block_until_ready(executable(*args))
    stats = {"compile_seconds": compile_seconds,
             "decode_seconds": time.perf_counter() - start,
             "memory_bytes": _memory_bytes(executable)}
    return _output(result, real_batch, tokenizer, stats)


def generate_pmapped(params, prompt: Prompt, cfg: SpecConfig, *, draft_params=None,
                     tokenizer=None, key: Optional[jax.Array] = None,
                     devices=None) -> GenerateOutput:
    """Data-parallel `generate`, the `pmap`-style entry: the prompts split evenly over
    `devices` (all local devices by default), each holding a full copy of the params.
    Underneath it is `generate` on a mesh with one `data` axis, so it returns the same
    tokens as `generate` with the same key."""
    devices = list(devices or jax.local_devices())
    mesh = sharding.make_mesh(data=len(devices), model=1, devices=devices)
    return generate(params, prompt, cfg, draft_params=draft_params, tokenizer=tokenizer,
                    key=key, mesh=mesh)
