"""Self-speculation (`SelfDraft`): the target's own layers draft over its own cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax.decode.prompts import prefill
from sdjax.drafters.self_draft import SelfDraft
from tests.drafters.test_speculative import PARAMS, PROMPTS, TARGET, spec


def test_with_every_layer_the_draft_is_the_target():
    cfg = spec(SelfDraft.early_exit(TARGET.num_layers, num_draft=4), max_new_tokens=1 + 5 * 6)
    out = sdjax.generate(PARAMS, PROMPTS, cfg)
    assert out.stats["tau"] == 5.0
    np.testing.assert_array_equal(out.stats["acceptance_by_depth"], [1, 1, 1, 1])


def first_layers(params, exit_layer):
    """The target cut after `exit_layer` layers, as a model of its own."""
    layers = {f"layers_{i}" for i in range(exit_layer, TARGET.num_layers)}
    return TARGET.replace(num_layers=exit_layer), {"params": {
        k: v for k, v in params["params"].items() if k not in layers}}


def test_an_early_exit_chain_is_the_first_layers_greedy_continuation():
    """Over the target's cache, the first E layers draft exactly what the E-layer model
    alone would generate: the draft reads the committed KV of the right layers and
    its own pending KV, and nothing else."""
    drafter = SelfDraft.early_exit(1, num_draft=4)
    cfg = spec(drafter, max_new_tokens=8)
    prompt = jnp.asarray([PROMPTS[0]])
    length = jnp.asarray([prompt.shape[1]])
    start = prefill(PARAMS, TARGET, prompt, length, 64)
    root = int(jnp.argmax(start.last_logits[0]))
    sequence = jnp.zeros((1, 64), jnp.int32).at[0, :prompt.shape[1]].set(prompt[0])
    sequence = sequence.at[0, prompt.shape[1]].set(root)
    tree, _ = drafter.propose(drafter.bind(None, PARAMS), (), sequence, length + 1,
                              jax.random.PRNGKey(0), cfg, target_cache=start.cache)
    short_cfg, short_params = first_layers(PARAMS, 1)
    alone = sdjax.generate(short_params, [PROMPTS[0] + [root]],
                           spec(max_new_tokens=4).replace(model=short_cfg))
    np.testing.assert_array_equal(tree.tokens[0], [root, *alone.tokens[0]])


def test_a_reduced_vocabulary_self_draft_drafts_only_its_own_tokens():
    drafter = SelfDraft((0,), num_draft=3)
    ids = {"vocab_ids": np.arange(0, 320, 5)}
    out = sdjax.generate(PARAMS, PROMPTS, spec(drafter, max_new_tokens=20), draft_params=ids)
    assert np.any(out.tokens % 5 != 0)  # the target picks other tokens: rejected drafts
    cfg = spec(drafter, max_new_tokens=8)
    start = prefill(PARAMS, TARGET, jnp.asarray(PROMPTS[1:2]), jnp.asarray([9]), 64)
    sequence = jnp.zeros((1, 64), jnp.int32).at[0, :9].set(jnp.asarray(PROMPTS[1]))
    tree, _ = drafter.propose(drafter.bind(ids, PARAMS), (), sequence, jnp.asarray([9]),
                              jax.random.PRNGKey(0), cfg, target_cache=start.cache)
    assert np.all(np.asarray(tree.tokens[:, 1:]) % 5 == 0)


@pytest.mark.parametrize("make,message", [
    (lambda: SelfDraft(()), "distinct ascending"),
    (lambda: SelfDraft((1, 0)), "distinct ascending"),
    (lambda: SelfDraft((-1, 0)), ">= 0"),
    (lambda: SelfDraft.early_exit(0), "exit layer"),
    (lambda: SelfDraft((0,), num_draft=0), "num_draft"),
])
def test_bad_self_draft_configs_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layers,draft_params,message", [
    ((0, 2), None, "layers the target does not have"),
    ((0,), {"ids": np.arange(4)}, "'vocab_ids': ids"),
    ((0,), PARAMS, "'vocab_ids': ids"),
    ((0,), {"vocab_ids": np.array([3, 1, 2])}, "distinct ascending"),
    ((0,), {"vocab_ids": np.array([0, 320])}, "distinct ascending ids in 0..319"),
])
def test_self_draft_checks_layers_and_params_before_compiling(layers, draft_params, message):
    with pytest.raises(ValueError, match=message):
        sdjax.generate(PARAMS, PROMPTS, spec(SelfDraft(layers), max_new_tokens=4),
                       draft_params=draft_params)
