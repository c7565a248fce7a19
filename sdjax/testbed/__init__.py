"""The bundled testbed: a target and a draft model trained by sdjax on the stdlib corpus.

Ordinary Hugging Face checkpoint folders (bf16 safetensors + tokenizer), so
`transformers` loads them too. How they were made: BENCHMARKS.md, "Testbed", and
configs/train/testbed_{target,draft}.yaml.
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = ("target", "draft")


def path(name: str) -> str:
    """The checkpoint folder of a bundled model ('target' or 'draft')."""
    if name not in MODELS:
        raise ValueError(f"unknown testbed model {name!r}; choose one of {MODELS}")
    folder = os.path.join(ROOT, name)
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise FileNotFoundError(
            f"the bundled testbed {name} is missing from {folder}; reinstall sdjax or "
            f"rebuild it with `sdjax train lm --config configs/train/testbed_{name}.yaml`")
    return folder
