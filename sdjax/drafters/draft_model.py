"""A smaller model with the target's vocabulary drafts a chain or a token tree.

The tree (any `TreeShape` in breadth-first order: chain, k-ary, Medusa choices,
Sequoia) is grown one depth level per draft forward. A node's children are its
draft distribution's top-k tokens when greedy, and k tokens sampled *without
replacement* (Gumbel-top-k) when sampling; each child records the distribution it
was drawn from (q with its earlier siblings removed), which is what the lossless
tree verifier needs. A chain is the tree with one child per node.

KV bookkeeping, all static shapes: the draft cache holds `catch_up` (W) tokens
fewer than the target's, and each cycle re-feeds those last W committed tokens (the
"window") together with the root, at their own slots and positions, which rewrites
identical KV. With W = 1 the accepted path (but its last node, whose KV the draft
never computed if it was a leaf) is gathered into place after verification. With
W = max depth + 1 the window alone covers every token a cycle can commit, whoever
drafted it: that is how ensemble members stay in step (`Ensemble`). The pending
region is [window (W slots), node 0, node 1, ...].

With a SpecDec++ acceptance head (`stop_head`, `sdjax.drafters.acceptance`) a chain
stops where the head predicts a rejection has become likely. With `vocab_ids` among
the draft params the draft scores only those rows of its LM head (a reduced draft
vocabulary, `sdjax.drafters.vocab`): a draft built from Gemma 3's own layers would
otherwise spend most of its step on the 262,144-row head.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig, SpecConfig
from sdjax.drafters.acceptance import (
    DEFAULT_STOP_THRESHOLD,
    AcceptanceHeadConfig,
    acceptance_probability,
    check_head_params,
)
from sdjax.drafters.levels import draft_levels
from sdjax.drafters.vocab import bind_head, check_ids
from sdjax.models.cache import KVCache
from sdjax.models.transformer import Transformer, check_params
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import TreeShape, chain
from sdjax.validation import check_range


def network_forward(model: Transformer, weights, head: Optional[jax.Array] = None):
    """`draft_levels`' forward for a draft that is a whole language model (it reads
    tokens only): (logits, hidden, cache) of `model` with `weights`; logits over the
    rows `head` [K, D] of its LM head when given (a reduced draft vocabulary)."""

    def forward(tokens, features, positions, cache, mask, write_offset, pending_positions,
                logits_from):
        out = model.apply(weights, tokens, positions, cache, mask, write_offset=write_offset,
                          pending_positions=pending_positions, logits_from=logits_from,
                          head=head)
        return out.logits, out.hidden, out.cache

    return forward


@flax.struct.dataclass
class DraftModelState:
    """A draft model's state between cycles."""
    cache: KVCache  # the draft's KV, `catch_up` tokens behind the target's
    draft_len: jax.Array  # [B] each row's current chain length (adaptive drafting)


