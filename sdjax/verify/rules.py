"""Verification rules, each a pure function of (target logits, draft tree, key).

The verifier objects at the end (`RejectionSampling`, `BlockVerification`,
`TypicalAcceptance`) are what `SpecConfig.verifier` takes; all are greedy at
temperature 0. `verify_greedy` accepts the deepest node whose whole path equals the
target's argmax. `verify_rejection` is lossless speculative sampling over a tree:
at each node its children are tried in rank order; child x, drawn from q, is
accepted with probability min(1, p(x) / q(x)); after a rejection the target
distribution becomes the residual norm(max(0, p - q)). When no child is accepted
the next token is drawn from the residual; after an accepted leaf it is a bonus
token from the target.

Each rule takes the tree's structure as a `Topology` (per-row arrays, so dynamic
trees work) or a static `TreeShape`.

`draft_probs[i]` is the distribution node i's token was actually drawn from, given
its parent *and its earlier siblings*, which is what makes one rule cover every
multi-draft scheme: i.i.d. siblings (SpecInfer, with replacement) all store the
same q; siblings drawn without replacement store q with the earlier siblings
removed and renormalised (recursive rejection sampling); a deterministic drafter
stores one-hot rows (accept x with probability p(x), else remove it from p). A
chain is Leviathan et al. / Chen et al. speculative sampling.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Union

import jax
import jax.numpy as jnp

from sdjax.config import SpecConfig
from sdjax.protocols import Verifier, VerifyResult
from sdjax.sampling import greedy_tokens, warp_logits
from sdjax.trees import Topology, TreeShape, as_topology
from sdjax.validation import check_range

Tree = Union[TreeShape, Topology]


def _at(values: jax.Array, node: jax.Array) -> jax.Array:
    """values[b, node[b]] for every row."""
    return jnp.take_along_axis(values, node.reshape(-1, *[1] * (values.ndim - 1)), axis=1)[:, 0]


def _result(topo: Topology, node: jax.Array, next_token: jax.Array) -> VerifyResult:
    return VerifyResult(
        path=_at(topo.paths, node),
        num_accepted=_at(topo.depth, node),
        next_token=next_token.astype(jnp.int32),
    )


def _deepest_accepted(accepted: jax.Array, topo: Topology) -> jax.Array:
    """[B] the deepest node whose whole root path is accepted (the root always is);
    among equally deep ones the first, i.e. the best-ranked."""
    accepted = accepted.at[:, 0].set(True)
    path_ok = jnp.all(~topo.ancestor_mask | accepted[:, None, :], axis=-1)
    return jnp.argmax(jnp.where(path_ok, topo.depth, -1), axis=-1)


def _at_parents(values: jax.Array, topo: Topology) -> jax.Array:
    """values[:, parent(i)] for every node i ([B, N, ...]); the root maps to itself."""
    parents = jnp.maximum(topo.parents, 0)
    return jnp.take_along_axis(values, parents.reshape(*parents.shape, *[1] * (values.ndim - 2)),
                               axis=1)


def verify_greedy(logits: jax.Array, tokens: jax.Array, tree: Tree) -> VerifyResult:
    """Longest path of drafted tokens that all equal the target's argmax."""
    topo = as_topology(tree, tokens.shape[0])
    target = greedy_tokens(logits)  # [B, N]: each node's successor
    node = _deepest_accepted(tokens == _at_parents(target, topo), topo)
    return _result(topo, node, _at(target, node))


def verify_typical(target_probs: jax.Array, tokens: jax.Array, tree: Tree,
                   key: jax.Array, epsilon: float, delta: float) -> VerifyResult:
    """Medusa's typical acceptance (lossy): node x is accepted when its parent's target
    distribution p gives p(x) > min(epsilon, delta * exp(-H(p))); the deepest fully
    accepted path wins and the next token is sampled from p at its end."""
    entropy = -jnp.sum(jnp.where(target_probs > 0, target_probs * jnp.log(target_probs), 0.0),
                       axis=-1)  # [B, N]
    topo = as_topology(tree, tokens.shape[0])
    threshold = jnp.minimum(epsilon, delta * jnp.exp(-entropy))
    parent_probs = _at_parents(target_probs, topo)
    token_prob = jnp.take_along_axis(parent_probs, tokens[..., None], axis=-1)[..., 0]
    node = _deepest_accepted(token_prob > _at_parents(threshold, topo), topo)
    return _result(topo, node, jax.random.categorical(key, jnp.log(_at(target_probs, node))))


