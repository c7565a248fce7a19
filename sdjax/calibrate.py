"""Measures a (target, drafter) pair's acceptance by sibling rank, for Sequoia trees.

    acceptance = sdjax.calibrate.rank_acceptance(params, prompts, cfg, draft_params=...)
    tree = sdjax.trees.sequoia(acceptance, num_nodes=32, max_depth=8)
    cfg = cfg.replace(drafter=dataclasses.replace(cfg.drafter, tree=tree))

The drafter (one with a `tree` field, such as `DraftModel`) proposes a one-level
tree of `width` children each cycle; acceptance[k] is the fraction of cycles in
which the k-th ranked child was the accepted one — Sequoia's positional
acceptance, under the same temperature and verifier as `cfg`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sdjax import trees
from sdjax.config import SpecConfig
from sdjax.decode import Prompt, generate


def rank_acceptance(params, prompts: Prompt, cfg: SpecConfig, *, width: int = 8,
                    draft_params=None, tokenizer=None) -> np.ndarray:
    """[width] probability that the k-th ranked draft child is the accepted one."""
    if cfg.drafter is None or not any(f.name == "tree" for f in dataclasses.fields(cfg.drafter)):
        raise ValueError("calibration needs a drafter that drafts trees (e.g. DraftModel)")
    drafter = dataclasses.replace(cfg.drafter, tree=trees.kary(width, 1))
    out = generate(params, prompts, cfg.replace(drafter=drafter), draft_params=draft_params,
                   tokenizer=tokenizer)
    counts = out.stats["first_rank_hist"].sum(axis=0)
    return counts[:width] / max(counts.sum(), 1)
