"""Kangaroo (Liu et al. 2024): self-speculation through the target's first E layers and
a small trained adapter.

The draft is the target's layers 0..E-1 (reading and writing the target's own KV
cache, as `SelfDraft` does), then the adapter, then the target's LM head, or its rows
for a reduced draft vocabulary. The adapter is "one multi-head attention and two
normalization layers": the attention half of one decoder layer of the target's
architecture (input norm, attention, residual) and a final norm. It bridges the gap
between layer E's states and what the LM head reads: on Gemma 3 270M the head over
the first 12 of 18 layers agrees with the target 10% of the time (BENCHMARKS.md).

The adapter attends over the whole context, so it keeps a one-layer KV cache of its
own, fed with layer E's states of committed tokens. Those are the target's own
(`feature_layers = (E,)`): each verification hands over those of the root and the
accepted path, `commit` keeps them, and the next `propose` first runs the adapter over
them (catching its cache up with the target's), then drafts. A row stops drafting
when its confidence drops below `min_confidence` (Kangaroo's second early exit).

Training (`sdjax train heads`, kind `kangaroo`): the adapter over the target's layer-E
states of corpus windows learns the target's next-token distribution (cross-entropy
against it, as the paper trains). While drafting, the adapter reads the same exact
states at every depth (the draft's first E layers are the target's), so it needs no
training-time test: its depth-1 agreement is its acceptance at every depth.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig, SpecConfig, model_config_from_dict
from sdjax.drafters.self_draft import TargetLayersDraft
from sdjax.drafters.vocab import bind_head
from sdjax.heads.common import (
    OneLayerDraft,
    cast_floats,
    check_fits,
    declare_vocab_ids,
    draft_layer,
    vocab_ids,
)
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Attention, Transformer, attention_mask, norm_layer
from sdjax.validation import check_fields, check_range


@dataclasses.dataclass(frozen=True)
class KangarooConfig(OneLayerDraft):
    """A Kangaroo adapter: where it exits and its attention layer's architecture."""
    layer: ModelConfig  # the adapter's attention: the target's architecture, one layer
    exit_layer: int  # the draft runs the target's first exit_layer layers
    draft_vocab: int = 0  # rows of the target's LM head it reads (0: all of them)
    kind: str = "kangaroo"

    def __post_init__(self):
        check_fields(self)
        check_range(self, "exit_layer", 1)
        check_range(self, "draft_vocab", 0, self.vocab_size)
        if self.kind != "kangaroo":
            raise ValueError(f"a KangarooConfig's kind is 'kangaroo', got {self.kind!r}")
        if self.layer.num_layers != 1:
            raise ValueError("the Kangaroo adapter is one attention layer")


def kangaroo_config(target: ModelConfig, exit_layer: int, draft_vocab: int = 0) -> KangarooConfig:
    """The Kangaroo adapter for `target` after its first `exit_layer` layers (float32,
    global attention)."""
    if not 1 <= exit_layer <= target.num_layers:
        raise ValueError(f"Kangaroo's exit_layer must be in 1..{target.num_layers} (the "
                         f"target's layers), got {exit_layer}")
    return KangarooConfig(draft_layer(target), exit_layer, draft_vocab)


def read_config(values: dict) -> KangarooConfig:
    """A KangarooConfig from its heads_config.json form."""
    if not isinstance(values.get("layer"), dict) or "exit_layer" not in values:
        raise ValueError("a Kangaroo heads_config.json needs its adapter 'layer' (a "
                         "ModelConfig) and 'exit_layer'")
    return KangarooConfig(model_config_from_dict(values["layer"]), values["exit_layer"],
                          values.get("draft_vocab", 0))


class Adapter(nn.Module):
    """Layer E's states -> what the target's LM head reads (see the module docstring)."""
    config: KangarooConfig

    def setup(self):
        layer = self.config.layer
        self.attn_norm = norm_layer(layer, "attn_norm")
        self.attn = Attention(layer, 0, name="attn")
        if layer.sandwich_norms:  # as the target's blocks norm their attention's output
            self.post_attn_norm = norm_layer(layer, "post_attn_norm")
        self.norm = norm_layer(layer, "norm")
        declare_vocab_ids(self, self.config.draft_vocab)

    def example_inputs(self):
        positions = jnp.zeros((1, 1), jnp.int32)
        return (jnp.zeros((1, 1, self.config.hidden_size)), positions,
                KVCache.init(self.config.layer, 1, 1))

    def __call__(self, states, positions, cache: KVCache, tree_mask=None,
                 write_offset: int = 0, pending_positions=None):
        """states [B, T, D] at `positions` -> (normed states [B, T, D] float32, cache with
        their KV pending; masks as `Transformer`)."""
        x = states.astype(jnp.float32)
        mask = attention_mask(cache, positions, tree_mask, None, pending_positions)
        out, cache = self.attn(self.attn_norm(x), positions, mask, cache, write_offset)
        if self.config.layer.sandwich_norms:
            out = self.post_attn_norm(out)
        return self.norm(x + out), cache


