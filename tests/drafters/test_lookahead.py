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
    """(tree, state, verify_forward's outputs, the cache it started from) of the first
    cycle after a prefill."""
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
    tree, state = jax.jit(lambda *a: drafter.propose(*a, spec_cfg))(
        bound, state, sequence, jnp.asarray([length]), jax.random.PRNGKey(0))
    outputs = jax.jit(lambda p, t, c: verify_forward(Transformer(cfg), p, t, t.topology, c, (),
                                                     drafter.num_extra))(params, tree, cache)
    return tree, state, outputs, cache


@pytest.mark.parametrize("cfg", [TARGET, SLIDING], ids=["global", "sliding"])
def test_the_last_level_is_scored_as_its_own_text_and_the_tree_is_left_alone(cfg):
    """Each last-level guess's logits are those of a plain forward of its own text (the
    levels below it are its context through their KV, so a wrong mask or position
    anywhere in its run shows), and the tree's logits are those without the window."""
    drafter = Lookahead(window=3, ngram=4, candidates=2, num_nodes=3, from_context=True)
    prompt = PROMPTS[0]  # copy-heavy: its own n-grams give the tree drafts
    tree, state, (cache, logits, _, extra_logits), start = _one_cycle(drafter, cfg, PARAMS,
                                                                       prompt)
    assert (np.asarray(tree.topology.parents[0, 1:]) >= 0).all()
    assert extra_logits.shape[1] == drafter.window
    cells = drafter.layout()[0][-drafter.window:]
    runs = [[int(state.guesses[0, 0, k]) for k in range(1, column + 1)] +
            [int(state.guesses[0, k, column]) for k in range(1, level + 1)]
            for level, column in cells]
    # One causal forward over every guess's own text, right-padded to one length.
    width = len(prompt) + max(map(len, runs))
    texts = jnp.asarray([prompt + run + [0] * (width - len(prompt) - len(run)) for run in runs])
    model = Transformer(cfg)
    fresh = model.apply(PARAMS, texts, jnp.broadcast_to(jnp.arange(width), texts.shape),
                        KVCache.init(cfg, len(runs), width)).logits
    ends = len(prompt) - 1 + np.asarray([len(run) for run in runs])
    np.testing.assert_allclose(extra_logits[0], fresh[np.arange(len(runs)), ends], atol=2e-5)
    alone = jax.jit(lambda p, t, c: verify_forward(model, p, t, t.topology, c, ()))(
        PARAMS, tree.replace(extra=None), start)
    np.testing.assert_allclose(logits, alone[1], atol=2e-5)


def test_a_drafter_proposing_more_non_candidates_than_it_declares_is_refused():
    drafter = Lookahead(window=2, ngram=3, candidates=2, num_nodes=3)
    tree, _, _, start = _one_cycle(drafter, TARGET, PARAMS, PROMPTS[1])
    with pytest.raises(ValueError, match="declared num_extra=2 non-candidates but proposed 3"):
        verify_forward(Transformer(TARGET), PARAMS, tree, tree.topology, start, (), 2)


def test_the_window_scored_over_a_reduced_head_guesses_its_ids():
    ids = np.arange(160, 320, 5)  # no head index (0..31) is one of these ids
    drafter = Lookahead(window=3, ngram=3, candidates=2, num_nodes=3)
    tree, state, (_, _, _, extra_logits), _ = _one_cycle(
        drafter, TARGET, PARAMS, PROMPTS[1], {"vocab_ids": ids})
    assert extra_logits.shape[-1] == ids.size
    state = drafter.commit(state, None, None, extra_logits=extra_logits)
    moved = drafter.advance(state, jnp.asarray(ids))
    assert np.isin(np.asarray(moved.guesses[0, -1]), ids).all()


def _state(pool, next_slot=0, guesses=((0, 0), (0, 0)), outputs=(0, 0), cycles=0):
    rows = lambda x: jnp.asarray([x], jnp.int32)
    return LookaheadState(guesses=rows(guesses), outputs=rows(outputs), cycles=rows(cycles),
                          pool=rows(pool), next_slot=rows(next_slot), seen=rows(0))


EMPTY = [-1, -1, -1]


