"""Lookahead decoding: the Jacobi window's attention pattern and outputs, the n-gram
pool, and the non-candidate tokens' independence from the tree. Greedy equality and
the exact law are in test_speculative.py (DRAFTERS and the sampled cases)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax.decode.loop import verify_forward
from sdjax.drafters.lookahead import Lookahead, LookaheadState, remember
from sdjax.models import KVCache, Transformer
from tests.drafters.test_speculative import PARAMS, PROMPTS, TARGET, spec

SLIDING = TARGET.replace(sliding_window=4, sliding_layers=(True, False))


@pytest.mark.parametrize("window,ngram", [(1, 3), (4, 3), (3, 5)])
def test_each_guess_sees_one_unbroken_run_from_the_root(window, ngram):
    drafter = Lookahead(window=window, ngram=ngram, candidates=2, num_nodes=3)
    cells, offsets, mask = drafter.layout()
    assert len(cells) == drafter.num_extra
    node_offsets = np.concatenate([[0, 1, 1], offsets])  # tree: root and two children
    for i, offset in enumerate(offsets):
        seen = sorted(node_offsets[mask[i]])
        assert seen == list(range(offset + 1)), (cells[i], seen)
        assert mask[i, drafter.num_nodes + i]  # itself
        assert not mask[i, 1:drafter.num_nodes].any()  # no draft of the tree


def _one_cycle(drafter, cfg, params, prompt, draft_params=None):
    """(tree, state, verify_forward's outputs, cache) of the first cycle after a prefill."""
    prompt = jnp.asarray([prompt], jnp.int32)
    length = prompt.shape[1]
    max_len = length + 64
    cache = KVCache.init(cfg, 1, max_len)
    out = Transformer(cfg).apply(params, prompt, jnp.arange(length)[None], cache)
    cache = out.cache.commit(jnp.asarray([length - 1]))  # the last token is the root
    bound = drafter.bind(draft_params, params)
    state = drafter.init(bound, prompt, jnp.asarray([length]), max_len)
    sequence = jnp.pad(prompt, ((0, 0), (0, max_len - length)))
    spec_cfg = sdjax.SpecConfig(model=cfg, drafter=drafter, eos_token_id=())
    tree, state = drafter.propose(bound, state, sequence, jnp.asarray([length]),
                                  jax.random.PRNGKey(0), spec_cfg)
    topo = tree.topology
    return tree, state, verify_forward(Transformer(cfg), params, tree, topo, cache, ()), cache


@pytest.mark.parametrize("cfg", [TARGET, SLIDING], ids=["global", "sliding"])
def test_guesses_are_scored_as_their_own_sequences_and_leave_the_tree_alone(cfg):
    drafter = Lookahead(window=3, ngram=4, candidates=2, num_nodes=3, from_context=True)
    prompt = PROMPTS[0]  # copy-heavy: its own n-grams give the tree drafts
    tree, state, (_, logits, _, extra_logits), cache = _one_cycle(drafter, cfg, PARAMS, prompt)
    assert (np.asarray(tree.topology.parents[0, 1:]) >= 0).all()
    cells, offsets, _ = drafter.layout()
    runs = [[int(state.window[0, 0, k]) for k in range(1, column + 1)] +
            [int(state.window[0, k, column]) for k in range(1, row + 1)] for row, column in cells]
    # One causal forward over every guess's own text, right-padded to one length.
    width = len(prompt) + max(map(len, runs))
    texts = jnp.asarray([prompt + run + [0] * (width - len(prompt) - len(run)) for run in runs])
    model = Transformer(cfg)
    fresh = model.apply(PARAMS, texts, jnp.broadcast_to(jnp.arange(width), texts.shape),
                        KVCache.init(cfg, len(runs), width)).logits
    ends = len(prompt) - 1 + np.asarray([len(run) for run in runs])
    np.testing.assert_allclose(extra_logits[0], fresh[np.arange(len(runs)), ends], atol=2e-5)
    alone = verify_forward(model, PARAMS, tree.replace(extra=None), tree.topology, cache, ())
    np.testing.assert_allclose(logits, alone[1], atol=2e-5)


def test_the_window_scored_over_a_reduced_head_guesses_its_ids():
    ids = np.arange(0, 320, 5)
    drafter = Lookahead(window=3, ngram=3, candidates=2, num_nodes=3)
    tree, state, (_, _, _, extra_logits), _ = _one_cycle(
        drafter, TARGET, PARAMS, PROMPTS[1], {"vocab_ids": ids})
    assert extra_logits.shape[-1] == ids.size
    state = drafter.commit(state, None, None, extra_logits=extra_logits)
    moved = drafter.advance(state, jnp.asarray(ids))
    assert np.isin(np.asarray(moved.window[0, -1]), ids).all()


def _state(pool, next_slot=0):
    pool = jnp.asarray([pool], jnp.int32)
    return LookaheadState(window=jnp.zeros((1, 2, 2), jnp.int32),
                          outputs=jnp.zeros((1, 2), jnp.int32), cycles=jnp.zeros(1, jnp.int32),
                          pool=pool, next_slot=jnp.asarray([next_slot]),
                          seen=jnp.zeros(1, jnp.int32))


def test_the_pool_keeps_the_latest_distinct_ngrams():
    state = _state([[1, 2, 3], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]], next_slot=1)
    new = jnp.asarray([[[1, 2, 3], [4, 5, 6], [4, 5, 6], [7, 8, 9], [0, 0, 0]]])
    keep = jnp.asarray([[True, True, True, True, False]])
    state = remember(state, new, keep)  # known, new, repeated, new, not kept
    assert state.pool[0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [-1, -1, -1]]
    assert state.next_slot.tolist() == [3]
    many = jnp.asarray([[[k, k, k] for k in range(10, 16)]])
    state = remember(state, many, jnp.ones((1, 6), bool))  # more than it holds: the last 4
    assert sorted(state.pool[0, :, 0].tolist()) == [12, 13, 14, 15]
    assert state.pool[0, (state.next_slot[0] - 1) % 4].tolist() == [15, 15, 15]