def verify_block(target_probs: jax.Array, draft_probs: jax.Array, tokens: jax.Array,
                 tree: Tree, key: jax.Array) -> VerifyResult:
    """Block verification (Sun et al., 2024) of a chain X_1..X_g, lossless.

    With weights p_0 = 1, p_i = min(1, p_{i-1} * P_{i-1}(X_i) / Q_{i-1}(X_i)) and
    r_i = sum_x max(0, p_i P_i(x) - Q_i(x)), the chain is cut at the last i with
    eta_i <= h_i, where h_i = r_i / (r_i + 1 - p_i) (h_g = p_g); the next token comes
    from norm(max(0, p_tau P_tau - Q_tau)), or from P_g after a whole accepted chain.
    Here P_i is the target's distribution after X_i and Q_i the draft's (the one X_{i+1}
    was drawn from). Never accepts fewer tokens in expectation than token-wise.
    """
    topo = as_topology(tree, tokens.shape[0])
    if not topo.is_chain:
        raise ValueError("block verification needs a chain, not a tree")
    gamma = topo.num_nodes - 1
    if gamma == 0:
        return _result(topo, jnp.zeros(tokens.shape[:1], jnp.int32),
                       jax.random.categorical(key, jnp.log(target_probs[:, 0])))
    q_next = draft_probs[:, 1:]  # [B, g, V]: Q_0 .. Q_{g-1}
    drafted = tokens[:, 1:, None]
    ratio = (jnp.take_along_axis(target_probs[:, :-1], drafted, -1)[..., 0]
             / jnp.maximum(jnp.take_along_axis(q_next, drafted, -1)[..., 0], 1e-30))

    def weight(prev, r):
        w = jnp.minimum(1.0, prev * r)
        return w, w

    _, weights = jax.lax.scan(weight, jnp.ones(ratio.shape[0]), ratio.T)
    weights = jnp.concatenate([jnp.ones((1, ratio.shape[0])), weights]).T  # [B, g+1]
    residual = jnp.maximum(weights[:, :-1, None] * target_probs[:, :-1] - q_next, 0.0)
    mass = residual.sum(-1)  # [B, g]: r_0 .. r_{g-1}
    denominator = mass[:, 1:] + 1.0 - weights[:, 1:-1]
    h = jnp.where(denominator > 0, mass[:, 1:] / jnp.where(denominator > 0, denominator, 1.0),
                  1.0)
    h = jnp.concatenate([h, weights[:, -1:]], axis=1)  # [B, g]: h_1 .. h_g
    eta_key, token_key = jax.random.split(key)
    stop = jax.random.uniform(eta_key, h.shape) <= h
    steps = jnp.arange(1, gamma + 1)
    tau = jnp.max(jnp.where(stop, steps[None], 0), axis=1)
    index = jnp.minimum(tau, gamma - 1)[:, None, None]
    cut = jnp.take_along_axis(residual, index, axis=1)[:, 0]
    full = jnp.take_along_axis(target_probs, tau[:, None, None], axis=1)[:, 0]
    p = jnp.where((tau < gamma)[:, None] & (cut.sum(-1, keepdims=True) > 0),
                  cut / jnp.maximum(cut.sum(-1, keepdims=True), 1e-30), full)
    return _result(topo, tau, jax.random.categorical(token_key, jnp.log(p)))


def _normalise(x: jax.Array, fallback: jax.Array) -> jax.Array:
    total = x.sum()
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), fallback)


