"""What Medusa, Hydra and MLP-speculator heads share: their config, initialisation
from the target, the drafter's checks and state; and what every draft head shares:
the target weights it reads without training (`bind_shared`), its own LM heads
(`own_lm_heads`, over a reduced vocabulary or not), and `check_fits`.

Medusa and Hydra heads read logits through one LM head: the target's (shared, not
trained, not saved), or with `draft_vocab` = K a reduced head of their own over K
frequent target tokens (`sdjax.drafters.vocab`), one for all heads: on Gemma 3 a
full-vocabulary head per head would be 168M parameters each, and cost more than a
target step to run. MLP-speculator stages each have their own head (reduced on a
large vocabulary). Token embeddings are always the target's.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig, SpecConfig
from sdjax.drafters.vocab import check_ids
from sdjax.models.transformer import dot_general, embed_rows
from sdjax.protocols import Drafter
from sdjax.trees import TreeShape
from sdjax.validation import check_fields, check_range


def draft_layer(target: ModelConfig) -> ModelConfig:
    """One float32 layer of the target's architecture with global attention: what EAGLE
    drafts with and Kangaroo's adapter is made of."""
    return target.replace(num_layers=1, dtype="float32", param_dtype="float32",
                          sliding_window=None, sliding_layers=None, tie_embeddings=False)


class OneLayerDraft:
    """The sizes of a draft config built on `layer` (`draft_layer`): EAGLE's, Kangaroo's."""

    @property
    def hidden_size(self) -> int:
        return self.layer.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.layer.vocab_size


@dataclasses.dataclass(frozen=True)
class HeadsLayout:
    """What a kind of heads reads from the target and what it owns."""
    reads_tokens: bool  # embeds the drafted tokens (with the target's embedding)
    head_per_stage: bool  # each head has an LM head of its own (else one for all)


# a HeadsConfig's kinds (EAGLE: EagleConfig)
HEADS_LAYOUTS = {
    "medusa": HeadsLayout(reads_tokens=False, head_per_stage=False),
    "hydra": HeadsLayout(reads_tokens=True, head_per_stage=False),
    "mlp_speculator": HeadsLayout(reads_tokens=True, head_per_stage=True),
    "redrafter": HeadsLayout(reads_tokens=True, head_per_stage=False),
}


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Medusa / Hydra heads, MLP-speculator stages or ReDrafter's recurrent head: how
    many (for ReDrafter's one head, how many tokens it drafts), the target's width and
    vocabulary, and the draft vocabulary."""
    num_heads: int
    hidden_size: int
    vocab_size: int
    kind: str = "medusa"
    draft_vocab: int = 0  # rows of the heads' own LM head (0: read the target's)
    scale_embeddings: bool = False  # the target scales its embeddings by sqrt(D) (Gemma)

    def __post_init__(self):
        check_fields(self)
        if self.kind not in HEADS_LAYOUTS:
            raise ValueError(f"unknown head kind {self.kind!r}; supported: {tuple(HEADS_LAYOUTS)}")
        for name in ("num_heads", "hidden_size", "vocab_size"):
            check_range(self, name, 1)
        check_range(self, "draft_vocab", 0, self.vocab_size)

    @property
    def head_size(self) -> int:
        """Rows of the LM head the heads read: their logits' width."""
        return self.draft_vocab or self.vocab_size

    @property
    def layout(self) -> HeadsLayout:
        return HEADS_LAYOUTS[self.kind]

    @property
    def own_heads(self) -> Tuple[str, ...]:
        """The LM heads of the heads' own: one per stage (MLP speculator), or one for
        all when reduced (with the full vocabulary, Medusa and Hydra read the target's)."""
        if self.layout.head_per_stage:
            return tuple(f"head_{k}_lm" for k in range(self.num_heads))
        return ("lm_head",) if self.draft_vocab else ()

    @property
    def shared_names(self) -> Tuple[str, ...]:
        """The target's weights the heads read (joined in by `bind_shared`)."""
        reads_target_head = not self.own_heads
        return (("embed",) if self.layout.reads_tokens else ()) + (
            ("lm_head",) if reads_target_head else ())


def target_lm_head(target: dict) -> jax.Array:
    """The target's LM-head kernel [D, V] (its embedding, transposed, when tied)."""
    return target["lm_head"]["kernel"] if "lm_head" in target else target["embed"]["embedding"].T


def bind_shared(draft_params, target_params, names: Tuple[str, ...]) -> dict:
    """The draft's params joined with the target weights `names` ("embed": the token
    embedding; "lm_head": the LM head as a Dense kernel) it reads without training.

    The draft's own weights are widened to float32, the dtype heads compute in: drafts
    ship in bfloat16, and a Dense layer would otherwise widen its kernel on every call
    inside the decode loop (XLA does not hoist size-growing converts out of a loop; on
    Gemma 3's EAGLE-3 draft that was 60% of a draft's cost). The target's weights stay
    as they are (`LMHead` reads them in their own dtype)."""
    target = target_params["params"]
    shared = {"embed": lambda: target["embed"],
              "lm_head": lambda: {"kernel": target_lm_head(target)}}
    own = cast_floats(draft_params["params"], jnp.float32)
    return {"params": {**own, **{name: shared[name]() for name in names}}}


def cast_floats(tree, dtype):
    """`tree` with its floating-point leaves cast to `dtype` (integer ids stay)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class LMHead(nn.Module):
    """x [..., D] -> float32 logits [..., features] through a bias-free kernel [D,
    features], multiplied in the kernel's dtype (float32 accumulation).

    The kernel may be the target's LM head (bfloat16 262k x 640 on Gemma 3): flax's
    Dense would widen it to float32 on every call, which costs more than a target
    step; here the input is narrowed instead. Own (float32) kernels compute as a Dense.
    """
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.features), jnp.float32)
        return dot_general(x.astype(kernel.dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)


def normalised_embedding(embedding: jax.Array, tokens: jax.Array) -> jax.Array:
    """The target's embedding of tokens [...] -> float32 [..., D], RMS-normalised (so a
    scale like Gemma's sqrt(D) cancels): what the speculator's stages and ReDrafter's
    GRU read."""
    e = embed_rows(embedding, tokens).astype(jnp.float32)
    return e * jax.lax.rsqrt(jnp.mean(e * e, axis=-1, keepdims=True) + 1e-6)


def without(params, names: Tuple[str, ...]) -> dict:
    """{'params': ...} without the entries `names`."""
    return {"params": {k: v for k, v in params["params"].items() if k not in names}}


def own_lm_heads(params: dict, target_params, names: Tuple[str, ...], draft_vocab: int,
                 vocab_ids: Optional[np.ndarray]) -> dict:
    """Module params whose own LM heads `names` start as copies of the target's (its
    rows `vocab_ids`, required when draft_vocab > 0, which are then stored too)."""
    kernel = target_lm_head(target_params["params"])
    params = dict(params)
    if draft_vocab:
        if vocab_ids is None or np.shape(vocab_ids) != (draft_vocab,):
            raise ValueError(f"a reduced draft vocabulary needs its {draft_vocab} target ids "
                             "(sdjax.drafters.vocab.frequent_tokens)")
        params["vocab_ids"] = jnp.asarray(vocab_ids, jnp.int32)
        kernel = jnp.take(kernel, params["vocab_ids"], axis=1)
    for name in names:  # one buffer per head (donation)
        params[name] = {"kernel": jnp.array(kernel, jnp.float32, copy=True)}
    return params


def declare_vocab_ids(module: nn.Module, draft_vocab: int) -> None:
    """Declares a reduced vocabulary's ids (int32 [K]) as a parameter of `module`, in
    its `setup`; `own_lm_heads` sets them, the drafters read them (`vocab_ids`)."""
    if draft_vocab:
        module.param("vocab_ids", lambda key: jnp.arange(draft_vocab, dtype=jnp.int32))


def vocab_ids(draft_params) -> Optional[jax.Array]:
    """The target ids of a reduced draft vocabulary's logits, or None (full)."""
    return draft_params["params"].get("vocab_ids")


