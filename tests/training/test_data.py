"""The stdlib corpus split and the BPE tokenizer trained on it."""

import numpy as np
import pytest

from sdjax import data
from tests.hf_models import stdlib_source


def test_splits_are_a_fixed_hash_and_cover_the_stdlib():
    files = {split: data.corpus_files(split) for split in data.SPLITS}
    total = sum(len(f) for f in files.values())
    assert len(files["train"]) > 0.8 * total
    assert len(files["benchmark"]) > 0.02 * total
    # The rule is a fixed hash of the relative path, the same on every machine.
    assert {name: data.split_of(name) for name in ("json/decoder.py", "m0.py", "m1.py",
                                                   "m6.py")} == {
        "json/decoder.py": "train", "m0.py": "benchmark", "m1.py": "train",
        "m6.py": "validation"}
    assert not any("site-packages" in p for p in files["train"])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        data.corpus_files("test")


def test_tokenizer_round_trips_real_source(tmp_path):
    tokenizer = data.train_tokenizer([stdlib_source("textwrap", "shlex")], 400)
    tokenizer.save_pretrained(tmp_path)
    loaded = data.load_tokenizer(str(tmp_path))
    assert len(loaded) == 400
    # Held-out files, one with non-ASCII text: byte-level BPE loses nothing.
    for text in (stdlib_source("json.decoder", "calendar"), "naïve café ✓ 漢字\n\tx = 1\n"):
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
        assert len(ids) < len(text.encode())  # it does compress
    stream = data.encode_corpus(loaded, ["a = 1", "b = 2"])
    assert stream.dtype == np.uint16
    assert (stream == loaded.eos_token_id).sum() == 2
    assert stream[-1] == loaded.eos_token_id
