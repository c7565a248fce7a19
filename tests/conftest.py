"""Test set-up: 8 simulated CPU devices (for the mesh tests) and shared fixtures.

XLA_FLAGS must be set before jax is imported anywhere, so it happens here, first.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests import hf_models  # noqa: E402

_cleared_at = [0]


@pytest.fixture(autouse=True)
def _drop_executables():
    """Every XLA:CPU executable holds hundreds of memory mappings; a suite that keeps
    a few hundred alive crashes on the kernel's map limit (vm.max_map_count). So
    every 24 decode compilations, all executables (JAX's caches too) are dropped."""
    yield
    import jax

    from sdjax import decode
    if decode.compile_count() - _cleared_at[0] >= 24:
        decode.clear_compiled()
        jax.clear_caches()
        _cleared_at[0] = decode.compile_count()


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """Tiny random-weight checkpoints written by `transformers` itself, by name."""
    root = tmp_path_factory.mktemp("hf")
    return {name: hf_models.write_checkpoint(name, str(root / name)) for name in hf_models.SPECS}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained on real Python source, saved for AutoTokenizer."""
    path = str(tmp_path_factory.mktemp("tokenizer"))
    hf_models.train_tokenizer(path, vocab_size=300)
    return path