def init_from_target(module, target_params, key: jax.Array,
                     vocab_ids: Optional[np.ndarray] = None) -> dict:
    """Random heads (a Medusa / Hydra / MLP-speculator module) whose own LM heads start
    as the target's (rows), so that untrained Medusa / Hydra heads echo the target.
    The target's shared weights are left out (see `bind_shared`)."""
    cfg = module.config
    params = module.init(key, *module.example_inputs())["params"]
    params = own_lm_heads(params, target_params, cfg.own_heads, cfg.draft_vocab, vocab_ids)
    return without({"params": params}, cfg.shared_names)


def check_fits(drafter, draft_params, heads, cfg: SpecConfig, what: str) -> None:
    """Raises unless `draft_params` are given and `heads` (any config with vocab_size
    and hidden_size) were made for a target of cfg.model's vocabulary and width."""
    if draft_params is None:
        raise ValueError(f"{type(drafter).__name__} needs {what} as draft_params")
    if (heads.vocab_size, heads.hidden_size) != (cfg.model.vocab_size, cfg.model.hidden_size):
        raise ValueError(
            f"a draft for vocab {heads.vocab_size} / hidden {heads.hidden_size} does not "
            f"fit the target (vocab {cfg.model.vocab_size} / hidden {cfg.model.hidden_size})")
    if heads.draft_vocab:
        check_ids(vocab_ids(draft_params), heads.draft_vocab, heads.vocab_size)


@flax.struct.dataclass
class HeadsState:
    """A heads drafter's state between cycles."""
    hidden: jax.Array  # [B, D] target hidden state of the token that produced the root


@dataclasses.dataclass(frozen=True)
class HeadsDrafter(Drafter):
    """Base of the head drafters: as state the target's hidden state [B, D] of the token
    that produced the current root (from the prefill, then from each verification's
    last accepted node)."""

    heads: HeadsConfig

    def check(self, cfg: SpecConfig, draft_params) -> None:
        check_fits(self, draft_params, self.heads, cfg, "the heads' params")

    def bind(self, draft_params, target_params):
        return bind_shared(draft_params, target_params, self.heads.shared_names)

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        return HeadsState(
            jnp.take_along_axis(features, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0])

    def commit(self, state, result, committed_length, features=None):
        last = jnp.take_along_axis(result.path, result.num_accepted[:, None], axis=1)
        return HeadsState(jnp.take_along_axis(features, last[:, :, None], axis=1)[:, 0])


@dataclasses.dataclass(frozen=True)
class TreeHeadsDrafter(HeadsDrafter):
    """Head drafters on a static choice tree no deeper than the heads."""

    tree: TreeShape

    def __post_init__(self):
        super().__post_init__()
        if self.tree.max_depth > self.heads.num_heads:
            raise ValueError(f"a tree of depth {self.tree.max_depth} needs that many heads; "
                             f"there are {self.heads.num_heads}")
        self.tree.check_level_order()

    @property
    def shape(self) -> TreeShape:
        return self.tree
