"""Shared by the training tests: a tiny model shape and a small real-source corpus."""

import pytest

from sdjax import data
from tests.hf_models import stdlib_source

TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, tie_embeddings=True)


@pytest.fixture(scope="session")
def corpus():
    """(tokenizer, train stream, validation stream) from stdlib modules."""
    tokenizer = data.train_tokenizer([stdlib_source("textwrap", "shlex")], 300)
    train = data.encode_corpus(tokenizer, [stdlib_source("textwrap", "shlex", "string")])
    val = data.encode_corpus(tokenizer, [stdlib_source("json.decoder")])
    return tokenizer, train, val