@dataclasses.dataclass(frozen=True)
class DraftModel(Drafter):
    """`num_draft`: chain length (the static maximum when adaptive), unless `tree` is
    given. `adaptive=True` (chains only) follows `transformers`' heuristic per row:
    after a fully accepted chain draft two more tokens next time, otherwise one
    fewer (at least one); levels no row needs are skipped (`lax.cond`).
    `stop_head` (chains only): SpecDec++'s acceptance head; a row's chain stops at the
    first depth where the predicted chance that some draft so far is rejected exceeds
    `stop_threshold`. draft_params are the draft's variables {"params": ...}, with
    "acceptance_head" (the stop head's params) and "vocab_ids" (int [K], ascending:
    the target ids of a reduced draft vocabulary) beside "params" where used."""

    config: ModelConfig
    num_draft: int = 4
    tree: Optional[TreeShape] = None
    adaptive: bool = False
    catch_up: int = 1
    stop_head: Optional[AcceptanceHeadConfig] = None
    stop_threshold: float = DEFAULT_STOP_THRESHOLD

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "catch_up", 1)
        if self.tree is None:
            check_range(self, "num_draft", 1)
        if self.tree is not None:
            self.tree.check_level_order()
        if self.adaptive and self.tree is not None:
            raise ValueError("adaptive draft length applies to chains, not trees")
        check_range(self, "stop_threshold", 0, 1)
        if self.stop_head is not None and (self.tree is not None or self.adaptive):
            raise ValueError("a SpecDec++ stop head decides a chain's length: it takes "
                             "neither a tree nor adaptive=True")
        if self.stop_head is not None and self.stop_head.hidden_size != self.config.hidden_size:
            raise ValueError(f"the stop head reads hidden states of {self.stop_head.hidden_size}"
                             f", the draft model's are {self.config.hidden_size}")

    @property
    def shape(self) -> TreeShape:
        return self.tree if self.tree is not None else chain(self.num_draft)

    def check(self, cfg: SpecConfig, draft_params) -> None:
        if draft_params is None:
            raise ValueError("DraftModel needs draft_params")
        if self.config.vocab_size != cfg.model.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({self.config.vocab_size}) differs from the "
                f"target's ({cfg.model.vocab_size}); a draft with a tokenizer of its own "
                "drafts through CrossVocabDraft (sdjax.drafters.cross_vocab)"
            )
        if not isinstance(draft_params, Mapping) or "params" not in draft_params:
            raise TypeError("DraftModel's draft_params must be the draft's variables "
                            f"{{'params': ...}}, got {type(draft_params).__name__}")
        unknown = sorted(set(draft_params) - {"params", "acceptance_head", "vocab_ids"})
        if unknown:
            raise ValueError(f"DraftModel's draft_params have unknown entries {unknown} "
                             "(known: params, acceptance_head, vocab_ids)")
        if "vocab_ids" in draft_params:
            ids = draft_params["vocab_ids"]
            check_ids(ids, np.size(ids), cfg.model.vocab_size)
        if self.stop_head is not None:
            if "acceptance_head" not in draft_params:
                raise ValueError("DraftModel(stop_head=...) needs draft_params = {'params': "
                                 "the draft's weights, 'acceptance_head': the head's params}")
            check_head_params(self.stop_head, draft_params["acceptance_head"])
            if self.stop_head.temperature != cfg.temperature:
                raise ValueError(f"the stop head was trained for temperature "
                                 f"{self.stop_head.temperature}, this decode samples at "
                                 f"{cfg.temperature}: train one for it (`sdjax train "
                                 "acceptance`, temperature)")
        elif "acceptance_head" in draft_params:
            raise ValueError("draft_params carry an acceptance head but the DraftModel has "
                             "no stop_head: give DraftModel(stop_head=its config)")
        check_params(self._weights(draft_params), self.config, "draft_params")

    @staticmethod
    def _weights(draft_params):
        """The draft model's own variables (without the acceptance head or vocabulary)."""
        return {"params": draft_params["params"]}

    def bind(self, draft_params, target_params):
        """Gathers a reduced vocabulary's rows of the draft's LM head ("head") once per
        generate, not once per draft step."""
        if "vocab_ids" not in draft_params:
            return draft_params
        return {**draft_params, **bind_head(draft_params, self._weights(draft_params))}

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """State: the draft's KV cache and each row's current draft length."""
        batch, bucket = prompt_tokens.shape
        positions = jnp.broadcast_to(jnp.arange(bucket), (batch, bucket))
        out = Transformer(self.config).apply(
            self._weights(draft_params), prompt_tokens, positions,
            KVCache.init(self.config, batch, max_len + 1), logits_from=bucket)
        cache = out.cache.commit(jnp.maximum(prompt_lengths - self.catch_up, 0))
        return DraftModelState(cache, jnp.full((batch,), self.shape.max_depth, jnp.int32))

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        limit = state.draft_len
        accept_prob = None if self.stop_head is None else functools.partial(
            acceptance_probability, self.stop_head, draft_params["acceptance_head"])
        forward = network_forward(Transformer(self.config), self._weights(draft_params),
                                  draft_params.get("head"))
        cache, tokens, probs, stop = draft_levels(
            forward, self.shape, self.catch_up, state.cache, sequence, seq_len, key, cfg,
            self.config.vocab_size, skip_past=limit if self.adaptive else None,
            vocab_ids=draft_params.get("vocab_ids"), accept_prob=accept_prob,
            stop_threshold=self.stop_threshold)
        return DraftTree(tokens, probs, stop), state.replace(cache=cache)

    def commit(self, state, result, committed_length, features=None):
        """Keeps the window and the accepted path up to W tokens short of the target
        (the last ones are re-fed next cycle), and adapts the draft length."""
        cache, limit = state.cache, state.draft_len
        keep = jnp.maximum(committed_length - self.catch_up, 0) - cache.length
        if self.catch_up == 1:  # gather the accepted path (all but its last node) into place
            path = jnp.concatenate([jnp.zeros_like(result.path[:, :1]), 1 + result.path], 1)
            cache = cache.commit(keep, path)
        else:  # the window covered every committed token: nothing moves
            cache = cache.commit(keep)
        if self.adaptive:
            grown = jnp.where(result.num_accepted >= limit, limit + 2, limit - 1)
            limit = jnp.clip(grown, 1, self.shape.max_depth)
        return DraftModelState(cache, limit)


