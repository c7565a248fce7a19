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
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        data.corpus_files("train", source="wiki")


def test_the_docs_corpus_reads_markdown_and_gzipped_markdown(tmp_path):
    import gzip

    root = tmp_path / "doc"
    (root / "pkg").mkdir(parents=True)
    texts = {f"pkg/guide{i}.md": f"# Guide {i}\n\nSome prose, naïve café.\n" for i in range(40)}
    for name, text in texts.items():
        if name.endswith(("1.md", "2.md")):
            with gzip.open(root / (name + ".gz"), "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (root / name).write_text(text)
    (root / "pkg" / "notes.txt").write_text("not markdown")
    read = {split: data.read_split(split, str(root), source="docs") for split in data.SPLITS}
    assert sorted(sum(read.values(), [])) == sorted(texts.values())  # .md.gz gunzipped
    files = data.corpus_files("train", str(root), source="docs")
    assert all(data.split_of(f[len(str(root)) + 1:]) == "train" for f in files)


def test_prepare_corpus_concatenates_sources(tmp_path, monkeypatch):
    from sdjax import testbed
    from sdjax.data import corpus

    docs = tmp_path / "doc"
    docs.mkdir()
    for i in range(30):
        (docs / f"page{i}.md").write_text(f"Page {i}: English prose about nothing.\n")
    monkeypatch.setitem(corpus.SOURCES, "docs", (str(docs), (".md", ".md.gz")))
    monkeypatch.setitem(corpus.SOURCES, "stdlib", (str(docs), (".md",)))  # small and fast
    _, code = data.prepare_corpus(testbed.path("target"), 0, str(tmp_path / "a"), ("stdlib",))
    _, both = data.prepare_corpus(testbed.path("target"), 0, str(tmp_path / "b"),
                                  ("stdlib", "docs"))
    for split in ("train", "validation"):
        np.testing.assert_array_equal(both[split], np.concatenate([code[split]] * 2))
    with pytest.raises(ValueError, match="unknown corpus"):
        data.prepare_corpus(testbed.path("target"), 0, str(tmp_path / "c"), ("web",))


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
