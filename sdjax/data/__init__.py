"""The testbed corpus (the Python standard library's source) and its tokenizer."""

from sdjax.data.corpus import SPLITS, corpus_files, read_split, split_of, stdlib_root
from sdjax.data.streams import prepare_corpus
from sdjax.data.tokenizer import EOS_TOKEN, encode_corpus, load_tokenizer, train_tokenizer

__all__ = [
    "SPLITS", "corpus_files", "read_split", "split_of", "stdlib_root",
    "EOS_TOKEN", "encode_corpus", "load_tokenizer", "prepare_corpus", "train_tokenizer",
]
