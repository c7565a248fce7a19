"""A draft model with a tokenizer of its own drafts for the target (Timor et al. 2025's
token-level intersection, TLI; `transformers`' universal assisted generation).

Any small model can then draft, whatever its vocabulary. A static `TokenMap`, built
once from the two tokenizers (`token_map`), does both translations inside the jit:

- reading: each target token becomes its text in draft tokens, at most M "pieces"
  (`pieces`, `num_pieces`), so the draft reads the target's text as a stream of its
  own tokens, with positions of its own (`translate`);
- writing: the draft may only propose the tokens both vocabularies share (the same
  text: `draft_ids` <-> `target_ids`), its distribution restricted to them and
  renormalised. Each draft then is one target token, and the lossless verifiers need
  nothing more: the draft distribution is a distribution over the target's
  vocabulary, zero outside the intersection (the reduced-vocabulary path of
  `sdjax.drafters.vocab`).

KV bookkeeping: the draft re-feeds a window of its last W = D + M committed pieces
each cycle (D the tree's depth), which covers every piece one cycle can commit (D
accepted drafts of one piece each and the next token's up to M), so nothing but the
window moves: the cache catches up at the next `propose`, when the sequence says
what was committed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sdjax.config import ModelConfig, SpecConfig
from sdjax.drafters.draft_model import network_forward
from sdjax.drafters.levels import draft_levels
from sdjax.drafters.vocab import check_ids
from sdjax.models.cache import KVCache
from sdjax.models.hf import load_hf
from sdjax.models.transformer import Transformer, check_params
from sdjax.protocols import Drafter, DraftTree
from sdjax.trees import TreeShape, chain
from sdjax.validation import check_range

# Sharding (`sdjax.sharding.PARAM_AXES`): every device holds the whole map.
PARAM_AXES = ((r"^token_map/\.(pieces|num_pieces|target_ids|draft_ids)$", (None,)),)


@flax.struct.dataclass
class TokenMap:
    """The two static translations between a target's and a draft's vocabularies."""

    pieces: jax.Array  # [V_target, M] int32: each target token's text in draft tokens
    num_pieces: jax.Array  # [V_target] int32 in 1..M: how many of them are used
    target_ids: jax.Array  # [K] int32, ascending: the shared tokens, as target ids
    draft_ids: jax.Array  # [K] int32: the same tokens, as draft ids

    @property
    def max_pieces(self) -> int:
        return self.pieces.shape[1]

    @property
    def last_piece(self) -> jax.Array:
        """[V_target] the draft token a target token is fed as (its text's last piece;
        a shared token's own draft id)."""
        return jnp.take_along_axis(self.pieces, self.num_pieces[:, None] - 1, 1)[:, 0]


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a `transformers` tokenizer (or itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def token_texts(tokenizer, vocab_size: int) -> list:
    """Each id's text as it reads inside a text (None for special tokens and ids past
    the tokenizer): decoded after an anchor token and cut after it, so
    that byte-level ('Ġ') and SentencePiece ('▁') word-start marks both become the
    space they stand for."""
    backend = _backend(tokenizer)
    special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    anchor = backend.encode("a", add_special_tokens=False).ids[:1]
    if not anchor:
        raise ValueError("the tokenizer cannot encode 'a': cannot read its tokens' texts")
    prefix = backend.decode(anchor, skip_special_tokens=False)
    size = min(vocab_size, backend.get_vocab_size(with_added_tokens=True))
    texts = backend.decode_batch([anchor + [i] for i in range(size)], skip_special_tokens=False)
    out = [t[len(prefix):] if i not in special and t.startswith(prefix) else None
           for i, t in enumerate(texts)]
    return out + [None] * (vocab_size - size)


def _by_text(tokenizer, texts: list) -> dict:
    """text -> the id the tokenizer itself encodes that text as, for texts that are
    one token of its vocabulary (a byte-fallback id whose text is also an ordinary
    token's yields to that one)."""
    backend = _backend(tokenizer)
    usable = [i for i, t in enumerate(texts) if t and "\ufffd" not in t]
    encoded = backend.encode_batch([texts[i] for i in usable], add_special_tokens=False)
    found = {}
    for i, enc in zip(usable, encoded):
        if enc.ids == [i] or texts[i] not in found:
            found[texts[i]] = i
    return found


def token_map(target_tokenizer, draft_tokenizer, target_vocab_size: int,
              draft_vocab_size: int, max_pieces: int = 4) -> TokenMap:
    """The `TokenMap` of a target and a draft tokenizer (`transformers` or `tokenizers`
    objects) over vocabularies of the given sizes (the models' embedding rows).
    A target token's text longer than `max_pieces` draft tokens is cut there (the
    draft then reads less of it: slower, never wrong); a token without text (special
    tokens) reads as the draft's BOS (or id 0)."""
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    target_texts = token_texts(target_tokenizer, target_vocab_size)
    draft_texts = token_texts(draft_tokenizer, draft_vocab_size)
    target_by_text = _by_text(target_tokenizer, target_texts)
    draft_by_text = _by_text(draft_tokenizer, draft_texts)
    shared = sorted((t, draft_by_text[s]) for s, t in target_by_text.items()
                    if s in draft_by_text)
    if not shared:
        raise ValueError("the two tokenizers share no token: nothing can be drafted")
    fallback = getattr(draft_tokenizer, "bos_token_id", None) or 0
    pieces = np.full((target_vocab_size, max_pieces), fallback, np.int32)
    num_pieces = np.ones(target_vocab_size, np.int32)
    with_text = [i for i, t in enumerate(target_texts) if t]
    encoded = _backend(draft_tokenizer).encode_batch([target_texts[i] for i in with_text],
                                                     add_special_tokens=False)
    for i, enc in zip(with_text, encoded):
        ids = [j for j in enc.ids if j < draft_vocab_size][:max_pieces]
        if ids:
            pieces[i, :len(ids)] = ids
            num_pieces[i] = len(ids)
    target_ids, draft_ids = (np.asarray(x, np.int32) for x in zip(*shared))
    pieces[target_ids] = fallback
    pieces[target_ids, 0] = draft_ids  # a shared token is read as itself
    num_pieces[target_ids] = 1
    return TokenMap(pieces, num_pieces, target_ids, draft_ids)


def check_token_map(tmap, target_vocab: int, draft_vocab: int) -> None:
    """Raises unless `tmap` is a `TokenMap` between vocabularies of these sizes."""
    if not isinstance(tmap, TokenMap):
        raise ValueError(f"'token_map' must be a TokenMap (sdjax.drafters.token_map), "
                         f"got {type(tmap).__name__}")
    pieces, counts = np.asarray(tmap.pieces), np.asarray(tmap.num_pieces)
    if pieces.ndim != 2 or pieces.shape[0] != target_vocab or counts.shape != (target_vocab,):
        raise ValueError(f"the token map reads {pieces.shape[0] if pieces.ndim else '?'} "
                         f"target tokens; the target's vocabulary has {target_vocab}")
    if pieces.min() < 0 or pieces.max() >= draft_vocab:
        raise ValueError(f"the token map's pieces must be draft ids in 0..{draft_vocab - 1}")
    if counts.min() < 1 or counts.max() > pieces.shape[1]:
        raise ValueError(f"num_pieces must be in 1..{pieces.shape[1]}")
    target_ids, draft_ids = np.asarray(tmap.target_ids), np.asarray(tmap.draft_ids)
    size = target_ids.shape[0] if target_ids.ndim == 1 else 0
    if draft_ids.shape != (size,):
        raise ValueError(f"the token map pairs {size} target ids with "
                         f"{draft_ids.shape} draft ids")
    check_ids(target_ids, size, target_vocab)
    check_ids(np.sort(draft_ids), size, draft_vocab)
    if np.any(pieces[target_ids, 0] != draft_ids) or np.any(counts[target_ids] != 1):
        raise ValueError("a shared token must read as its own draft id (one piece)")


def with_token_map(draft_params: dict, tmap: TokenMap) -> dict:
    """The draft_params of `CrossVocabDraft`: the draft's variables and the map."""
    return {**draft_params, "token_map": tmap}


def shares_tokenizer(target_tokenizer, draft_tokenizer) -> bool:
    """Whether two tokenizers map the same strings to the same ids (then a plain
    `DraftModel` drafts; otherwise a `CrossVocabDraft`)."""
    return target_tokenizer.get_vocab() == draft_tokenizer.get_vocab()


def models_token_map(target, draft, max_pieces: int = 4) -> TokenMap:
    """The `TokenMap` between two `LoadedModel`s (their tokenizers and vocabularies)."""
    for model, name in ((target, "the target"), (draft, "the draft")):
        if model.tokenizer is None:
            raise ValueError(f"{name} has no tokenizer: drafting across tokenizers needs both")
    return token_map(target.tokenizer, draft.tokenizer, target.config.vocab_size,
                     draft.config.vocab_size, max_pieces)


def load_cross_draft(folder: str, target, dtype: str = "float32", max_pieces: int = 4):
    """(the draft model in `folder`, with its tokenizer; its `TokenMap` to `target`)."""
    draft = load_hf(folder, dtype=dtype)
    return draft, models_token_map(target, draft, max_pieces)


def translate(tokens: jax.Array, lengths: jax.Array, tmap: TokenMap):
    """The draft's text of target tokens [B, S] (the first lengths[b] of each row):
    every token's pieces one after another, [B, S * M] (zero-padded), and their
    count [B]."""
    batch, size = tokens.shape
    width = tmap.max_pieces
    counts = jnp.take(tmap.num_pieces, tokens, mode="clip")
    counts = jnp.where(jnp.arange(size) < lengths[:, None], counts, 0)
    valid = (jnp.arange(width) < counts[..., None]).reshape(batch, size * width)
    slots = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, size * width)  # past: dropped
    pieces = jnp.take(tmap.pieces, tokens, axis=0, mode="clip").reshape(batch, size * width)
    text = jnp.zeros((batch, size * width), jnp.int32).at[
        jnp.arange(batch)[:, None], slots].set(pieces, mode="drop")
    return text, counts.sum(axis=1)


@flax.struct.dataclass
class CrossVocabState:
    """The draft's KV cache over its own text (`window` pieces behind the committed)."""
    cache: KVCache


@dataclasses.dataclass(frozen=True)
class CrossVocabDraft(Drafter):
    """A draft model of another vocabulary (`config`, its own) drafting a chain of
    `num_draft` (or a static `tree`) of the tokens it shares with the target.
    draft_params: `with_token_map(draft variables, token_map(...))`."""

    config: ModelConfig
    num_draft: int = 4
    tree: Optional[TreeShape] = None

    def __post_init__(self):
        super().__post_init__()
        if self.tree is None:
            check_range(self, "num_draft", 1)
        else:
            self.tree.check_level_order()

    @property
    def shape(self) -> TreeShape:
        return self.tree if self.tree is not None else chain(self.num_draft)

    def check(self, cfg: SpecConfig, draft_params) -> None:
        if not isinstance(draft_params, dict) or "token_map" not in draft_params:
            raise ValueError("CrossVocabDraft needs draft_params = with_token_map(the draft's "
                             "variables, token_map(target tokenizer, draft tokenizer, ...))")
        check_token_map(draft_params["token_map"], cfg.model.vocab_size, self.config.vocab_size)
        check_params(self._weights(draft_params), self.config, "draft_params")

    @staticmethod
    def _weights(draft_params) -> dict:
        return {k: v for k, v in draft_params.items() if k not in ("token_map", "input_ids")}

    def bind(self, draft_params, target_params):
        """Adds `input_ids` [V_target], the draft token each target token is fed as,
        gathered once per generate instead of once per cycle."""
        return {**draft_params, "input_ids": draft_params["token_map"].last_piece}

    def _window(self, tmap: TokenMap) -> int:
        """Pieces re-fed each cycle: all one cycle can commit (D drafts, M of the next)."""
        return self.shape.max_depth + tmap.max_pieces

    def init(self, draft_params, prompt_tokens, prompt_lengths, max_len, features=None):
        """Prefills the draft with the prompt's text in its own tokens."""
        tmap = draft_params["token_map"]
        text, length = translate(prompt_tokens, prompt_lengths, tmap)
        batch, size = text.shape
        cache = KVCache.init(self.config, batch,
                             max_len * tmap.max_pieces + self.shape.num_nodes + 1)
        out = Transformer(self.config).apply(
            self._weights(draft_params), text, jnp.broadcast_to(jnp.arange(size), text.shape),
            cache, logits_from=size)
        return CrossVocabState(out.cache.commit(jnp.maximum(length - self._window(tmap), 0)))

    def propose(self, draft_params, state, sequence, seq_len, key, cfg: SpecConfig):
        tmap = draft_params["token_map"]
        window = self._window(tmap)
        text, length = translate(sequence, seq_len, tmap)
        # Catch up: keep what the last window fed, up to `window` pieces short of the
        # committed text (all but the root's last piece, which is the tree's root).
        cache = state.cache
        cache = cache.commit(jnp.maximum(length - 1 - window, 0) - cache.length)
        run = network_forward(Transformer(self.config), self._weights(draft_params))

        def forward(*args):
            logits, hidden, cache = run(*args)
            return jnp.take(logits, tmap.draft_ids, axis=-1), hidden, cache

        cache, tokens, probs, _ = draft_levels(
            forward, self.shape, window, cache, sequence, seq_len, key, cfg,
            cfg.model.vocab_size, vocab_ids=tmap.target_ids, own_text=(text, length),
            input_ids=draft_params["input_ids"])
        return DraftTree(tokens, probs), state.replace(cache=cache)

    def commit(self, state, result, committed_length, features=None):
        """Nothing moves: the window covers every committed piece (see `propose`)."""
        return state
