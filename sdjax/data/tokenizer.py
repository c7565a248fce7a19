"""A byte-level BPE tokenizer trained on the corpus with the `tokenizers` library.

Saved as a `transformers` fast tokenizer, so `AutoTokenizer.from_pretrained` loads
it and every checkpoint folder can carry it. Byte-level: any text round-trips.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    import transformers

EOS_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    min_frequency: int = 2) -> transformers.PreTrainedTokenizerFast:
    """Trains byte-level BPE with `vocab_size` entries (the EOS token included)."""
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False)


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
    """A saved tokenizer folder, offline."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def encode_corpus(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One token stream: each text followed by EOS (uint16 when the vocabulary fits)."""
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.int32
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return np.concatenate([np.asarray(row + [eos], dtype) for row in ids])