# Beside a draft's checkpoint folder: the target ids of its reduced vocabulary.
DRAFT_VOCAB_FILE = "draft_vocab.safetensors"


def save_draft_model(path: str, cfg: ModelConfig, draft_params, tokenizer=None) -> None:
    """A checkpoint folder `transformers` loads as it is (`save_hf`), plus the reduced
    vocabulary's ids (DRAFT_VOCAB_FILE) when draft_params carry "vocab_ids"."""
    from sdjax.models.hf import save_hf, write_safetensors

    save_hf(path, cfg, {"params": draft_params["params"]}, tokenizer)
    vocab_file = os.path.join(path, DRAFT_VOCAB_FILE)
    if "vocab_ids" in draft_params:
        write_safetensors(vocab_file, {"vocab_ids": np.asarray(draft_params["vocab_ids"],
                                                               np.int32)})
    elif os.path.exists(vocab_file):
        os.remove(vocab_file)


def load_draft_model(path: str, dtype: str = "float32", load_tokenizer: bool = True):
    """(LoadedModel, DraftModel's draft_params) of a folder `save_draft_model` (or any
    `save_hf`) wrote: with "vocab_ids" when it holds a reduced vocabulary."""
    from sdjax.models.hf import load_hf, read_safetensors_file

    model = load_hf(path, dtype=dtype, load_tokenizer=load_tokenizer)
    vocab_file = os.path.join(path, DRAFT_VOCAB_FILE)
    if not os.path.exists(vocab_file):
        return model, model.params
    tensors = read_safetensors_file(vocab_file)
    if sorted(tensors) != ["vocab_ids"]:
        raise ValueError(f"{vocab_file} holds {sorted(tensors)}, not one 'vocab_ids' tensor")
    ids = np.asarray(tensors["vocab_ids"])
    check_ids(ids, ids.size, model.config.vocab_size)
    return model, {**model.params, "vocab_ids": ids}


def draft_from_layers(target_cfg: ModelConfig, target_params, layers) -> tuple:
    """(config, params) of a draft made of copies of the target's layers `layers`
    (ascending), its embedding and final norm: the start of a small draft for a model
    with no smaller sibling (Gemma 3 270M), to be distilled (`sdjax train distill`)."""
    layers = tuple(int(i) for i in layers)
    if not layers or list(layers) != sorted(set(layers)) or not (
            0 <= layers[0] and layers[-1] < target_cfg.num_layers):
        raise ValueError(f"draft layers {list(layers)} must be distinct ascending layers of "
                         f"the target's 0..{target_cfg.num_layers - 1}")
    sliding = target_cfg.sliding_layers
    cfg = target_cfg.replace(
        num_layers=len(layers),
        sliding_layers=None if sliding is None else tuple(sliding[i] for i in layers))
    weights = target_params["params"]
    params = {name: value for name, value in weights.items() if not name.startswith("layers_")}
    params.update({f"layers_{j}": weights[f"layers_{i}"] for j, i in enumerate(layers)})
    params = jax.tree.map(jnp.array, {"params": params})  # a copy: training donates it
    check_params(params, cfg, "the layer draft's params")
    return cfg, params
