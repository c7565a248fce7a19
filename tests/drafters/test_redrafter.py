"""ReDrafter: the beam tree against a beam search written out in numpy (also over a
reduced draft vocabulary), and the head's teacher-forced logits against its
step-by-step use. Greedy equality and the exact law through the loop:
tests/drafters/test_speculative.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax.heads import HeadsConfig, ReDrafter, ReDrafterHead, init_heads, make_drafter
from sdjax.heads.common import HeadsState, bind_shared
from tests.drafters.test_speculative import PARAMS, TARGET, noisy

HEADS = HeadsConfig(num_heads=3, hidden_size=64, vocab_size=320, kind="redrafter")
HEAD_PARAMS = noisy(init_heads(HEADS, PARAMS, jax.random.PRNGKey(50)), 50, 0.5)
BOUND = bind_shared(HEAD_PARAMS, PARAMS, HEADS.shared_names)
# a reduced vocabulary of every fifth id: beams are drafted over 64 of the 320
IDS = np.arange(0, 320, 5)
REDUCED = dataclasses.replace(HEADS, draft_vocab=64)
REDUCED_BOUND = bind_shared(noisy(init_heads(REDUCED, PARAMS, jax.random.PRNGKey(51), IDS), 51,
                                  0.5), PARAMS, REDUCED.shared_names)


def numpy_beam_search(heads, bound, hidden, root, width, length, ids=None):
    """Every hypothesis a beam search keeps, as (tokens, parents) in node order, with
    the head applied one path at a time over the whole draft vocabulary."""
    head = ReDrafterHead(heads)
    apply = lambda method, *args: np.asarray(head.apply(bound, *args, method=method))
    target_id = (lambda i: int(ids[i])) if ids is not None else int
    beams = [((int(root),), 0.0, np.zeros(64, np.float32), 0)]  # path, score, state, node
    tokens, parents = [int(root)], [-1]
    for _ in range(length):
        grown = []
        for path, score, state, node in beams:
            state = apply(ReDrafterHead.step, state[None], jnp.array([path[-1]]))[0]
            log_probs = np.asarray(jax.nn.log_softmax(apply(ReDrafterHead.logits, hidden[None],
                                                            state[None])[0]))
            grown += [(path + (target_id(i),), score + log_probs[i], state, node)
                      for i in range(len(log_probs))]
        grown.sort(key=lambda beam: -beam[1])
        beams = []
        for path, score, state, parent in grown[:width]:
            tokens.append(path[-1])
            parents.append(parent)
            beams.append((path, score, state, len(tokens) - 1))
    return np.array(tokens), np.array(parents)


@pytest.mark.parametrize("width,length,reduced", [(1, 3, False), (3, 2, True), (2, 3, False),
                                                  (2, 3, True)])
def test_the_tree_holds_every_hypothesis_the_beam_search_kept(width, length, reduced):
    heads, bound, ids = (REDUCED, REDUCED_BOUND, IDS) if reduced else (HEADS, BOUND, None)
    hidden = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 64)))
    roots = np.array([5, 77])
    drafter = ReDrafter(heads, beam_width=width, beam_length=length)
    cfg = sdjax.SpecConfig(model=TARGET, drafter=drafter)
    sequence = jnp.zeros((2, 8), jnp.int32).at[:, 3].set(jnp.asarray(roots))
    tree, _ = drafter.propose(bound, HeadsState(jnp.asarray(hidden)), sequence,
                              jnp.array([4, 4]), jax.random.PRNGKey(0), cfg)
    assert tree.tokens.shape == (2, drafter.shape.num_nodes) == (2, 1 + width * length)
    assert tree.topology.is_chain == (width == 1)
    for row in range(2):
        tokens, parents = numpy_beam_search(heads, bound, hidden[row], roots[row], width,
                                            length, ids)
        np.testing.assert_array_equal(tree.tokens[row], tokens)
        np.testing.assert_array_equal(tree.topology.parents[row], parents)
        # distinct paths: no two siblings hold the same token
        pairs = set(zip(parents.tolist(), tokens.tolist()))
        assert len(pairs) == drafter.shape.num_nodes
    if ids is not None:
        assert np.isin(np.asarray(tree.tokens[:, 1:]), ids).all()
    if width > 1 and length > 2:  # beams really regroup: some depth-2 node left its beam
        parents = np.asarray(tree.topology.parents[:, 1 + width:])
        assert (parents != np.arange(1, 1 + width * (length - 1))).any()


def test_teacher_forcing_is_the_recurrence_run_one_step_at_a_time():
    head = ReDrafterHead(HEADS)
    hidden = jax.random.normal(jax.random.PRNGKey(2), (5, 64))
    path = jax.random.randint(jax.random.PRNGKey(3), (5, 3), 0, 320)
    forced = head.apply(BOUND, hidden, path)  # [5, 3, V]
    state = jnp.zeros((5, 64))
    for k in range(3):
        state = head.apply(BOUND, state, path[:, k], method=ReDrafterHead.step)
        np.testing.assert_allclose(forced[:, k], head.apply(
            BOUND, hidden, state, method=ReDrafterHead.logits), rtol=1e-5, atol=1e-5)


def test_bad_beams_are_refused():
    with pytest.raises(ValueError, match="beam_width"):
        ReDrafter(HEADS, beam_width=0)
    with pytest.raises(ValueError, match="beam_length"):
        ReDrafter(HEADS, beam_length=4)  # the head drafts 3
    with pytest.raises(ValueError, match="beam_width"):
        ReDrafter(dataclasses.replace(HEADS, draft_vocab=2), beam_width=3)
    with pytest.raises(ValueError, match="tree of its beams"):
        make_drafter(HEADS, sdjax.trees.chain(2))
    assert make_drafter(HEADS) == ReDrafter(HEADS)
