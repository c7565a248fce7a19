"""REST: the datastore (suffix array, search, files) against brute force, and the trie."""

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax import testbed
from sdjax.data.tokenizer import load_tokenizer
from sdjax.drafters import Rest, load_datastore, save_datastore
from sdjax.drafters.datastore import from_tokens, match_range, suffix_array, tokenizer_fingerprint
from sdjax.drafters.rest import most_frequent_prefixes


def corpora():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 9, 40)
    yield rng.integers(0, 3, 500), 5  # small alphabet: long shared prefixes
    yield np.concatenate([block, rng.integers(0, 9, 30), block, block[:17]]), 8  # copies
    yield rng.integers(0, 100_000, 300), 3  # ids over 65,535
    yield np.zeros(64, np.int64), 6  # one token repeated: every prefix ties


@pytest.mark.parametrize("tokens,depth", list(corpora()))
def test_suffix_array_sorts_by_the_first_depth_tokens(tokens, depth):
    order = suffix_array(tokens, depth)
    assert sorted(order.tolist()) == list(range(len(tokens)))
    key = lambda i: tuple(tokens[i:i + depth]) + (-1,) * max(0, i + depth - len(tokens))
    assert all(key(a) <= key(b) for a, b in zip(order, order[1:]))


@pytest.mark.parametrize("tokens,depth", list(corpora()))
def test_match_range_finds_every_occurrence_and_nothing_else(tokens, depth):
    rng = np.random.default_rng(1)
    store = from_tokens(tokens, int(tokens.max()) + 1, depth)
    queries, lengths = [], []
    for _ in range(40):  # half taken from the corpus (found), half random (mostly not)
        n = int(rng.integers(1, depth + 1))
        start = int(rng.integers(0, len(tokens) - n + 1))
        q = tokens[start:start + n] if rng.random() < 0.5 else rng.choice(tokens, n)
        queries.append(np.pad(q, (0, depth - n), constant_values=7))  # padding is ignored
        lengths.append(n)
    lo, hi = match_range(store, jnp.asarray(np.stack(queries), jnp.int32), jnp.asarray(lengths))
    order = np.asarray(store.suffix_array)
    for q, n, a, b in zip(queries, lengths, np.asarray(lo), np.asarray(hi)):
        expected = {i for i in range(len(tokens) - n + 1)
                    if (tokens[i:i + n] == q[:n]).all()}
        assert set(order[a:b].tolist()) == expected
        assert b - a == len(expected)


def brute_force_prefixes(continuations, weights, count):
    """The reference trie: prefixes with their weighted frequency, ranked by (frequency,
    shallower, first row), cut at `count`."""
    freq, first = collections.Counter(), {}
    for m, (row, weight) in enumerate(zip(continuations, weights)):
        for d in range(len(row)):
            if not weight or row[d] < 0:
                break
            prefix = tuple(row[:d + 1])
            freq[prefix] += weight
            first.setdefault(prefix, m)
    ranked = sorted(freq, key=lambda p: (-freq[p], len(p), first[p]))
    return ranked[:count]


@pytest.mark.parametrize("seed", range(6))
def test_the_trie_keeps_the_most_frequent_prefixes_parents_first(seed):
    rng = np.random.default_rng(seed)
    rows, depth, count = 12, 4, 9
    continuations = rng.integers(0, 3, (2, rows, depth))
    continuations[:, 3, 2:] = -1  # a match near the corpus's end
    weights = rng.integers(0, 4, (2, rows))  # 0: not a match
    weights[1, 2:] = 0  # few matches: fewer distinct prefixes than nodes
    tokens, parents, real = map(np.asarray, most_frequent_prefixes(
        jnp.asarray(continuations, jnp.int32), jnp.asarray(weights, jnp.int32), count))
    for b in range(2):
        expected = brute_force_prefixes(continuations[b], weights[b], count)
        paths = []  # each node's prefix, rebuilt from tokens and parents
        for i in range(count):
            if not real[b, i]:
                continue
            assert parents[b, i] <= i  # parents precede children (node i is i + 1)
            paths.append((paths[parents[b, i] - 1] if parents[b, i] else ()) + (tokens[b, i],))
        assert paths == expected
        assert real[b].sum() == len(expected)


