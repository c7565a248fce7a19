"""EAGLE's draft network (Li et al. 2024, 2025): one decoder layer that drafts in the
target's feature space.

The input at position p pairs the target's feature of position p - 1 with the
token at p: x_p = combine([e(t_p); f_{p-1}]) (zeros before the first token). One
decoder layer of the target's architecture turns it into h_p, the draft's guess of
the feature at p, read as next-token logits:

- `kind="eagle"` (EAGLE-1/2): f is the target's final hidden state (after its
  final norm); h_p regresses f_p and the *target's* LM head reads it.
- `kind="eagle3"` (EAGLE-3): f fuses low/mid/high target layers
  (`feature_layers`, `transformers` numbering) through a linear `fuse`; embedding
  and f are RMS-normalised before `combine` (residual streams are not); h_p is read
  by a norm and an LM head of the draft's own (no feature regression).

While drafting deeper than one token the draft feeds its own h in place of f.
The token embedding (and EAGLE-1's LM head) are the target's: the saved heads
hold only what is trained, and `bind` joins the target's weights in at decode time.

With `draft_vocab` = K > 0 (EAGLE-3's draft-to-target map) the draft's own LM head
has K rows, for the target ids in its `vocab_ids` parameter (int32, fixed in
training: `sdjax.drafters.vocab`), and the network's logits are over those K.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig
from sdjax.heads.common import (
    LMHead,
    OneLayerDraft,
    bind_shared,
    declare_vocab_ids,
    draft_layer,
    own_lm_heads,
    without,
)
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Block, attention_mask, embed_rows, norm_layer
from sdjax.validation import check_fields, check_range

EAGLE_KINDS = ("eagle", "eagle3")


@dataclasses.dataclass(frozen=True)
class EagleConfig(OneLayerDraft):
    """An EAGLE draft: its decoder layer, kind, and (EAGLE-3) fused target layers."""
    layer: ModelConfig  # the draft layer: the target's architecture, one layer
    kind: str = "eagle"
    feature_layers: Tuple[int, ...] = ()  # eagle3: the fused target layers
    draft_vocab: int = 0  # eagle3: rows of the draft's LM head (0: the whole vocabulary)

    def __post_init__(self):
        check_fields(self)
        check_range(self, "draft_vocab", 0, self.vocab_size)
        if self.draft_vocab and self.kind != "eagle3":
            raise ValueError("a reduced draft_vocab needs an LM head of the draft's own "
                             "(kind='eagle3'); EAGLE-1 reads the target's")
        if self.kind not in EAGLE_KINDS:
            raise ValueError(f"unknown EAGLE kind {self.kind!r}; supported: {EAGLE_KINDS}")
        if (self.kind == "eagle3") != bool(self.feature_layers):
            raise ValueError("eagle3 fuses feature_layers (e.g. (2, L//2, L-3)); eagle "
                             "reads the final hidden state and takes none")
        if self.layer.num_layers != 1:
            raise ValueError("the EAGLE draft is one decoder layer")

    @property
    def head_size(self) -> int:
        """Rows of the LM head the draft reads: its logits' width."""
        return self.draft_vocab or self.vocab_size


