"""Lossless verification, checked statistically with bounds that can fail.

Every check compares an empirical distribution of N draws with the exact target by
total variation, against the distribution-free bound sqrt((V ln 2 + ln(1/delta)) / 2N)
with delta = 1e-6; negative controls (known-wrong rules) must exceed the same bound.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdjax import trees
from sdjax.verify import verify_block, verify_greedy, verify_rejection, verify_typical
from tests import stats
from tests.stats import tv

V = 16
DRAWS = 200_000


def tv_bound(n=DRAWS, v=V):
    return stats.tv_bound(n, v)


def peaked(seed, zeros=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.3))
    if zeros:
        p[rng.choice(V, zeros, replace=False)] = 0
    return p / p.sum()


CASES = {
    "peaked": (peaked(1), peaked(2)),
    "equal": (peaked(3), peaked(3)),
    "disjoint": (np.r_[np.full(8, 1 / 8), np.zeros(8)], np.r_[np.zeros(8), np.full(8, 1 / 8)]),
    "one_hot_q": (peaked(4), np.eye(V)[3]),
    "zeros_in_p": (peaked(5, zeros=6), peaked(6)),
}


def first_token(result, tokens):
    """The first emitted token: the first accepted draft, else the correction."""
    first_draft = jnp.take_along_axis(tokens, result.path[:, 1:2], axis=1)[:, 0]
    return np.asarray(jnp.where(result.num_accepted > 0, first_draft, result.next_token))


@jax.jit
def run_chain(p, p_after, q, key):
    """gamma = 1 chain: draft x ~ q, verify against p; p_after follows an accepted x."""
    k_draft, k_verify = jax.random.split(key)
    x = jax.random.categorical(k_draft, jnp.log(q), shape=(DRAWS,)).astype(jnp.int32)
    tokens = jnp.stack([jnp.zeros_like(x), x], axis=1)
    target = jnp.broadcast_to(jnp.stack([p, p_after]), (DRAWS, 2, V))
    draft = jnp.broadcast_to(jnp.stack([q, q]), (DRAWS, 2, V))
    return verify_rejection(target, draft, tokens, trees.chain(1), k_verify), tokens


@pytest.mark.parametrize("case", sorted(CASES))
def test_chain_emits_the_target_distribution(case):
    p, q = (jnp.asarray(a, jnp.float32) for a in CASES[case])
    p_after = jnp.asarray(peaked(7), jnp.float32)
    result, tokens = run_chain(p, p_after, q, jax.random.PRNGKey(0))
    assert tv(first_token(result, tokens), np.asarray(p)) < tv_bound()
    accepted = np.asarray(result.num_accepted) == 1
    bonus = np.asarray(result.next_token)[accepted]
    correction = np.asarray(result.next_token)[~accepted]
    if accepted.sum() > 1000:  # after an accepted draft: a bonus token from p_after
        assert tv(bonus, np.asarray(p_after)) < tv_bound(len(bonus))
    if (~accepted).sum() > 1000:  # after a rejection: the residual norm(max(0, p - q))
        residual = np.maximum(np.asarray(p) - np.asarray(q), 0)
        assert tv(correction, residual / residual.sum()) < tv_bound(len(correction))


def test_acceptance_rate_is_one_minus_tv():
    p, q = (jnp.asarray(a, jnp.float32) for a in CASES["peaked"])
    result, _ = run_chain(p, p, q, jax.random.PRNGKey(1))
    expected = 1 - 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum()
    assert abs(np.asarray(result.num_accepted).mean() - expected) < 5 / math.sqrt(DRAWS)


def test_negative_controls_fail_the_same_check():
    p, q = (np.asarray(a) for a in CASES["peaked"])
    rng = np.random.default_rng(0)
    x = rng.choice(V, DRAWS, p=q)
    from_p = rng.choice(V, DRAWS, p=p)
    u = rng.random(DRAWS)
    residual = np.maximum(p - q, 0) / np.maximum(p - q, 0).sum()
    always_accept = x
    ignore_q = np.where(u < p[x], x, from_p)
    resample_from_p = np.where(u < np.minimum(1, p[x] / q[x]), x, from_p)
    correct = np.where(u < np.minimum(1, p[x] / q[x]), x, rng.choice(V, DRAWS, p=residual))
    assert tv(correct, p) < tv_bound()
    for wrong in (always_accept, ignore_q, resample_from_p):
        assert tv(wrong, p) > tv_bound()
    # The library's rule, fed the inputs that turn it into these bugs, fails too.
    pj, qj = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    result, tokens = run_chain(qj, pj, qj, jax.random.PRNGKey(2))  # sees p = q: accepts all
    assert tv(first_token(result, tokens), p) > tv_bound()


def draw_siblings(q, k, mode, key):
    """K siblings from q and, for each, the distribution it was drawn from."""
    keys = jax.random.split(key, k)
    tokens, dists = [], []
    current = q
    for i in range(k):
        if mode == "deterministic":
            x = jnp.full((DRAWS,), i * 5 % V, jnp.int32)
            dist = jnp.broadcast_to(jax.nn.one_hot(i * 5 % V, V), (DRAWS, V))
        else:
            dist = jnp.broadcast_to(current, (DRAWS, V))
            x = jax.random.categorical(keys[i], jnp.log(dist)).astype(jnp.int32)
            if mode == "without_replacement":
                current = dist.at[jnp.arange(DRAWS), x].set(0.0)
                current = current / current.sum(-1, keepdims=True)
        tokens.append(x)
        dists.append(dist)
    return jnp.stack(tokens, 1), jnp.stack(dists, 1)


@pytest.mark.parametrize("mode,case", [
    (mode, case) for mode in ("with_replacement", "without_replacement", "deterministic")
    for case in ("peaked", "zeros_in_p", "one_hot_q")
    if (mode, case) != ("without_replacement", "one_hot_q")  # one token to draw
])
def test_tree_of_three_siblings_emits_the_target(mode, case):
    p, q = (jnp.asarray(a, jnp.float32) for a in CASES[case])
    shape = trees.kary(3, 1)
    kids, dists = draw_siblings(q, 3, mode, jax.random.PRNGKey(3))
    tokens = jnp.concatenate([jnp.zeros((DRAWS, 1), jnp.int32), kids], 1)
    draft = jnp.concatenate([dists[:, :1], dists], 1)
    target = jnp.broadcast_to(jnp.stack([p] + [jnp.asarray(peaked(8 + i)) for i in range(3)]),
                              (DRAWS, 4, V))
    result = jax.jit(verify_rejection, static_argnums=3)(target, draft, tokens, shape,
                                                         jax.random.PRNGKey(4))
    assert tv(first_token(result, tokens), np.asarray(p)) < tv_bound()


def test_depth_two_tree_sequence_distribution():
    """Two levels of a 2-ary tree: the first two emitted tokens follow p(a) p(b | a)."""
    shape = trees.kary(2, 2)  # nodes: 0; 1, 2; 3, 4 (under 1); 5, 6 (under 2)
    rng = np.random.default_rng(9)
    v = 4
    p_root = rng.dirichlet(np.ones(v))
    p_next = rng.dirichlet(np.ones(v), size=v)  # p(b | a)
    q_root = rng.dirichlet(np.ones(v))
    q_next = rng.dirichlet(np.ones(v), size=v)
    key = jax.random.PRNGKey(5)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    a1 = jax.random.categorical(k1, jnp.log(q_root), shape=(DRAWS,))
    a2 = jax.random.categorical(k2, jnp.log(q_root), shape=(DRAWS,))  # i.i.d. siblings
    b = [jax.random.categorical(k, jnp.log(jnp.asarray(q_next))[a], shape=(2, DRAWS))
         for k, a in ((k3, a1), (k4, a2))]
    tokens = jnp.stack([jnp.zeros_like(a1), a1, a2, b[0][0], b[0][1], b[1][0], b[1][1]], 1)
    parent_token = jnp.stack([a1, a1, a2, a1, a1, a2, a2], 1)  # context of each node's p
    target = jnp.asarray(p_next, jnp.float32)[parent_token].at[:, 0].set(p_root)
    draft = jnp.asarray(q_next, jnp.float32)[parent_token]
    draft = draft.at[:, 0].set(q_root).at[:, 1].set(q_root).at[:, 2].set(q_root)
    target = target.astype(jnp.float32)
    result = jax.jit(verify_rejection, static_argnums=3)(target, draft, tokens.astype(jnp.int32),
                                                         shape, k5)
    path_tokens = jnp.take_along_axis(tokens, result.path, 1)
    n = result.num_accepted
    first = jnp.where(n >= 1, path_tokens[:, 1], result.next_token)
    second = jnp.where(n >= 2, path_tokens[:, 2], jnp.where(n == 1, result.next_token, -1))
    # The second token is emitted in this cycle only when the first was accepted from
    # the tree; conditioned on that, it must follow p(b | a).
    first, second, n = np.asarray(first), np.asarray(second), np.asarray(n)
    assert tv(first, p_root) < tv_bound(v=v)
    for a in range(v):
        sel = (first == a) & (n >= 1)
        if sel.sum() > 5000:
            assert tv(second[sel], p_next[a]) < tv_bound(sel.sum(), v)


def test_greedy_takes_the_deepest_matching_path():
    shape = trees.from_choices([(0,), (1,), (0, 0), (1, 0), (1, 0, 0)])
    # nodes: 0 root; 1=(0,), 2=(1,); 3=(0,0), 4=(1,0); 5=(1,0,0)
    tokens = jnp.asarray([[9, 1, 2, 3, 4, 5]])
    argmax = jnp.asarray([2, 7, 4, 0, 6, 0])  # target's next token after each node
    logits = jax.nn.one_hot(argmax, 16)[None]
    result = verify_greedy(logits, tokens, shape)
    assert result.path[0].tolist() == [0, 2, 4, 4]
    assert int(result.num_accepted[0]) == 2 and int(result.next_token[0]) == 6


def toy_block_draws(gamma=2):
    """Sun et al.'s example: context-free target (1/3, 2/3) and draft (2/3, 1/3)."""
    p = jnp.asarray([1 / 3, 2 / 3]), jnp.asarray([2 / 3, 1 / 3])
    target, draft = p
    x = jax.random.categorical(jax.random.PRNGKey(6), jnp.log(draft),
                               shape=(DRAWS, gamma)).astype(jnp.int32)
    tokens = jnp.concatenate([jnp.zeros((DRAWS, 1), jnp.int32), x], 1)
    return (jnp.broadcast_to(target, (DRAWS, gamma + 1, 2)),
            jnp.broadcast_to(draft, (DRAWS, gamma + 1, 2)), tokens)


