"""REST's datastore: a corpus in the target's tokenizer and its suffix array, on the device.

Built once on the host (`build_datastore`, `sdjax datastore build`): the corpus's token
ids (int32, so vocabularies over 65,535 work) and the start of every suffix, sorted by
the suffix's first `depth` tokens (prefix doubling with numpy). That
order is all a query of up to `depth` tokens needs: inside the jitted loop,
`match_range` finds the suffixes that start with a query by two binary searches of a
fixed number of steps (no host callback). Saved as a folder: `datastore.safetensors`
(the two arrays) and `datastore.json` (what it was built from, and a fingerprint of the
tokenizer, so a datastore of another tokenizer is refused on load).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from tqdm import tqdm

from sdjax.models.hf import write_safetensors

FORMAT = "sdjax-datastore"
VERSION = 1
ARRAYS, METADATA = "datastore.safetensors", "datastore.json"


@flax.struct.dataclass
class Datastore:
    """REST's draft params: a token corpus and its suffix array (both [T] int32)."""

    tokens: jax.Array
    suffix_array: jax.Array
    depth: int = flax.struct.field(pytree_node=False)  # suffixes sorted by this many tokens
    max_id: int = flax.struct.field(pytree_node=False)  # the largest token id it holds

    @property
    def size(self) -> int:
        return self.tokens.shape[0]


