"""Calibration of rank acceptance, and Sequoia trees built from it."""

import jax
import numpy as np
import pytest

import sdjax
from sdjax import trees
from sdjax.calibrate import rank_acceptance
from sdjax.drafters import DraftModel, PromptLookup

TARGET = sdjax.ModelConfig(vocab_size=64, hidden_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                           max_position_embeddings=256)
PARAMS = sdjax.init_params(TARGET, jax.random.PRNGKey(0))
# A draft that agrees often but not always: the target, perturbed.
DRAFT = TARGET
DRAFT_PARAMS = jax.tree.map(
    lambda x: x + 0.005 * jax.random.normal(jax.random.PRNGKey(1), x.shape), PARAMS)
PROMPTS = [list(range(3, 3 + n)) for n in (5, 8, 12, 6)]


def spec(drafter, **kw):
    return sdjax.SpecConfig(model=TARGET, drafter=drafter, max_new_tokens=40,
                            eos_token_id=(), **kw)


def test_the_target_as_its_own_draft_is_always_accepted_at_rank_zero():
    acc = rank_acceptance(PARAMS, PROMPTS, spec(DraftModel(TARGET)), width=4,
                          draft_params=PARAMS)
    np.testing.assert_array_equal(acc, [1, 0, 0, 0])
    assert trees.sequoia(acc, 6, 8).is_chain


def test_sequoia_tree_from_a_calibrated_draft_is_lossless_and_beats_a_chain():
    cfg = spec(DraftModel(DRAFT))
    acc = rank_acceptance(PARAMS, PROMPTS, cfg, width=4, draft_params=DRAFT_PARAMS)
    assert 0 < acc[1] < acc[0] < 1
    tree = trees.sequoia(acc, 7, 3)
    for other in (trees.kary(2, 2), trees.branches(2, 3), trees.chain(3)):
        assert trees.expected_tokens(tree, acc) >= trees.expected_tokens(other, acc)
    plain = sdjax.generate(PARAMS, PROMPTS, spec(None))
    out = sdjax.generate(PARAMS, PROMPTS, spec(DraftModel(DRAFT, tree=tree)),
                         draft_params=DRAFT_PARAMS)
    np.testing.assert_array_equal(out.tokens, plain.tokens)


def test_calibration_needs_a_tree_drafter():
    with pytest.raises(ValueError, match="drafts trees"):
        rank_acceptance(PARAMS, PROMPTS, spec(PromptLookup()))


def test_self_draft_agreement_predicts_each_cycle_of_greedy_decoding():
    """With every layer the draft agrees everywhere. With a chain of one draft, decoding
    accepts it exactly where the teacher-forced agreement over the generated text says:
    walking the cycles' roots through the agreement map gives the acceptance counts."""
    from sdjax.calibrate import self_draft_agreement
    from sdjax.drafters.self_draft import SelfDraft
    from tests.drafters.test_speculative import PARAMS as TWO_LAYER
    from tests.drafters.test_speculative import TARGET as TWO

    text = np.random.default_rng(0).integers(0, 320, (2, 24))
    assert self_draft_agreement(TWO_LAYER, TWO, text, (0, 1)).all()
    prompt, new = list(text[0, :8]), 30
    out = sdjax.generate(TWO_LAYER, [prompt], sdjax.SpecConfig(
        model=TWO, drafter=SelfDraft((1,), num_draft=1), max_new_tokens=new, eos_token_id=()))
    full = np.concatenate([prompt, out.tokens[0]])[None]
    agrees = self_draft_agreement(TWO_LAYER, TWO, full, (1,))[0]
    assert 0.1 < agrees.mean() < 0.9
    root, expected = len(prompt), np.zeros(2, int)  # the first token is the first root
    while root - len(prompt) + 1 < new:
        expected[int(agrees[root])] += 1
        root += 1 + int(agrees[root])
    np.testing.assert_array_equal(out.stats["accepted_hist"][0], expected)


def test_self_draft_agreement_of_a_reduced_head_is_where_the_target_picks_its_ids():
    """With every layer the draft's whole head agrees everywhere; its rows for every
    fifth id agree exactly where the target's greedy token is one of them."""
    from sdjax.calibrate import self_draft_agreement
    from tests.drafters.test_speculative import PARAMS as TWO_LAYER
    from tests.drafters.test_speculative import TARGET as TWO

    text = np.random.default_rng(1).integers(0, 320, (2, 20))
    greedy = np.asarray(jax.numpy.argmax(sdjax.models.transformer.sequence_forward(
        TWO_LAYER, TWO, jax.numpy.asarray(text)).logits, -1))
    agrees = self_draft_agreement(TWO_LAYER, TWO, text, (0, 1), np.arange(0, 320, 5))
    np.testing.assert_array_equal(agrees, greedy % 5 == 0)
    assert 0 < agrees.mean() < 1


def test_skip_layers_drops_the_layer_that_changes_nothing():
    """Layer 1 of three has zero output projections (an identity): skipping it keeps
    the draft equal to the target, so the search drops it first."""
    from sdjax.calibrate import self_draft_agreement, skip_layers

    cfg = TARGET.replace(num_layers=3)
    params = jax.tree.map(lambda x: x, sdjax.init_params(cfg, jax.random.PRNGKey(4)))
    for name in ("attn", "mlp"):
        block = params["params"]["layers_1"][name]
        out = block["o_proj" if name == "attn" else "down_proj"]
        out["kernel"] = 0 * out["kernel"]
    text = np.random.default_rng(2).integers(0, 64, (2, 16))
    assert skip_layers(params, cfg, text, 1) == (0, 2)
    assert self_draft_agreement(params, cfg, text, (0, 2)).all()
    assert skip_layers(params, cfg, text, 0) == (0, 1, 2)


@pytest.mark.parametrize("call,message", [
    (lambda f: f(PARAMS, TARGET, np.zeros((1, 4), int), (0, 1)), "distinct ascending"),
    (lambda f: f(PARAMS, TARGET, np.zeros((1, 4), int), ()), "distinct ascending"),
    (lambda f: f(PARAMS, TARGET, np.full((1, 4), 64), (0,)), "in 0..63"),
    (lambda f: f(PARAMS, TARGET, np.zeros(4, int), (0,)), r"\[batch, length\]"),
    (lambda f: f(PARAMS, TARGET, np.zeros((1, 4), int), (0,), [3, 1]), "distinct ascending"),
])
def test_calibration_inputs_are_checked(call, message):
    from sdjax.calibrate import self_draft_agreement

    with pytest.raises(ValueError, match=message):
        call(self_draft_agreement)