def test_block_verification_accepts_more_than_token_wise_on_the_same_draws():
    target, draft, tokens = toy_block_draws()
    shape = trees.chain(2)
    block = verify_block(target, draft, tokens, shape, jax.random.PRNGKey(7))
    token = verify_rejection(target, draft, tokens, shape, jax.random.PRNGKey(7))
    block_mean = float(block.num_accepted.mean())
    token_mean = float(token.num_accepted.mean())
    sigma = 1 / math.sqrt(DRAWS)  # accepted counts lie in [0, 2]
    assert abs(token_mean - 10 / 9) < 5 * sigma  # the paper's figures
    assert abs(block_mean - 11 / 9) < 5 * sigma
    assert block_mean > token_mean


def test_block_verification_emits_the_target():
    target, draft, tokens = toy_block_draws(gamma=3)
    result = verify_block(target, draft, tokens, trees.chain(3), jax.random.PRNGKey(8))
    assert tv(first_token(result, tokens), np.array([1 / 3, 2 / 3])) < tv_bound(v=2)
    n = np.asarray(result.num_accepted)
    second = np.where(n >= 2, np.asarray(tokens)[:, 2], np.asarray(result.next_token))
    known = n >= 1  # the second token is emitted in this cycle
    assert tv(second[known], np.array([1 / 3, 2 / 3])) < tv_bound(known.sum(), 2)