def test_the_tree_merges_the_latest_ngrams_that_start_with_the_root():
    drafter = Lookahead(window=2, ngram=3, candidates=2, num_nodes=4, pool_size=4)
    state = _state([[7, 1, 2], [7, 1, 3], [5, 9, 9], [7, 4, 4]], next_slot=3)  # slot 3 oldest
    sequence = jnp.asarray([[3, 7, 0, 0]])
    state = state.replace(cycles=jnp.zeros(1, jnp.int32))
    tree, _ = drafter.propose(drafter.bind(None, PARAMS), state, sequence, jnp.asarray([2]),
                              jax.random.PRNGKey(0), spec(drafter))
    # the two latest with key 7: "1 3" (slot 1), "1 2" (slot 0); "4 4" (slot 3) is older
    assert tree.tokens[0].tolist() == [7, 1, 3, 2]
    assert tree.topology.parents[0].tolist() == [-1, 0, 1, 1]


def test_lookahead_drafts_what_a_looping_target_writes():
    # Random-weight targets fall into loops: the window's n-grams must catch them.
    cfg = spec(Lookahead(window=4, ngram=4, candidates=4, num_nodes=8), max_new_tokens=80)
    out = sdjax.generate(PARAMS, PROMPTS, cfg)
    plain = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=80))
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.stats["tau"] > 1.5


@pytest.mark.parametrize("fields,error,message", [
    (dict(window=0), ValueError, "window"), (dict(ngram=2), ValueError, "ngram"),
    (dict(candidates=0), ValueError, "candidates"), (dict(num_nodes=1), ValueError, "num_nodes"),
    (dict(pool_size=0), ValueError, "pool_size"),
    (dict(candidates=2, ngram=3, num_nodes=6), ValueError, "exceed"),
    (dict(from_context=1), TypeError, "from_context must be bool"),
])
def test_bad_lookahead_configs_are_refused(fields, error, message):
    with pytest.raises(error, match=message):
        Lookahead(**fields)


@pytest.mark.parametrize("draft_params,message", [
    ({"ids": np.arange(4)}, r"got \['ids'\]"),
    ({"vocab_ids": np.array([3, 1])}, "distinct ascending"),
])
def test_lookahead_checks_its_params_before_compiling(draft_params, message):
    with pytest.raises(ValueError, match=message):
        sdjax.generate(PARAMS, PROMPTS, spec(Lookahead(), max_new_tokens=4),
                       draft_params=draft_params)