def verify_rejection(
    target_probs: jax.Array,
    draft_probs: jax.Array,
    tokens: jax.Array,
    tree: Tree,
    key: jax.Array,
) -> VerifyResult:
    """Lossless tree verification by (recursive) rejection sampling.

    target_probs [B, N, V]: the (warped) target distribution after each node.
    draft_probs [B, N, V]: the distribution each node was drawn from (row 0 unused).
    tokens [B, N], node 0 being the root.
    """
    topo = as_topology(tree, tokens.shape[0])
    width = topo.children.shape[2]

    def row(p_all, q_all, toks, children, key):
        def try_child(carry, k):
            node, accepted, p = carry
            child = children[node, k]
            x = toks[jnp.maximum(child, 0)]
            q = q_all[jnp.maximum(child, 0)]
            active = (child >= 0) & (accepted < 0)
            u = jax.random.uniform(jax.random.fold_in(key, node * width + k))
            # u < p(x) / q(x) without dividing; a child its q could not produce (q(x) = 0,
            # e.g. fewer tokens in the warped support than siblings) is never taken.
            take = active & (q[x] > 0) & (u * q[x] < p[x])
            residual = _normalise(jnp.maximum(p - q, 0.0), p)
            return (node, jnp.where(take, child, accepted),
                    jnp.where(active & ~take, residual, p)), None

        def step(carry, _):
            node, alive, p = carry
            (_, accepted, p), _ = jax.lax.scan(
                try_child, (node, jnp.where(alive, -1, 0), p), jnp.arange(width))
            moved = alive & (accepted >= 0)
            node = jnp.where(moved, accepted, node)
            return (node, moved, jnp.where(moved, p_all[node], p)), None

        (node, _, p), _ = jax.lax.scan(step, (0, True, p_all[0]), None, length=topo.max_depth)
        key = jax.random.fold_in(key, topo.num_nodes * width + 1)
        return node, jax.random.categorical(key, jnp.log(p))

    keys = jax.random.split(key, tokens.shape[0])
    node, next_token = jax.vmap(row)(target_probs, draft_probs, tokens, topo.children, keys)
    return _result(topo, node, next_token)


def target_probs(logits: jax.Array, cfg: SpecConfig) -> jax.Array:
    """The warped target distribution the sampled output must follow."""
    return jax.nn.softmax(warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), -1)


class SampledVerifier(Verifier):
    """Base of the verifiers here (and a user's own): greedy verification at
    temperature 0; otherwise `sampled` on the warped target distribution."""

    @abc.abstractmethod
    def sampled(self, probs, draft_probs, tokens, tree: Tree, key) -> VerifyResult:
        """The accepted path given target probs [B, N, V] and draft probs [B, N, V]."""

    def __call__(self, logits, tokens, draft_probs, tree: Tree, key, cfg) -> VerifyResult:
        if cfg.temperature == 0.0:
            return verify_greedy(logits, tokens, tree)
        probs = target_probs(logits, cfg)
        if draft_probs is None:  # nothing drafted: only the root's successor matters
            draft_probs = jnp.zeros_like(probs)
        return self.sampled(probs, draft_probs, tokens, tree, key)


@dataclasses.dataclass(frozen=True)
class RejectionSampling(SampledVerifier):
    """Lossless (recursive) rejection sampling over chains and trees. The default."""

    def sampled(self, probs, draft_probs, tokens, tree, key) -> VerifyResult:
        return verify_rejection(probs, draft_probs, tokens, tree, key)


@dataclasses.dataclass(frozen=True)
class BlockVerification(SampledVerifier):
    """Lossless block verification of chains (Sun et al., 2024)."""

    def sampled(self, probs, draft_probs, tokens, tree, key) -> VerifyResult:
        return verify_block(probs, draft_probs, tokens, tree, key)


@dataclasses.dataclass(frozen=True)
class TypicalAcceptance(SampledVerifier):
    """Medusa's typical acceptance: faster, but *not* lossless under sampling (it
    accepts any token the target finds plausible enough). Greedy at temperature 0."""

    epsilon: float = 0.09
    delta: float = 0.3
    lossless = False

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "epsilon", 0, 1)
        check_range(self, "delta", 0, 1)

    def sampled(self, probs, draft_probs, tokens, tree, key) -> VerifyResult:
        return verify_typical(probs, tokens, tree, key, self.epsilon, self.delta)
