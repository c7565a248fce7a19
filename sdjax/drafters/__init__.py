"""Drafters: what proposes the tokens the target then verifies.

Every drafter is a frozen (hashable) dataclass with a static `shape` (TreeShape)
and three pure methods, called inside the jitted loop:

- `init(draft_params, prompt_tokens, prompt_lengths, max_len, features) -> state`
- `propose(draft_params, state, sequence, seq_len, key, cfg) -> (DraftTree, state)`
- `commit(state, result, committed_length, features) -> state`

`features` are the target's final hidden states [B, T, D] of the forward that
precedes the call (the prefill's, then each verification's over the tree nodes), or
the layers a drafter names in `feature_layers`, side by side (EAGLE-3): what
self-drafting heads (Medusa, Hydra, EAGLE) draft from; other drafters ignore them.
A drafter whose tree changes per cycle has a `DynamicShape` as `shape` and returns
the tree's `Topology` in `DraftTree.topology`. Optional: `bind(draft_params,
target_params)`, the params `propose` sees (EAGLE joins the target's embedding in).

`sequence[B, L]` holds each row's prompt and generated tokens, `seq_len[B]` how many;
the last one is the root of the tree (committed, its KV not yet in the cache).
Drafters with models of their own also have `check(cfg, draft_params)`, which
`generate` calls first to reject mismatched vocabularies or missing parameters.
"""

from sdjax.drafters.base import Autoregressive, DraftTree
from sdjax.drafters.draft_model import DraftModel
from sdjax.drafters.ensemble import Ensemble
from sdjax.drafters.prompt_lookup import PromptLookup

__all__ = ["Autoregressive", "DraftModel", "DraftTree", "Ensemble", "PromptLookup"]
