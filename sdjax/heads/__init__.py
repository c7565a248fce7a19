"""Self-drafting heads on the target's hidden states: Medusa-1, Hydra, EAGLE-1/2/3.

`init_heads` / `init_eagle` start them from the target, `sdjax train heads` trains
them, `save_heads` / `load_heads` move them as a folder, and the drafters
`Medusa(cfg, tree)`, `Hydra(cfg, tree)`, `Eagle(cfg, tree)` (static tree) and
`Eagle2(cfg, ...)` (dynamic tree) run them (`draft_params=` the saved params);
`make_drafter(cfg)` picks the drafter of the kind with default settings.
"""

from typing import Optional

from sdjax import trees

from sdjax.heads.common import HeadsConfig, heads_module, init_heads, load_heads, save_heads
from sdjax.heads.eagle import EagleConfig, EagleNet, eagle_config, init_eagle
from sdjax.heads.eagle_drafters import DEFAULT_EAGLE_TREE, Eagle, Eagle2
from sdjax.heads.hydra import Hydra, HydraHeads
from sdjax.heads.medusa import Medusa, MedusaHeads

__all__ = ["DEFAULT_EAGLE_TREE", "DEFAULT_TREE", "Eagle", "Eagle2", "EagleConfig", "EagleNet",
           "HeadsConfig", "Hydra", "HydraHeads", "Medusa", "MedusaHeads", "eagle_config",
           "heads_module", "init_eagle", "init_heads", "load_heads", "make_drafter",
           "save_heads"]


# The default choice tree (8 nodes, depth 3): the top 3 of the first head, top 2 below
# the best, the best path one level deeper. Shallower heads get a chain.
DEFAULT_TREE = trees.from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0],
                                   [0, 0, 1]])


def make_drafter(cfg, tree: Optional[trees.TreeShape] = None):
    """The drafter for heads of `cfg.kind`: Medusa / Hydra on `tree` (default:
    DEFAULT_TREE if deep enough), EAGLE drafts on EAGLE-2's dynamic tree, or on `tree`
    (EAGLE-1) when one is given."""
    if isinstance(cfg, EagleConfig):
        return Eagle2(cfg) if tree is None else Eagle(cfg, tree)
    if tree is None:
        tree = DEFAULT_TREE if cfg.num_heads >= DEFAULT_TREE.max_depth else trees.chain(
            cfg.num_heads)
    return {"medusa": Medusa, "hydra": Hydra}[cfg.kind](cfg, tree)