def test_a_datastore_round_trips_and_refuses_what_does_not_fit(tmp_path):
    tokenizer = load_tokenizer(testbed.path("target"))
    store = sdjax.drafters.build_datastore(tokenizer, ["def f(x):\n    return x\n"] * 3,
                                           depth=4)
    folder = str(tmp_path / "ds")
    save_datastore(folder, store, tokenizer=tokenizer_fingerprint(tokenizer), model="testbed")
    again = load_datastore(folder, tokenizer)
    np.testing.assert_array_equal(again.tokens, store.tokens)
    np.testing.assert_array_equal(again.suffix_array, store.suffix_array)
    assert (again.depth, again.max_id) == (store.depth, store.max_id)

    with pytest.raises(ValueError, match="built with another tokenizer"):
        load_datastore(folder, type("Other", (), {"get_vocab": lambda self: {"a": 0}})())
    model = sdjax.ModelConfig(vocab_size=store.max_id, hidden_size=16, num_layers=1,
                              num_heads=1, num_kv_heads=1, head_dim=16, intermediate_size=16,
                              max_position_embeddings=64)
    cfg = sdjax.SpecConfig(model=model, drafter=Rest(max_query=4))
    with pytest.raises(ValueError, match=f"holds token id {store.max_id}"):
        Rest(max_query=4).check(cfg, store)
    with pytest.raises(ValueError, match="sorted by at least that many tokens"):
        Rest(max_query=5).check(cfg.replace(model=model.replace(vocab_size=1000)), store)
    with pytest.raises(ValueError, match="pass draft_params="):
        Rest().check(cfg, None)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 5\)"):
        from_tokens(np.array([1, 7]), 5)

    with pytest.raises(ValueError, match="scores would overflow"):
        Rest(num_matches=2048, context=31, depth=16)

    meta = os.path.join(folder, "datastore.json")
    info = json.load(open(meta))
    for broken in ([1, 2], {**info, "depth": None}):
        json.dump(broken, open(meta, "w"))
        with pytest.raises(ValueError, match="is not a version-1 sdjax datastore"):
            load_datastore(folder)
    json.dump({k: v for k, v in info.items() if k != "tokenizer"}, open(meta, "w"))
    assert load_datastore(folder).depth == 4  # without a tokenizer to check: fine
    with pytest.raises(ValueError, match="does not say which tokenizer built it"):
        load_datastore(folder, tokenizer)

    with open(os.path.join(folder, "datastore.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="is corrupt"):
        load_datastore(folder)
    os.remove(os.path.join(folder, "datastore.json"))
    with pytest.raises(FileNotFoundError, match="is not a datastore"):
        load_datastore(folder)


def test_rows_without_a_match_propose_only_the_root_repeated():
    store = from_tokens(np.array([5, 6, 7, 8, 5, 6, 9, 4]), 10, depth=4)
    drafter = Rest(num_nodes=5, depth=2, max_query=3)
    sequence = jnp.array([[1, 5, 6, 0], [1, 2, 3, 0], [5, 0, 0, 0]])  # found, not, too short
    cfg = sdjax.SpecConfig(model=sdjax.ModelConfig(
        vocab_size=10, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
        intermediate_size=8, max_position_embeddings=16), drafter=drafter)
    tree, _ = drafter.propose(store, (), sequence, jnp.array([3, 3, 1]), None, cfg)
    # "5 6" occurs twice: continuations "7 8" and "9 4"; ties keep the earlier match
    # and shallower prefixes first.
    np.testing.assert_array_equal(tree.tokens[0], [6, 7, 9, 8, 4])
    np.testing.assert_array_equal(tree.topology.parents[0], [-1, 0, 0, 1, 2])
    for row, root in ((1, 3), (2, 5)):
        np.testing.assert_array_equal(tree.tokens[row], [root] * 5)
        np.testing.assert_array_equal(tree.topology.parents[row], [-1, 0, 0, 0, 0])


def test_retrieving_the_targets_own_continuation_accepts_every_draft():
    model = sdjax.ModelConfig(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, intermediate_size=128,
                              max_position_embeddings=512)
    params = sdjax.init_params(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 320, 12).tolist(), rng.integers(0, 320, 5).tolist()]
    cfg = sdjax.SpecConfig(model=model, max_new_tokens=40, eos_token_id=())
    plain = sdjax.generate(params, prompts, cfg)
    store = from_tokens(np.concatenate([np.concatenate([p, t]) for p, t in zip(
        prompts, plain.tokens)] + [rng.integers(0, 320, 500)]), 320)
    out = sdjax.generate(params, prompts, cfg.replace(drafter=Rest(num_nodes=6, depth=4)),
                         draft_params=store)
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.stats["tau"] == 5.0  # 8 cycles of 4 retrieved drafts + 1 per row


def test_the_rows_own_matches_come_first_and_the_datastore_fills_the_tree():
    store = from_tokens(np.array([5, 6, 7, 8, 5, 6, 7, 4]), 10, depth=4)
    drafter = Rest(num_nodes=5, depth=2, max_query=3, context=1)
    model = sdjax.ModelConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=1,
                              num_kv_heads=1, head_dim=8, intermediate_size=8,
                              max_position_embeddings=16)
    cfg = sdjax.SpecConfig(model=model, drafter=drafter)
    sequence = jnp.array([[5, 6, 9, 1, 5, 6, 0], [1, 2, 3, 1, 2, 0, 0]])
    tree, _ = drafter.propose(store, (), sequence, jnp.array([6, 5]), None, cfg)
    # Row 0: its own "5 6" was followed by "9 1"; the datastore's by "7 4" and "7 8"
    # (in suffix order: the tie of the last node goes to the first).
    np.testing.assert_array_equal(tree.tokens[0], [6, 9, 1, 7, 4])
    np.testing.assert_array_equal(tree.topology.parents[0], [-1, 0, 1, 0, 3])
    # Row 1: nothing in the datastore; its own "1 2" was followed by "3 1".
    np.testing.assert_array_equal(tree.tokens[1], [2, 3, 1, 2, 2])
    np.testing.assert_array_equal(tree.topology.parents[1], [-1, 0, 1, 0, 0])
