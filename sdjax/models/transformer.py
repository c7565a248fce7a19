"""The decoder-only transformer that every sdjax method drives (Flax linen).

One forward serves plain decoding, speculative tree verification and the draft
heads: it takes new tokens [B, T] with explicit positions [B, T], a KV cache, and
optionally a tree mask [B, T, T] among the new tokens (node i sees node j iff j is
i's ancestor or i itself); it returns float32 logits, the final hidden state, any
requested intermediate hidden states, and the cache with the new tokens written
as pending entries (see `KVCache`).
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig
from sdjax.models.cache import KVCache
from sdjax.models.rope import apply_rope, inverse_frequencies

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
_INIT = nn.initializers.normal(0.02)


class ModelOutput(NamedTuple):
    """What a forward returns."""
    logits: jax.Array  # [B, T, V] float32
    hidden: jax.Array  # [B, T, D] final hidden state (after the final norm)
    intermediates: Tuple[jax.Array, ...]  # hidden states of the requested layers
    cache: KVCache

    def features(self) -> jax.Array:
        """What drafters draft from: the final hidden states [B, T, D], or the requested
        intermediate layers side by side [B, T, D * layers] (EAGLE-3)."""
        return jnp.concatenate(self.intermediates, axis=-1) if self.intermediates else \
            self.hidden


def attention_mask(
    cache: KVCache,
    positions: jax.Array,
    tree_mask: Optional[jax.Array],
    sliding_window: Optional[int],
    pending_positions: Optional[jax.Array] = None,
) -> jax.Array:
    """[B, T, S] bool: which cache slots each new token attends to.

    Committed slots are all visible. The M slots after them are the pending region
    (M = T unless tree_mask says otherwise): pending slot length+j is visible to new
    token i when tree_mask[b, i, j], in causal order if no tree mask is given. With a
    sliding window, keys more than `sliding_window - 1` positions back are hidden;
    pending_positions [B, M] give the pending slots' positions (default: positions).
    """
    batch, num_new = positions.shape
    num_pending = num_new if tree_mask is None else tree_mask.shape[-1]
    slots = jnp.arange(cache.max_len, dtype=jnp.int32)
    rel = slots[None, :] - cache.length[:, None]  # [B, S]: index in the pending region
    committed = rel < 0
    is_pending = (rel >= 0) & (rel < num_pending)
    rel_pending = jnp.clip(rel, 0, num_pending - 1)
    if tree_mask is None:
        visible = rel_pending[:, None, :] <= jnp.arange(num_new)[None, :, None]
    else:
        tree_mask = jnp.broadcast_to(tree_mask, (batch, num_new, num_pending))
        index = jnp.broadcast_to(rel_pending[:, None, :], (batch, num_new, cache.max_len))
        visible = jnp.take_along_axis(tree_mask, index, axis=2)
    mask = committed[:, None, :] | (is_pending[:, None, :] & visible)
    if sliding_window is not None:
        pending_positions = positions if pending_positions is None else pending_positions
        new_pos = jnp.take_along_axis(pending_positions, rel_pending, axis=1)
        key_pos = jnp.where(committed, slots[None, :], new_pos)
        mask &= positions[:, :, None] - key_pos[:, None, :] < sliding_window
    return mask


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled as `transformers` does: by w in
    the compute dtype (Llama), or by (offset + w) in float32 when there is an offset
    (Gemma, whose checkpoints store w - 1)."""

    eps: float
    dtype: str
    param_dtype: str
    offset: float = 0.0

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.constant(1.0 - self.offset)  # a scale of one
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def norm_layer(cfg: ModelConfig, name: str) -> nn.Module:
    """The family's norm (RMSNorm, with Gemma's offset, or LayerNorm) named `name`."""
    if cfg.norm == "layer":
        return nn.LayerNorm(
            epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name
        )
    return RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, cfg.norm_offset, name=name)