def suffix_array(tokens: np.ndarray, depth: int, progress: bool = False) -> np.ndarray:
    """Start positions of the suffixes of `tokens` (non-negative ids), sorted by their
    first `depth` tokens (a suffix that ends sooner sorts first), at least: prefix
    doubling sorts by the next power of two, ties then by position."""
    tokens = np.asarray(tokens)
    rank = tokens.astype(np.int64)
    order = np.argsort(rank, kind="stable")
    span = 1  # `rank` orders suffixes by their first `span` tokens
    steps = tqdm(total=max(int(np.ceil(np.log2(depth))), 0), desc="suffix array",
                 unit="pass", disable=not progress)
    while span < depth:
        following = np.full_like(rank, -1)  # past the end sorts first
        following[:-span] = rank[span:]
        order = np.lexsort((following, rank))  # stable: ties stay by position
        first, second = rank[order], following[order]
        new = np.empty(len(order), bool)
        new[0] = True
        new[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
        rank = np.empty_like(rank)
        rank[order] = np.cumsum(new) - 1
        span *= 2
        steps.update()
        if rank.max() == len(rank) - 1:  # all distinct: longer prefixes change nothing
            break
    steps.close()
    return order.astype(np.int32)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary (string -> id)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def from_tokens(tokens: np.ndarray, vocab_size: int, depth: int = 16,
                progress: bool = False) -> Datastore:
    """A datastore of a token stream (ids in [0, vocab_size))."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("a datastore needs a non-empty 1-D array of token ids")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"datastore tokens must be integer ids, got {tokens.dtype}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"datastore token ids must be in [0, {vocab_size}); found "
                         f"{tokens.min()}..{tokens.max()}")
    if tokens.size >= 2**31 - depth:
        raise ValueError(f"a datastore holds fewer than 2**31 tokens, got {tokens.size}")
    return Datastore(jnp.asarray(tokens, jnp.int32),
                     jnp.asarray(suffix_array(tokens, depth, progress)), depth,
                     int(tokens.max()))


def save_datastore(folder: str, datastore: Datastore, **metadata) -> None:
    """Writes the arrays and `metadata` (JSON-able: fingerprint, sources...) to `folder`."""
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, ARRAYS), {"tokens": datastore.tokens,
                                                     "suffix_array": datastore.suffix_array})
    info = {"format": FORMAT, "version": VERSION, "depth": datastore.depth,
            "max_id": datastore.max_id, "num_tokens": datastore.size, **metadata}
    with open(os.path.join(folder, METADATA), "w") as f:
        json.dump(info, f, indent=1)


def load_datastore(folder: str, tokenizer=None) -> Datastore:
    """A saved datastore; with `tokenizer`, refuses one built with another tokenizer."""
    paths = [os.path.join(folder, name) for name in (METADATA, ARRAYS)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{folder} is not a datastore (missing {missing[0]}); "
                                "build one with `sdjax datastore build`")
    try:
        with open(paths[0]) as f:
            info = json.load(f)
        arrays = safetensors.numpy.load_file(paths[1])
    except (ValueError, OSError, safetensors.SafetensorError) as e:
        raise ValueError(f"datastore {folder} is corrupt: {e}") from None
    if (not isinstance(info, dict) or info.get("format") != FORMAT
            or info.get("version") != VERSION or not isinstance(info.get("depth"), int)
            or not isinstance(info.get("max_id"), int)):
        raise ValueError(f"{paths[0]} is not a version-{VERSION} sdjax datastore")
    tokens, order = arrays.get("tokens"), arrays.get("suffix_array")
    size = info.get("num_tokens")
    if (tokens is None or order is None or tokens.shape != (size,) or order.shape != (size,)
            or tokens.dtype != np.int32 or order.dtype != np.int32 or size == 0
            or tokens.min() < 0 or tokens.max() != info.get("max_id")
            or order.min() < 0 or order.max() >= size):
        raise ValueError(f"datastore {folder} is corrupt: arrays do not match its metadata")
    if tokenizer is not None and "tokenizer" not in info:
        raise ValueError(f"datastore {folder} does not say which tokenizer built it (saved "
                         "without tokenizer=...); rebuild it with `sdjax datastore build`")
    if tokenizer is not None and info["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"datastore {folder} was built with another tokenizer (model "
                         f"{info.get('model')!r}); rebuild it for this model with "
                         "`sdjax datastore build --model ...`")
    return Datastore(jnp.asarray(tokens), jnp.asarray(order), info["depth"], info["max_id"])


def build_datastore(tokenizer, texts: Sequence[str], depth: int = 16,
                    batch: int = 64) -> Datastore:
    """Tokenizes `texts` (each followed by EOS) and indexes them, with progress bars."""
    from sdjax.data.tokenizer import encode_corpus

    parts = [encode_corpus(tokenizer, texts[i:i + batch])
             for i in tqdm(range(0, len(texts), batch), desc="tokenize", unit="batch")]
    return from_tokens(np.concatenate(parts), len(tokenizer), depth, progress=True)


def write_datastore(folder: str, tokenizer, texts: Sequence[str], depth: int = 16,
                    **metadata) -> Datastore:
    """`build_datastore` saved to `folder` with the tokenizer's fingerprint (what
    `load_datastore` checks) and `metadata`."""
    datastore = build_datastore(tokenizer, texts, depth)
    save_datastore(folder, datastore, tokenizer=tokenizer_fingerprint(tokenizer),
                   num_texts=len(texts), **metadata)
    return datastore


def windows(datastore: Datastore, starts: jax.Array, length: int) -> jax.Array:
    """The `length` tokens from each of `starts` [...]: [..., length], -1 past the end."""
    index = starts[..., None] + jnp.arange(length)
    inside = index < datastore.size
    return jnp.where(inside, datastore.tokens[jnp.where(inside, index, 0)], -1)


def _compare(window: jax.Array, query: jax.Array, length: jax.Array) -> jax.Array:
    """Sign of window vs query [..., Q] over their first `length` [...] tokens."""
    differ = (window != query) & (jnp.arange(query.shape[-1]) < length[..., None])
    first = jnp.argmax(differ, axis=-1)[..., None]
    below = jnp.take_along_axis(window, first, -1) < jnp.take_along_axis(query, first, -1)
    return jnp.where(differ.any(-1), jnp.where(below[..., 0], -1, 1), 0)


def match_range(datastore: Datastore, query: jax.Array, length: jax.Array):
    """(lo, hi) [...]: the suffix-array rows lo..hi-1 are the suffixes that start with
    query[..., :length] (query [..., Q], Q <= the datastore's depth)."""
    size = datastore.size

    def first_row(after_equal: bool):
        # The first row whose suffix is >= the query (> the query with after_equal).
        def halve(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2  # lo + hi would overflow int32 past 2**30 tokens
            window = windows(datastore, datastore.suffix_array[jnp.minimum(mid, size - 1)],
                             query.shape[-1])
            sign = _compare(window, query, length)
            right = (lo < hi) & ((sign < 0) | (after_equal & (sign == 0)))
            return jnp.where(right, mid + 1, lo), jnp.where(right | (lo >= hi), hi, mid)

        start = (jnp.zeros(length.shape, jnp.int32), jnp.full(length.shape, size, jnp.int32))
        return jax.lax.fori_loop(0, size.bit_length(), halve, start)[0]

    return first_row(False), first_row(True)