def default_feature_layers(num_layers: int) -> Tuple[int, ...]:
    """EAGLE-3's low / mid / high layers (2, L/2, L-3); (1, L/2, L-1) below 8 layers,
    where those would coincide."""
    if num_layers >= 8:
        return (2, num_layers // 2, num_layers - 3)
    return (1, num_layers // 2, num_layers - 1)


def eagle_config(target: ModelConfig, kind: str = "eagle",
                 feature_layers: Optional[Tuple[int, ...]] = None,
                 draft_vocab: int = 0) -> EagleConfig:
    """The EAGLE draft for `target`: one float32 layer of its architecture."""
    if kind == "eagle3" and feature_layers is None:
        feature_layers = default_feature_layers(target.num_layers)
    for layer in feature_layers or ():
        if not 0 <= layer <= target.num_layers:
            raise ValueError(f"feature layer {layer} outside 0..{target.num_layers}")
    return EagleConfig(draft_layer(target), kind, tuple(feature_layers or ()), draft_vocab)


class EagleNet(nn.Module):
    """The EAGLE draft network (see the module docstring)."""
    config: EagleConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")  # the target's
        if cfg.kind == "eagle3":
            self.fuse = nn.Dense(cfg.hidden_size, use_bias=False, name="fuse")
            self.embed_norm = norm_layer(cfg.layer, "embed_norm")
            self.feature_norm = norm_layer(cfg.layer, "feature_norm")
            self.norm = norm_layer(cfg.layer, "norm")
        declare_vocab_ids(self, cfg.draft_vocab)
        self.combine = nn.Dense(cfg.hidden_size, name="combine")
        self.layer = Block(cfg.layer, 0, name="layer")
        self.lm_head = LMHead(cfg.head_size, name="lm_head")

    def example_inputs(self):
        cfg = self.config
        width = cfg.hidden_size * max(1, len(cfg.feature_layers))
        positions = jnp.zeros((1, 1), jnp.int32)
        return (positions, jnp.zeros((1, 1, width)), positions,
                KVCache.init(cfg.layer, 1, 1))

    def features(self, target_features: jax.Array) -> jax.Array:
        """What the target hands over ([..., D] or [..., D * layers]) -> f [..., D]."""
        target_features = target_features.astype(jnp.float32)
        return self.fuse(target_features) if self.config.kind == "eagle3" else target_features

    def __call__(self, tokens, features, positions, cache: KVCache, tree_mask=None,
                 write_offset: int = 0, pending_positions=None, fuse: bool = False,
                 logits_from: int = 0):
        """tokens [B, T] with the features f of their predecessors [B, T, D] (raw target
        features when `fuse`) -> (logits [B, T - logits_from, head_size], h [B, T, D],
        cache)."""
        if fuse:
            features = self.features(features)
        embedded = embed_rows(self.embed.embedding, tokens).astype(jnp.float32)
        if self.config.layer.scale_embeddings:  # as the target embeds (Gemma)
            embedded = embedded * jnp.float32(self.config.hidden_size**0.5)
        features = features.astype(jnp.float32)
        if self.config.kind == "eagle3":  # residual streams: normalise both inputs
            embedded, features = self.embed_norm(embedded), self.feature_norm(features)
        x = self.combine(jnp.concatenate([embedded, features], -1))
        mask = attention_mask(cache, positions, tree_mask, None, pending_positions)
        hidden, cache = self.layer(x, positions, mask, cache, write_offset)
        read = hidden[:, logits_from:]
        read = self.norm(read) if self.config.kind == "eagle3" else read
        return self.lm_head(read), hidden, cache


def shift_features(features: jax.Array) -> jax.Array:
    """[B, T, F] -> what position p of the draft reads: f_{p-1} (zeros at p = 0)."""
    return jnp.pad(features, ((0, 0), (1, 0), (0, 0)))[:, :-1]


def shared_names(cfg: EagleConfig) -> Tuple[str, ...]:
    """The parameters EAGLE takes from the target rather than training."""
    return ("embed", "lm_head") if cfg.kind == "eagle" else ("embed",)


def init_eagle(cfg: EagleConfig, target_params, key: jax.Array,
               vocab_ids: Optional[np.ndarray] = None) -> dict:
    """Random draft params (without the target's shared weights); EAGLE-3's own LM head
    starts as a copy of the target's (its rows `vocab_ids` when reduced: then they are
    required)."""
    module = EagleNet(cfg)
    params = dict(module.init(key, *module.example_inputs(), fuse=True)["params"])
    if cfg.kind == "eagle3":
        params = own_lm_heads(params, target_params, ("lm_head",), cfg.draft_vocab, vocab_ids)
    return without({"params": params}, shared_names(cfg))


def bind(cfg: EagleConfig, draft_params, target_params) -> dict:
    """The draft's params joined with the target weights it shares."""
    return bind_shared(draft_params, target_params, shared_names(cfg))


def abstract_params(cfg: EagleConfig):
    """Shapes of the saved (unshared) params, for checking a loaded folder."""
    module = EagleNet(cfg)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                *module.example_inputs(), fuse=True))
    return without(params, shared_names(cfg))
