"""Self-drafting heads on the target's hidden state: Medusa-1 and Hydra.

`init_heads` starts them from the target (LM heads copied), `sdjax train heads`
trains them, `save_heads` / `load_heads` move them as a folder, and the drafters
`Medusa(cfg, tree)` / `Hydra(cfg, tree)` run them (`draft_params=` the head params);
`make_drafter(cfg)` picks the drafter of the kind with a default tree.
"""

from typing import Optional

from sdjax import trees

from sdjax.heads.common import HeadsConfig, heads_module, init_heads, load_heads, save_heads
from sdjax.heads.hydra import Hydra, HydraHeads
from sdjax.heads.medusa import Medusa, MedusaHeads

__all__ = ["DEFAULT_TREE", "HeadsConfig", "Hydra", "HydraHeads", "Medusa", "MedusaHeads",
           "heads_module", "init_heads", "load_heads", "make_drafter", "save_heads"]


# The default choice tree (8 nodes, depth 3): the top 3 of the first head, top 2 below
# the best, the best path one level deeper. Shallower heads get a chain.
DEFAULT_TREE = trees.from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0],
                                   [0, 0, 1]])


def make_drafter(cfg: HeadsConfig, tree: Optional[trees.TreeShape] = None):
    """The drafter for heads of `cfg.kind`, on `tree` (default: DEFAULT_TREE if deep enough)."""
    if tree is None:
        tree = DEFAULT_TREE if cfg.num_heads >= DEFAULT_TREE.max_depth else trees.chain(
            cfg.num_heads)
    return {"medusa": Medusa, "hydra": Hydra}[cfg.kind](cfg, tree)