def init_kangaroo(cfg: KangarooConfig, target_params, key: jax.Array,
                  ids: Optional[np.ndarray] = None) -> dict:
    """Adapter params started from the weights of the target's next layer's attention
    half (layer E's norms and attention; random when E = L, past the last layer) and the
    target's final norm, so that training starts from a sensible map rather than noise.
    A start, not a copy: the adapter attends globally with the global RoPE base, which
    a sliding-window layer E does not. A reduced vocabulary's ids (required when
    draft_vocab > 0) are stored with them."""
    module = Adapter(cfg)
    params = dict(module.init(key, *module.example_inputs())["params"])
    target = target_params["params"]
    block = target.get(f"layers_{cfg.exit_layer}", {})
    copy = lambda tree: cast_floats(jax.tree.map(jnp.array, tree), jnp.float32)
    for name in ("attn_norm", "attn", "post_attn_norm"):
        if name in block:
            params[name] = copy(block[name])
    params["norm"] = copy(target["final_norm"])
    if cfg.draft_vocab:
        if ids is None or np.shape(ids) != (cfg.draft_vocab,):
            raise ValueError(f"a reduced draft vocabulary needs its {cfg.draft_vocab} target "
                             "ids (sdjax.drafters.vocab.frequent_tokens)")
        params["vocab_ids"] = jnp.asarray(ids, jnp.int32)
    return {"params": params}


def abstract_params(cfg: KangarooConfig):
    """Shapes of the saved params, for checking a loaded folder."""
    module = Adapter(cfg)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *module.example_inputs()))


@flax.struct.dataclass
class DraftCaches:
    """The caches a Kangaroo draft step writes: the target's (its first E layers) and
    the adapter's, with the same pending region."""
    target: KVCache
    adapter: KVCache

    @property
    def length(self) -> jax.Array:
        return self.target.length


@flax.struct.dataclass
class KangarooState:
    """A Kangaroo drafter's state between cycles."""
    cache: KVCache  # the adapter's: behind the target's by the tokens committed last cycle
    states: jax.Array  # [B, P, D] layer E's states of those tokens (root, accepted path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Kangaroo(TargetLayersDraft):
    """Drafts a chain of `num_draft` tokens (or the static `tree`) with the target's
    first `adapter.exit_layer` layers, the trained adapter (`draft_params`: the saved
    params) and the target's LM head; `min_confidence` > 0 stops a row's drafting early.
    """

    adapter: KangarooConfig

    @property
    def layers(self) -> Tuple[int, ...]:
        return tuple(range(self.adapter.exit_layer))

    @property
    def feature_layers(self) -> Tuple[int, ...]:
        return (self.adapter.exit_layer,)

    @property
    def _path_length(self) -> int:
        return self.shape.max_depth + 1

    def check(self, cfg: SpecConfig, draft_params) -> None:
        super().check(cfg, draft_params)
        check_fits(self, draft_params, self.adapter, cfg, "the adapter's params")
        heads = lambda c: (c.num_heads, c.num_kv_heads, c.head_dim)
        if heads(self.adapter.layer) != heads(cfg.model):
            raise ValueError(f"an adapter with (heads, kv heads, head dim) "
                             f"{heads(self.adapter.layer)} was not made for this target "
                             f"{heads(cfg.model)}")

    def bind(self, draft_params, target_params):
        """The target's params, the adapter's (float32) and the LM head's rows of a
        reduced draft vocabulary (gathered once per generate, before the loop)."""
        ids = vocab_ids(draft_params)
        head = bind_head(None if ids is None else {"vocab_ids": ids}, target_params)
        return {"target": target_params, "adapter": cast_floats(draft_params, jnp.float32),
                **head}

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """Runs the adapter over the prompt's layer-E states (`features`)."""
        batch, bucket = prompt_tokens.shape
        positions = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        _, cache = Adapter(self.adapter).apply(
            draft_params["adapter"], features, positions,
            KVCache.init(self.adapter.layer, batch, max_len))
        return KangarooState(
            cache.commit(prompt_lengths),
            jnp.zeros((batch, self._path_length, self.adapter.hidden_size), jnp.float32))

    def _catch_up(self, adapter_params, state: KangarooState, committed) -> KVCache:
        """The adapter's cache with last cycle's committed tokens in it: as long as the
        target's (`committed` [B])."""
        length = self._path_length
        positions = state.cache.length[:, None] + jnp.arange(length)
        _, cache = Adapter(self.adapter).apply(
            adapter_params, state.states, positions, state.cache,
            jnp.tril(jnp.ones((length, length), bool)), 0, positions)
        return cache.commit(committed - state.cache.length)

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig,
                target_cache=None):
        """The tree, the state (the adapter's cache caught up) and the target cache with
        the drafted tokens' KV in its pending region (the verify forward overwrites it)."""
        self.check_target_cache(target_cache)
        model, adapter = Transformer(cfg.model), Adapter(self.adapter)
        target, adapter_params = draft_params["target"], draft_params["adapter"]
        head = draft_params["head"]

        def forward(tokens, features, positions, caches, mask, write_offset, pending_positions,
                    logits_from):
            out = model.apply(target, tokens, positions, caches.target, mask,
                              hidden_layers=(self.adapter.exit_layer,), run_layers=self.layers,
                              write_offset=write_offset, pending_positions=pending_positions,
                              logits_from=tokens.shape[1])  # the adapter's head reads
            normed, adapter_cache = adapter.apply(adapter_params, out.intermediates[0],
                                                  positions, caches.adapter, mask,
                                                  write_offset, pending_positions)
            logits = model.apply(target, normed[:, logits_from:].astype(cfg.model.dtype),
                                 head, method=Transformer.lm_logits)
            return logits, normed, DraftCaches(out.cache, adapter_cache)

        caches = DraftCaches(target_cache,
                             self._catch_up(adapter_params, state, target_cache.length))
        tree, caches = self.draft(forward, caches, draft_params["vocab_ids"], sequence,
                                  seq_len, key, cfg)
        return tree, state.replace(cache=caches.adapter), caches.target

    def commit(self, state, result, committed_length, features=None):
        """Keeps layer E's states of the root and the accepted path (the next propose
        feeds them to the adapter)."""
        states = jnp.take_along_axis(features, result.path[..., None], axis=1)
        return state.replace(states=states.astype(state.states.dtype))
