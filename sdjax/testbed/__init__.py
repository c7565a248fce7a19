"""The bundled testbed: a target and a draft model trained by sdjax on the stdlib corpus.

Ordinary Hugging Face checkpoint folders (bf16 safetensors + tokenizer), so
`transformers` loads them too. How they were made: BENCHMARKS.md, "Testbed", and
configs/train/testbed_{target,draft}.yaml.
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = ("target", "draft")
# drafts trained on the target (sdjax.heads)
HEADS = ("medusa", "hydra", "mlp_speculator", "redrafter", "eagle", "eagle3", "kangaroo")


def path(name: str) -> str:
    """The folder of a bundled model ('target', 'draft') or draft heads (HEADS)."""
    if name not in MODELS + HEADS:
        raise ValueError(f"unknown testbed model {name!r}; choose one of {MODELS + HEADS}")
    folder = os.path.join(ROOT, name)
    marker = "config.json" if name in MODELS else "heads_config.json"
    if not os.path.exists(os.path.join(folder, marker)):
        command = "lm" if name in MODELS else "heads"
        raise FileNotFoundError(
            f"the bundled testbed {name} is missing from {folder}; reinstall sdjax or "
            f"rebuild it with `sdjax train {command} --config "
            f"configs/train/testbed_{name}.yaml`")
    return folder