def test_block_verification_rejects_trees():
    with pytest.raises(ValueError, match="chain"):
        verify_block(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32),
                     trees.kary(2, 1), jax.random.PRNGKey(0))


def test_typical_acceptance_threshold():
    shape = trees.chain(2)
    flat = jnp.full((V,), 1 / V)  # entropy ln 16: threshold min(0.09, 0.3 / 16) = 0.01875
    peaked_p = jnp.asarray(np.r_[0.9, np.full(V - 1, 0.1 / (V - 1))])
    probs = jnp.stack([flat, peaked_p, flat])[None]
    tokens = jnp.asarray([[0, 5, 3]])  # p_root(5) = 1/16 > 0.019: accepted; p(3) = 0.0067 < 0.09
    result = verify_typical(probs, tokens, shape, jax.random.PRNGKey(0), 0.09, 0.3)
    assert int(result.num_accepted[0]) == 1


@pytest.mark.parametrize("vocab", [300, 40_000])  # top-1 below REDUCE_FROM_VOCAB, reductions above
def test_greedy_tokens_is_argmax_with_ties_to_the_lowest_id(vocab):
    from sdjax.sampling import REDUCE_FROM_VOCAB, greedy_tokens

    assert (vocab < REDUCE_FROM_VOCAB) == (vocab == 300)
    rng = np.random.default_rng(vocab)
    logits = rng.integers(-50, 50, (4, 3, vocab)).astype(np.float32)  # many ties at the max
    logits[0, 0, [7, 3, vocab - 1]] = 1e4  # a three-way tie: 3 wins
    logits[1, 2, :] = -np.inf
    logits[1, 2, vocab - 2] = 0.0
    expected = logits.argmax(-1)  # numpy: the first maximum
    assert expected[0, 0] == 3
    for dtype in (jnp.float32, jnp.bfloat16):
        got = jax.jit(greedy_tokens)(jnp.asarray(logits, dtype))
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, expected)