def test_the_pool_keeps_the_most_recently_seen_distinct_ngrams():
    state = _state([[1, 2, 3], [9, 9, 9], EMPTY, EMPTY], next_slot=2)
    new = jnp.asarray([[[1, 2, 3], [4, 5, 6], [7, 8, 9], [4, 5, 6], [0, 0, 0]]])
    keep = jnp.asarray([[True, True, True, True, False]])
    # 1 2 3 is seen again: it moves to the front; of the two 4 5 6 the later one counts.
    state = remember(state, new, keep)
    assert state.pool[0].tolist() == [[4, 5, 6], [9, 9, 9], [1, 2, 3], [7, 8, 9]]
    assert state.next_slot.tolist() == [1]
    many = jnp.asarray([[[k, k, k] for k in range(10, 16)]])
    state = remember(state, many, jnp.ones((1, 6), bool))  # more than it holds: the last 4
    assert sorted(state.pool[0, :, 0].tolist()) == [12, 13, 14, 15]
    assert state.pool[0, (state.next_slot[0] - 1) % 4].tolist() == [15, 15, 15]


def test_each_sequence_has_its_own_ring():
    state = _state([[1, 1, 1], EMPTY, EMPTY], next_slot=1)
    state = jax.tree.map(lambda x: jnp.concatenate([x, x]), state).replace(
        next_slot=jnp.asarray([1, 0]))
    new = jnp.asarray([[[2, 2, 2]], [[1, 1, 1]]])
    state = remember(state, new, jnp.ones((2, 1), bool))
    assert state.pool.tolist() == [[[1, 1, 1], [2, 2, 2], EMPTY], [[1, 1, 1], EMPTY, EMPTY]]
    assert state.next_slot.tolist() == [2, 1]


def test_advance_pools_each_column_and_moves_the_levels_down():
    drafter = Lookahead(window=2, ngram=3, candidates=2, num_nodes=3, pool_size=8)
    # level 0: the last root (7) and a guess; level 1: two guesses; outputs: the last level's
    pool = [EMPTY] * 8
    state = _state(pool, guesses=((7, 3), (4, 5)), outputs=(6, 8), cycles=1)
    early = drafter.advance(state, None)  # level 1 held prompt tokens when it was fed
    assert (early.pool == -1).all()
    assert early.guesses[0].tolist() == [[4, 5], [6, 8]]
    moved = drafter.advance(state.replace(cycles=jnp.asarray([2])), None)
    assert moved.pool[0, :2].tolist() == [[7, 4, 6], [3, 5, 8]]  # column 0's key: the root
    assert moved.guesses[0].tolist() == [[4, 5], [6, 8]]
    first = drafter.advance(state.replace(cycles=jnp.asarray([0])), None)
    assert first.guesses[0].tolist() == [[7, 3], [4, 5]]  # no forward yet: nothing moves


def test_from_context_pools_every_committed_ngram_once():
    drafter = Lookahead(window=2, ngram=3, candidates=2, num_nodes=3, pool_size=16,
                        from_context=True)
    prompt = jnp.asarray([[1, 2, 3, 4, 0]])
    state = drafter.init(drafter.bind(None, PARAMS), prompt, jnp.asarray([4]), 16)
    sequence = jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8, 0, 0]])
    params, cfg = drafter.bind(None, PARAMS), spec(drafter)
    pooled = lambda s: sorted(tuple(g) for g in s.pool[0].tolist() if g[0] >= 0)
    assert pooled(state) == [(1, 2, 3), (2, 3, 4)]
    for length, new in ((5, [(3, 4, 5)]), (8, [(4, 5, 6), (5, 6, 7), (6, 7, 8)]), (8, [])):
        before = pooled(state)
        _, state = drafter.propose(params, state, sequence, jnp.asarray([length]),
                                   jax.random.PRNGKey(0), cfg)
        assert pooled(state) == sorted(before + new)
        assert state.seen.tolist() == [length]


def test_the_tree_merges_the_latest_ngrams_that_start_with_the_root():
    drafter = Lookahead(window=2, ngram=3, candidates=2, num_nodes=4, pool_size=4)
    state = _state([[7, 1, 2], [7, 1, 3], [5, 9, 9], [7, 4, 4]], next_slot=2)  # 3 oldest
    sequence = jnp.asarray([[3, 7, 0, 0]])
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
    (dict(candidates=4, pool_size=2), ValueError, "pool_size must be >= 4"),
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
