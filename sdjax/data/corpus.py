"""The corpora: real text no one here wrote, present on these machines.

- `stdlib` (code): every `.py` file of the running interpreter's standard library
  (site-packages, i.e. third-party code, excluded). The testbed's corpus.
- `docs` (English prose): the Markdown documentation the system's package manager
  installed under /usr/share/doc (`.md` and `.md.gz`; on these machines mostly
  Node.js's API reference, ~14 MB).

Files (not lines) are split deterministically by a hash of their path relative to
the source's root, so the same file lands in the same split on every machine with
the same Python version / packages:

    bucket = int(sha1(relative_path)[:8], 16) % 100
    train: bucket < 90    validation: 90 <= bucket < 95    benchmark: bucket >= 95

Different Python versions (and system packages) ship different files, so figures are
comparable only on the same Python minor version and image.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sysconfig
from typing import Dict, List, Optional, Tuple

SPLITS: Dict[str, range] = {"train": range(0, 90), "validation": range(90, 95),
                            "benchmark": range(95, 100)}


def stdlib_root() -> str:
    """The running interpreter's standard-library folder."""
    return sysconfig.get_paths()["stdlib"]


DOCS_ROOT = "/usr/share/doc"
# source name -> (its root folder, the file endings it reads)
SOURCES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "stdlib": (stdlib_root(), (".py",)),
    "docs": (DOCS_ROOT, (".md", ".md.gz")),
}


def split_of(relative_path: str) -> str:
    """The split a file belongs to, from its path relative to the stdlib root."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def check_source(source: str) -> None:
    """Raises ValueError for a corpus name not in SOURCES."""
    if source not in SOURCES:
        raise ValueError(f"unknown corpus {source!r}; choose from {tuple(SOURCES)}")


def corpus_files(split: str, root: Optional[str] = None, source: str = "stdlib") -> List[str]:
    """Sorted absolute paths of the split's files of `source` (under `root`, by
    default the source's own)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    check_source(source)
    default_root, endings = SOURCES[source]
    root = root or default_root
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if d not in ("site-packages", "__pycache__"))
        for name in names:
            if name.endswith(endings):
                path = os.path.join(folder, name)
                if split_of(os.path.relpath(path, root)) == split:
                    found.append(path)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(endings)} files for split {split!r} under "
                                f"{root}")
    return sorted(found)


def read_text(path: str) -> str:
    """A corpus file's contents (gunzipped; undecodable bytes replaced)."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def read_split(split: str, root: Optional[str] = None, source: str = "stdlib") -> List[str]:
    """The split's file contents (gunzipped; undecodable bytes replaced), in file order."""
    return [read_text(path) for path in corpus_files(split, root, source)]