def softcap(x: jax.Array, cap: Optional[float]) -> jax.Array:
    """cap * tanh(x / cap): Gemma 2's soft limit on attention scores and logits."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` as every matmul of the model runs it (`lhs` [..., rows, K]).

    On CPU with a low-precision `lhs` it accumulates in float32 (as PyTorch does) and
    computes a single-row product as two rows: XLA:CPU's bfloat16 dot takes a path
    about 10x slower for one row (Gemma 3's 262k x 640 LM head: ~230 ms for one token
    against ~19 ms for two), which is every step of batch-1 decoding. Other backends
    and float32 run `lax.dot_general` unchanged.
    """
    if lhs.dtype == jnp.float32 or jax.default_backend() != "cpu":
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                   preferred_element_type=preferred_element_type)
    single_row = lhs.ndim >= 2 and math.prod(lhs.shape[:-1]) == 1
    if single_row:
        lhs = jnp.concatenate([lhs, lhs], axis=-2)
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                              preferred_element_type=jnp.float32)
    if single_row:
        out = out[..., :1, :]
    return out.astype(preferred_element_type or lhs.dtype)


# A float32 product of a few rows with a large LM head [V, D] on CPU runs as batched
# [HEAD_CHUNK, D] x [D, rows] products over chunks of the head's rows (`head_dot`).
HEAD_CHUNK = 16384
HEAD_CHUNK_MAX_ROWS = 64


def head_dot(hidden: jax.Array, head: jax.Array) -> jax.Array:
    """hidden [..., D] x head [V, D] (rows: tokens) -> [..., V], as `dot_general`.

    XLA:CPU multiplies a few float32 rows by a large [V, D] head far more slowly than
    one row, and a speculative verify pays that every cycle: Gemma 3 270M's forward of
    8 new tokens cost 120 ms against 49 ms for one (AMD EPYC, AVX2, 2026-12-07). As
    batched [c, D] x [D, rows] products over chunks of c head rows it costs 90 ms
    (EAGLE-3 decodes 1.12x faster). Single rows (autoregressive steps), long row counts
    (training), small heads, other dtypes and backends run `dot_general` unchanged.
    """
    rows, vocab = math.prod(hidden.shape[:-1]), head.shape[0]
    if (jax.default_backend() != "cpu" or hidden.dtype != jnp.float32
            or head.dtype != jnp.float32 or not 2 <= rows <= HEAD_CHUNK_MAX_ROWS
            or vocab % HEAD_CHUNK or vocab < 2 * HEAD_CHUNK):
        return dot_general(hidden, head, (((hidden.ndim - 1,), (1,)), ((), ())))
    chunks = vocab // HEAD_CHUNK
    flat = jnp.broadcast_to(hidden.reshape(1, rows, -1), (chunks, rows, hidden.shape[-1]))
    out = jax.lax.dot_general(head.reshape(chunks, HEAD_CHUNK, -1), flat,
                              (((2,), (2,)), ((0,), (0,))))  # [chunks, HEAD_CHUNK, rows]
    return out.transpose(2, 0, 1).reshape(*hidden.shape[:-1], vocab)


