"""Self-drafting heads on the target's hidden states: Medusa-1, Hydra, the MLP
speculator, ReDrafter's recurrent head, EAGLE-1/2/3 and Kangaroo's adapter (each
optionally over a reduced draft vocabulary).

`init_heads` starts them from the target, `sdjax train heads` trains them,
`save_heads` / `load_heads` move them as a folder, and the drafters
`Medusa(cfg, tree)`, `Hydra(cfg, tree)`, `MLPSpeculator(cfg, tree)`,
`ReDrafter(cfg, beam_width=...)` (beam search), `Eagle(cfg, tree)`
(static tree), `Eagle2(cfg, ...)` (dynamic tree) and `Kangaroo(adapter=cfg, ...)` run
them (`draft_params=` the saved params);
`make_drafter(cfg)` picks the drafter of the kind with default settings.
`registry.KINDS` says everything else sdjax knows about each kind.
"""

from sdjax.heads.common import HeadsConfig
from sdjax.heads.eagle import EagleConfig, EagleNet, eagle_config, init_eagle
from sdjax.heads.eagle_drafters import DEFAULT_EAGLE_TREE, Eagle, Eagle2
from sdjax.heads.hydra import Hydra, HydraHeads
from sdjax.heads.kangaroo import Kangaroo, KangarooConfig, init_kangaroo, kangaroo_config
from sdjax.heads.medusa import Medusa, MedusaHeads
from sdjax.heads.mlp_speculator import MLPSpeculator, MLPSpeculatorHeads
from sdjax.heads.redrafter import ReDrafter, ReDrafterHead
from sdjax.heads.registry import (
    DEFAULT_TREE,
    KINDS,
    HeadKind,
    bench_drafters,
    head_kind,
    heads_module,
    init_heads,
    load_heads,
    make_drafter,
    save_heads,
)

__all__ = ["DEFAULT_EAGLE_TREE", "DEFAULT_TREE", "KINDS", "Eagle", "Eagle2", "EagleConfig",
           "EagleNet", "HeadKind", "HeadsConfig", "Hydra", "HydraHeads", "Kangaroo",
           "KangarooConfig", "MLPSpeculator", "MLPSpeculatorHeads", "Medusa", "MedusaHeads",
           "ReDrafter", "ReDrafterHead",
           "bench_drafters", "eagle_config", "head_kind", "heads_module", "init_eagle",
           "init_heads", "init_kangaroo", "kangaroo_config", "load_heads", "make_drafter",
           "save_heads"]
