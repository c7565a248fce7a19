"""Token streams for training: the corpus splits encoded once and cached as .npy."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sdjax.data.corpus import check_source, read_split
from sdjax.data.tokenizer import encode_corpus, load_tokenizer, train_tokenizer


def prepare_corpus(tokenizer_dir: str, vocab_size: int, output: str,
                   sources: Sequence[str] = ("stdlib",)):
    """Tokenizer (loaded, or trained on the stdlib's train split into `tokenizer_dir`)
    and the train / validation token streams of `sources` (one after the other),
    each source's cached under `output`/data."""
    for source in sources:
        check_source(source)
    if os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        print(f"training a {vocab_size}-entry BPE tokenizer on the train split "
              f"into {tokenizer_dir}...")
        tokenizer = train_tokenizer(read_split("train"), vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    streams = {}
    for split in ("train", "validation"):
        parts = []
        for source in sources:
            path = os.path.join(output, "data", f"{source}-{split}.npy")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.save(path, encode_corpus(tokenizer, read_split(split, source=source)))
            parts.append(np.load(path))
        streams[split] = np.concatenate(parts)
    return tokenizer, streams
