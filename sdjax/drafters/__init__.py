"""Drafters: what proposes the tokens the target then verifies.

Every drafter implements `sdjax.protocols.Drafter`: a frozen (hashable) dataclass with
a static `shape` and pure `init`, `propose`, `commit` (optional `check`, `bind`,
`feature_layers`, with defaults in the base), called inside the jitted loop. A
drafter whose tree changes per cycle has a `DynamicShape` as `shape` and returns the
tree's `Topology` in `DraftTree.topology`. `sdjax.drafters.levels` holds the
level-by-level tree drafting that every draft network with a KV cache shares; a
drafter's device-resident data (REST's `Datastore`) is its draft params. A drafter
made of the target's own layers (`SelfDraft`) drafts over the target's cache
(`reads_target_cache`) instead of keeping one. A drafter may also have the verify
forward score tokens that are not drafts (`num_extra`, `DraftTree.extra`: Lookahead's
Jacobi window) and read their logits back in `commit`. A draft model with a tokenizer of
its own drafts the tokens it shares with the target (`CrossVocabDraft`, `token_map`).
"""

from sdjax.drafters.base import Autoregressive
from sdjax.drafters.cross_vocab import CrossVocabDraft, TokenMap, token_map, with_token_map
from sdjax.drafters.datastore import (
    Datastore,
    build_datastore,
    load_datastore,
    save_datastore,
    write_datastore,
)
from sdjax.drafters.draft_model import DraftModel
from sdjax.drafters.ensemble import Ensemble
from sdjax.drafters.lookahead import Lookahead
from sdjax.drafters.prompt_lookup import PromptLookup
from sdjax.drafters.rest import Rest
from sdjax.drafters.self_draft import SelfDraft
from sdjax.protocols import Drafter, DraftTree

__all__ = ["Autoregressive", "CrossVocabDraft", "Datastore", "DraftModel", "DraftTree", "Drafter",
           "Ensemble", "Lookahead", "PromptLookup", "Rest", "SelfDraft", "TokenMap",
           "build_datastore", "load_datastore", "save_datastore", "token_map", "with_token_map",
           "write_datastore"]