def embed_rows(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """Rows `tokens` [...] of an embedding table [V, D] -> [..., D] in the table's dtype
    (ids clipped into range).

    On CPU a 16-bit table is first tied to the tokens by an optimisation barrier: XLA:CPU
    gathers bfloat16 rows from a float32 conversion of the table, and a decode loop
    hoists that conversion out as a copy of the whole table per call (Gemma 3's 262k x
    640 embedding: 670 MB and ~280 ms every `generate`). Tied to the loop's tokens, the
    conversion stays fused into the gather and touches only the rows read.
    """
    if table.dtype.itemsize == 2 and jax.default_backend() == "cpu":
        table, tokens = jax.lax.optimization_barrier((table, tokens))
    return jnp.take(table, tokens, axis=0, mode="clip")


def _dense(cfg: ModelConfig, features: int, use_bias: bool, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_INIT,
        dot_general=dot_general,
        name=name,
    )


class Attention(nn.Module):
    """Grouped-query attention over the cache and the new tokens."""
    cfg: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, mask, cache: KVCache, write_offset: int):
        cfg = self.cfg
        batch, num_new, _ = x.shape
        q_size = cfg.num_heads * cfg.head_dim
        kv_size = cfg.num_kv_heads * cfg.head_dim
        if cfg.fused_qkv:
            qkv = _dense(cfg, q_size + 2 * kv_size, cfg.qkv_bias, "qkv_proj")(x)
            q, k, v = jnp.split(qkv, [q_size, q_size + kv_size], axis=-1)
        else:
            q = _dense(cfg, q_size, cfg.qkv_bias, "q_proj")(x)
            k = _dense(cfg, kv_size, cfg.qkv_bias, "k_proj")(x)
            v = _dense(cfg, kv_size, cfg.qkv_bias, "v_proj")(x)
        q = q.reshape(batch, num_new, cfg.num_heads, cfg.head_dim)
        k = k.reshape(batch, num_new, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(batch, num_new, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q = norm_layer(cfg, "q_norm")(q)
            k = norm_layer(cfg, "k_norm")(k)
        if cfg.position_embedding == "rope":
            inv_freq = inverse_frequencies(cfg, cfg.uses_sliding_window(self.layer))
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        cache = cache.write_pending(self.layer, k, v, write_offset)
        keys, values = cache.keys[self.layer], cache.values[self.layer]

        groups = cfg.num_heads // cfg.num_kv_heads
        q = q.reshape(batch, num_new, cfg.num_kv_heads, groups, cfg.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32)
        scores = softcap(scores * cfg.query_scale, cfg.attn_logit_softcap)
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values).reshape(batch, num_new, q_size)
        return _dense(cfg, cfg.hidden_size, cfg.out_bias, "o_proj")(out), cache


class MLP(nn.Module):
    """The feed-forward block (gated or not)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        act = _ACTIVATIONS[cfg.activation]
        up = _dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "up_proj")(x)
        if cfg.gated_mlp:
            up = act(_dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "gate_proj")(x)) * up
        else:
            up = act(up)
        return _dense(cfg, cfg.hidden_size, cfg.mlp_bias, "down_proj")(up)


class Block(nn.Module):
    """One decoder layer: norms, attention, MLP."""
    cfg: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, mask, cache, write_offset):
        cfg = self.cfg
        attn_out, cache = Attention(cfg, self.layer, name="attn")(
            norm_layer(cfg, "attn_norm")(x), positions, mask, cache, write_offset
        )
        if cfg.sandwich_norms:
            attn_out = norm_layer(cfg, "post_attn_norm")(attn_out)
        x = x + attn_out
        mlp_out = MLP(cfg, name="mlp")(norm_layer(cfg, "mlp_norm")(x))
        if cfg.sandwich_norms:
            mlp_out = norm_layer(cfg, "post_mlp_norm")(mlp_out)
        return x + mlp_out, cache


class Transformer(nn.Module):
    """A decoder-only language model of any supported family."""
    config: ModelConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, name: nn.Embed(
            n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=_INIT, name=name,
        )
        self.embed = embed(cfg.vocab_size, "embed")
        if cfg.position_embedding == "learned":
            self.pos_embed = embed(cfg.max_position_embeddings, "pos_embed")
        self.layers = [Block(cfg, i, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = norm_layer(cfg, "final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, False, "lm_head")

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        tree_mask: Optional[jax.Array] = None,
        hidden_layers: Sequence[int] = (),
        run_layers: Optional[Sequence[int]] = None,
        write_offset: int = 0,
        pending_positions: Optional[jax.Array] = None,
        logits_from: int = 0,
        layer_mask: Optional[jax.Array] = None,
        head: Optional[jax.Array] = None,
    ) -> ModelOutput:
        """Runs the new tokens through the layers `run_layers` (ascending; all by default:
        a subset is a draft of the target made of its own layers, `SelfDraft`).

        `hidden_layers` picks intermediate states as `transformers` numbers them:
        0 is the embedding output, k the output of layer k (before the final norm);
        with `run_layers`, k counts the layers run.
        A tree drafted level by level passes a tree_mask [T, M] over a pending region
        of M slots, of which this call writes T starting at `write_offset`, and the
        positions [B, M] of that region (see `attention_mask`). Logits are computed
        for the new tokens from index `logits_from` on (a draft re-feeding committed
        tokens needs only the last ones'). Layers that `layer_mask` [L] (bool, traced)
        marks False pass their input on (their pending KV is then garbage): trying
        subsets of layers compiles once (calibration). `head` [K, D]: logits over those
        rows of the LM head only (`head_rows`, a reduced draft vocabulary).
        """
        cfg = self.config
        run_layers = range(cfg.num_layers) if run_layers is None else run_layers
        # Rows first, then the compute dtype (`nn.Embed` would convert the whole table).
        x = embed_rows(self.embed.embedding, tokens).astype(cfg.dtype)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size**0.5, x.dtype)
        if cfg.position_embedding == "learned":
            x = x + embed_rows(self.pos_embed.embedding, positions).astype(cfg.dtype)
        masks = {
            window: attention_mask(cache, positions, tree_mask, window, pending_positions)
            for window in {cfg.sliding_window if cfg.uses_sliding_window(i) else None
                           for i in run_layers}
        }
        states = [x]
        for i in run_layers:
            window = cfg.sliding_window if cfg.uses_sliding_window(i) else None
            out, cache = self.layers[i](x, positions, masks[window], cache, write_offset)
            x = out if layer_mask is None else jnp.where(layer_mask[i], out, x)
            states.append(x)
        hidden = self.final_norm(x)
        intermediates = tuple(states[i] for i in hidden_layers)
        return ModelOutput(self.lm_logits(hidden[:, logits_from:], head), hidden,
                           intermediates, cache)

    def lm_logits(self, hidden: jax.Array, head: Optional[jax.Array] = None) -> jax.Array:
        """Final hidden states [..., D] (after the final norm) -> float32 logits [..., V],
        or [..., K] over the rows `head` [K, D] of `head_rows` (a reduced vocabulary)."""
        cfg = self.config
        if head is None and cfg.tie_embeddings:
            head = self.embed.embedding  # [V, D]
        if head is None:
            logits = self.lm_head(hidden)
        else:
            logits = head_dot(hidden, head.astype(cfg.dtype))
        return softcap(logits.astype(jnp.float32), cfg.final_logit_softcap)


def head_rows(params, ids: jax.Array) -> jax.Array:
    """The LM head's rows for target ids [K] -> [K, D] (the embedding's when tied): a head
    over a reduced draft vocabulary for `Transformer.lm_logits`, gathered once rather
    than every step."""
    weights = params["params"]
    weights = (weights["lm_head"]["kernel"].T if "lm_head" in weights
               else weights["embed"]["embedding"])
    return embed_rows(weights, ids)


def sequence_forward(params, cfg: ModelConfig, tokens: jax.Array,
                     hidden_layers: Sequence[int] = (), logits: bool = True,
                     head: Optional[jax.Array] = None) -> ModelOutput:
    """The whole-sequence forward of [B, T] tokens from position 0 (training, teachers);
    without `logits` the LM head is skipped (logits [B, 0, V]); with `head` [K, D] the
    logits are over those rows of it (`head_rows`)."""
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    return Transformer(cfg).apply(params, tokens, positions, KVCache.init(cfg, batch, length),
                                  hidden_layers=hidden_layers,
                                  logits_from=0 if logits else length, head=head)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Random parameters ({'params': ...}) for `cfg`, initialised as `transformers` does."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    cache = KVCache.init(cfg, 1, 1)
    return Transformer(cfg).init(key, tokens, tokens, cache)


@functools.lru_cache(maxsize=16)
def param_shapes(cfg: ModelConfig) -> dict:
    """The parameter pytree's shapes and dtypes, without allocating it."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def _leaf_shapes(tree) -> dict:
    return {jax.tree_util.keystr(path): tuple(np.shape(x))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_params(params, cfg: ModelConfig, what: str = "params") -> None:
    """Raises ValueError unless `params` has exactly the tensors and shapes `cfg` needs
    (any float dtype): params of another model fail here, by name, not inside a jit."""
    if not isinstance(params, Mapping) or "params" not in params:
        raise TypeError(f"{what} must be a {{'params': ...}} pytree (as init_params and "
                        f"load_hf return), got {type(params).__name__}")
    have, need = _leaf_shapes(params), _leaf_shapes(param_shapes(cfg))
    for name in sorted(set(have) | set(need)):
        if have.get(name) != need.get(name):
            detail = ("is missing" if name not in have else "is not in the model" if
                      name not in need else f"has shape {have[name]}, the model needs "
                      f"{need[name]}")
            raise ValueError(f"{what} do not fit the model config: {name} {detail}")
