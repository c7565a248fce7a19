"""The testbed corpus: every `.py` file of the running interpreter's standard library.

Real code no one here wrote, present on every machine. Files (not lines) are split
deterministically by a hash of their path relative to the stdlib root, so the same
file lands in the same split on every machine with the same Python version:

    bucket = int(sha1(relative_path)[:8], 16) % 100
    train: bucket < 90    validation: 90 <= bucket < 95    benchmark: bucket >= 95

site-packages (third-party code) is excluded. Different Python versions ship
different files, so figures are comparable only on the same Python minor version.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from typing import Dict, List, Optional

SPLITS: Dict[str, range] = {"train": range(0, 90), "validation": range(90, 95),
                            "benchmark": range(95, 100)}


def stdlib_root() -> str:
    """The running interpreter's standard-library folder."""
    return sysconfig.get_paths()["stdlib"]


def split_of(relative_path: str) -> str:
    """The split a file belongs to, from its path relative to the stdlib root."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def corpus_files(split: str, root: Optional[str] = None) -> List[str]:
    """Sorted absolute paths of the split's files."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    root = root or stdlib_root()
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if d not in ("site-packages", "__pycache__"))
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                if split_of(os.path.relpath(path, root)) == split:
                    found.append(path)
    if not found:
        raise FileNotFoundError(f"no .py files for split {split!r} under {root}")
    return sorted(found)


def read_split(split: str, root: Optional[str] = None) -> List[str]:
    """The split's file contents (undecodable bytes replaced), in file order."""
    texts = []
    for path in corpus_files(split, root):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return texts
