"""KV cache: incremental == full forward, tree == per-branch, commit == fresh forward."""

import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax.models import KVCache, Transformer

ARCHS = ["llama_gqa", "mistral_sliding", "gpt2"]
TOKENS = np.random.default_rng(1).integers(0, 96, size=(2, 24))


def forward(model, tokens, positions, cache, tree_mask=None):
    return Transformer(model.config).apply(
        model.params, jnp.asarray(tokens), jnp.asarray(positions), cache, tree_mask)


def fresh_cache(model, tokens, max_len=48):
    """Cache after one forward over `tokens` [B, T], all committed."""
    batch, length = tokens.shape
    out = forward(model, tokens, np.broadcast_to(np.arange(length), tokens.shape),
                  KVCache.init(model.config, batch, max_len))
    return out, out.cache.commit(jnp.full((batch,), length))


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decoding_equals_full_forward(hf_checkpoints, arch):
    model = sdjax.load_hf(hf_checkpoints[arch])
    full, _ = fresh_cache(model, TOKENS)
    _, cache = fresh_cache(model, TOKENS[:, :8])
    for t in range(8, TOKENS.shape[1]):
        out = forward(model, TOKENS[:, t:t + 1], np.full((2, 1), t), cache)
        cache = out.cache.commit(jnp.ones(2, jnp.int32))
        np.testing.assert_allclose(out.logits[:, 0], full.logits[:, t], atol=1e-5)


# A token tree: root 0 -> {1, 2}; 1 -> 3; 2 -> {4, 5}. Node i's branch = its ancestors.
PARENTS = [-1, 0, 0, 1, 2, 2]
DEPTH = [0, 1, 1, 2, 2, 2]


def branch(node):
    path = []
    while node >= 0:
        path.append(node)
        node = PARENTS[node]
    return path[::-1]


def tree_mask():
    mask = np.zeros((len(PARENTS), len(PARENTS)), bool)
    for i in range(len(PARENTS)):
        mask[i, branch(i)] = True
    return mask


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_forward_equals_per_branch_forwards(hf_checkpoints, arch):
    model = sdjax.load_hf(hf_checkpoints[arch])
    lengths = np.array([10, 13])  # ragged committed prefixes
    _, cache = fresh_cache(model, TOKENS[:, :13])
    cache = cache.replace(length=jnp.asarray(lengths, jnp.int32))
    nodes = TOKENS[:, 14:14 + len(PARENTS)]
    positions = lengths[:, None] + np.array(DEPTH)[None]
    out = forward(model, nodes, positions, cache, jnp.asarray(tree_mask()))
    # Every (row, node)'s own text in one causal forward, right-padded to one length.
    texts = [np.concatenate([TOKENS[row, :lengths[row]], nodes[row, branch(node)]])
             for row in range(2) for node in range(len(PARENTS))]
    width = max(map(len, texts))
    ref, _ = fresh_cache(model, np.stack([np.pad(t, (0, width - len(t))) for t in texts]))
    ends = np.array([len(t) - 1 for t in texts])
    np.testing.assert_allclose(out.logits.reshape(len(texts), -1),
                               ref.logits[np.arange(len(texts)), ends], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_commit_path_equals_fresh_forward_over_committed_tokens(hf_checkpoints, arch):
    model = sdjax.load_hf(hf_checkpoints[arch])
    lengths = np.array([10, 13])
    _, cache = fresh_cache(model, TOKENS[:, :13])
    cache = cache.replace(length=jnp.asarray(lengths, jnp.int32))
    nodes = TOKENS[:, 14:14 + len(PARENTS)]
    positions = lengths[:, None] + np.array(DEPTH)[None]
    out = forward(model, nodes, positions, cache, jnp.asarray(tree_mask()))
    accepted = [branch(5), branch(3)[:2]]  # row 0 takes 0->2->5, row 1 takes 0->1
    path = np.zeros((2, 3), np.int32)
    for row, nodes_taken in enumerate(accepted):
        path[row, :len(nodes_taken)] = nodes_taken
    committed = out.cache.commit(jnp.asarray([3, 2]), jnp.asarray(path))
    np.testing.assert_array_equal(committed.length, [13, 15])
    for row in range(2):
        seq = np.concatenate([TOKENS[row, :lengths[row]], nodes[row, accepted[row]]])
        _, ref = fresh_cache(model, seq[None])
        n = len(seq)
        for ours, theirs in zip(committed.keys + committed.values, ref.keys + ref.values):
            np.testing.assert_allclose(ours[row, :n], theirs[0, :n], atol=1e-5)
    # The next step after the commit sees only the accepted path.
    nxt = forward(model, TOKENS[:, 23:24], committed.length[:, None], committed)
    for row in range(2):
        seq = np.concatenate([TOKENS[row, :lengths[row]], nodes[row, accepted[row]],
                              [TOKENS[row, 23]]])
        ref, _ = fresh_cache(model, seq[None])
        np.testing.assert_allclose(nxt.logits[row, 0], ref.logits[0, -1], atol=1e-5)
