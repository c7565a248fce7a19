"""Self-speculation (`SelfDraft`): the target's own layers draft over its own cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax.decode.prompts import prefill
from sdjax.drafters.self_draft import SelfDraft
from tests.drafters.test_speculative import PARAMS, PROMPTS, TARGET, spec

# The same weights with a 4-token sliding window on layer 0 (Gemma's local layers);
# the prompts are longer than the window.
SLIDING = TARGET.replace(sliding_window=4, sliding_layers=(True, False))
MODELS = pytest.mark.parametrize("cfg", [TARGET, SLIDING], ids=["global", "sliding"])


@MODELS
def test_with_every_layer_the_draft_is_the_target(cfg):
    drafter = SelfDraft.early_exit(cfg.num_layers, num_draft=4)
    out = sdjax.generate(PARAMS, PROMPTS, spec(drafter, max_new_tokens=1 + 5 * 6).replace(
        model=cfg))
    assert out.stats["tau"] == 5.0
    np.testing.assert_array_equal(out.stats["acceptance_by_depth"], [1, 1, 1, 1])


def first_layers(cfg, exit_layer):
    """The target cut after `exit_layer` layers, as a model of its own."""
    cut = {f"layers_{i}" for i in range(exit_layer, cfg.num_layers)}
    return cfg.replace(num_layers=exit_layer, sliding_layers=cfg.sliding_layers and
                       cfg.sliding_layers[:exit_layer]), \
        {"params": {k: v for k, v in PARAMS["params"].items() if k not in cut}}


def prefilled(cfg, prompt):
    """The target's cache after `prompt`, the sequence with its greedy root appended,
    and seq_len: what `propose` sees in the first cycle."""
    tokens, length = jnp.asarray([prompt]), jnp.asarray([len(prompt)])
    start = prefill(PARAMS, cfg, tokens, length, 64)
    root = int(jnp.argmax(start.last_logits[0]))
    sequence = jnp.zeros((1, 64), jnp.int32).at[0, :len(prompt)].set(tokens[0])
    return start.cache, sequence.at[0, len(prompt)].set(root), length + 1


def propose(drafter, cfg, prompt, draft_params=None):
    cache, sequence, seq_len = prefilled(cfg, prompt)
    return drafter.propose(drafter.bind(draft_params, PARAMS), (), sequence, seq_len,
                           jax.random.PRNGKey(0), spec(drafter).replace(model=cfg),
                           target_cache=cache)[0]


@MODELS
def test_an_early_exit_chain_is_the_first_layers_greedy_continuation(cfg):
    """Over the target's cache, the first E layers draft exactly what the E-layer model
    alone would generate: the draft reads the committed KV of the right layers (in the
    window, for a sliding layer) and its own pending KV, and nothing else."""
    tree = propose(SelfDraft.early_exit(1, num_draft=4), cfg, PROMPTS[0])
    root = int(tree.tokens[0, 0])
    short_cfg, short_params = first_layers(cfg, 1)
    alone = sdjax.generate(short_params, [PROMPTS[0] + [root]],
                           spec(max_new_tokens=4).replace(model=short_cfg))
    np.testing.assert_array_equal(tree.tokens[0], [root, *alone.tokens[0]])


def test_a_confidence_threshold_stops_each_row_where_its_draft_is_unsure():
    """Kangaroo's early stop: the chain's limit is the first level whose drafted token
    had a probability below `min_confidence` under the draft (the E-layer model)."""
    def drafted(min_confidence):
        return propose(SelfDraft((0,), num_draft=4, min_confidence=min_confidence), TARGET,
                       PROMPTS[1])

    chain = np.asarray(drafted(0.0).tokens[0])  # root, then 4 drafts
    short_cfg, short_params = first_layers(TARGET, 1)
    text = np.concatenate([PROMPTS[1], chain[:-1]])[None]
    logits = sdjax.Transformer(short_cfg).apply(
        short_params, jnp.asarray(text), jnp.arange(text.shape[1])[None],
        sdjax.KVCache.init(short_cfg, 1, text.shape[1])).logits
    confidence = np.asarray(jax.nn.softmax(logits[0, -4:]).max(-1))  # of each draft
    for threshold in sorted(confidence)[:3] + [confidence.max() + 1e-3]:
        tree = drafted(float(threshold + 1e-7))
        below = np.flatnonzero(confidence < threshold + 1e-7)
        assert int(tree.limit[0]) == below[0]
        np.testing.assert_array_equal(tree.tokens[0, :below[0] + 1], chain[:below[0] + 1])


def test_a_reduced_vocabulary_exit_head_drafts_the_best_of_its_own_tokens():
    """An exit head over every fifth id but the E-layer model's favourite drafts, as
    its first token, that model's most probable token among its ids."""
    _, sequence, seq_len = prefilled(TARGET, PROMPTS[1])
    short_cfg, short_params = first_layers(TARGET, 1)
    text = sequence[:, :int(seq_len[0])]
    logits = sdjax.Transformer(short_cfg).apply(
        short_params, text, jnp.arange(text.shape[1])[None],
        sdjax.KVCache.init(short_cfg, 1, text.shape[1])).logits[0, -1]
    ids = np.setdiff1d(np.arange(0, 320, 5), [int(jnp.argmax(logits))])
    tree = propose(SelfDraft((0,), num_draft=3), TARGET, PROMPTS[1], {"vocab_ids": ids})
    assert int(tree.tokens[0, 1]) == ids[int(jnp.argmax(logits[ids]))]
    assert np.isin(np.asarray(tree.tokens[0, 1:]), ids).all()


@pytest.mark.parametrize("make,message", [
    (lambda: SelfDraft(()), "distinct ascending"),
    (lambda: SelfDraft((1, 0)), "distinct ascending"),
    (lambda: SelfDraft((-1, 0)), ">= 0"),
    (lambda: SelfDraft.early_exit(0), "exit layer"),
    (lambda: SelfDraft.early_exit(True), "exit layer"),
    (lambda: SelfDraft((0,), min_confidence=1.5), "min_confidence"),
    (lambda: SelfDraft((0,), num_draft=0), "num_draft"),
])
def test_bad_self_draft_configs_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layers,draft_params,message", [
    ((0, 2), None, "layers the target does not have"),
    ((0,), {"ids": np.arange(4)}, r"got \['ids'\]"),
    ((0,), PARAMS, r"got \['params'\]"),
    ((0,), {"vocab_ids": np.array([3, 1, 2])}, "distinct ascending"),
    ((0,), {"vocab_ids": np.array([0, 320])}, "distinct ascending ids in 0..319"),
    ((0,), {"vocab_ids": np.array([], int)}, "non-empty 1-D"),
    ((0,), {"vocab_ids": np.array([[1, 2]])}, "non-empty 1-D"),
    ((0,), {"vocab_ids": None}, "non-empty 1-D"),
    ((0,), {"vocab_ids": np.array([1.0, 2.0])}, "int 'vocab_ids'"),
])
def test_self_draft_checks_layers_and_params_before_compiling(layers, draft_params, message):
    with pytest.raises(ValueError, match=message):
        sdjax.generate(PARAMS, PROMPTS, spec(SelfDraft(layers), max_new_tokens=4),
                       draft_params=draft_params)


def test_propose_without_the_target_cache_is_refused():
    drafter = SelfDraft((0,))
    with pytest.raises(ValueError, match="target_cache"):
        drafter.propose(drafter.bind(None, PARAMS), (), jnp.zeros((1, 8), jnp.int32),
                        jnp.asarray([3]), jax.random.PRNGKey(0), spec(drafter))
