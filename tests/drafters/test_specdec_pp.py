"""SpecDec++: the acceptance head's stop rule through the loop, its checks, and its
training on the testbed pair (it beats the best constant guess; resume is exact)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax import data, testbed, trees
from sdjax.drafters import DraftModel, draft_model
from sdjax.drafters.acceptance import (
    AcceptanceHeadConfig,
    init_acceptance_head,
    load_acceptance_head,
    save_acceptance_head,
    with_acceptance_head,
)
from sdjax.models.transformer import sequence_forward
from sdjax.training import acceptance
from tests.drafters.test_speculative import (
    DRAFT,
    DRAFT_PARAMS,
    PARAMS,
    PROMPT,
    PROMPTS,
    TARGET,
    TINY,
    TINY_DRAFT,
    TINY_DRAFT_PARAMS,
    TINY_PARAMS,
    TINY_STOP_HEAD,
    TINY_STOP_HEAD_PARAMS,
    spec,
)
from tests.hf_models import stdlib_source

CONSTANT = AcceptanceHeadConfig(TARGET.hidden_size, num_blocks=0)


def constant_head(p: float) -> dict:
    """A head that predicts acceptance probability p whatever it reads."""
    params = init_acceptance_head(CONSTANT, jax.random.PRNGKey(0))
    out = params["params"]["out"]
    out["kernel"] = jnp.zeros_like(out["kernel"])
    out["bias"] = jnp.full_like(out["bias"], math.log(p / (1 - p)))
    return params


# (predicted acceptance, threshold, chain length): the chain stops at the first depth d
# with 1 - p**d > threshold, or at its maximum of 5.
@pytest.mark.parametrize("p,threshold,length", [
    (1e-6, 0.5, 1),  # always "stop": one draft a cycle
    (1 - 1e-6, 0.5, 5),  # never: the whole chain
    (0.8, 0.5, 4),  # 0.8, 0.64, 0.512, 0.41
    pytest.param(0.7, 0.5, 2, marks=pytest.mark.slow),  # 0.7 > 0.5, 0.49 < 0.5
    pytest.param(0.8, 0.7, 5, marks=pytest.mark.slow),  # 0.8**4 = 0.41 > 0.3: no stop
])
def test_a_constant_head_stops_every_chain_where_the_threshold_says(p, threshold, length):
    drafter = DraftModel(TARGET, num_draft=5, stop_head=CONSTANT, stop_threshold=threshold)
    cycles = 4
    cfg = spec(drafter, max_new_tokens=1 + (length + 1) * cycles)
    out = sdjax.generate(PARAMS, PROMPTS, cfg,
                         draft_params=with_acceptance_head(PARAMS, constant_head(p)))
    # The draft is the target itself: each cycle accepts all `length` drafts, + 1.
    assert out.stats["tau"] == length + 1
    np.testing.assert_array_equal(out.stats["cycles"], [cycles] * len(PROMPTS))
    plain = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=1 + (length + 1) * cycles))
    np.testing.assert_array_equal(out.tokens, plain.tokens)


def test_stop_head_configs_and_params_are_checked():
    with pytest.raises(ValueError, match="neither a tree nor adaptive"):
        DraftModel(TARGET, tree=trees.kary(2, 2), stop_head=CONSTANT)
    with pytest.raises(ValueError, match="neither a tree nor adaptive"):
        DraftModel(TARGET, adaptive=True, stop_head=CONSTANT)
    with pytest.raises(ValueError, match="hidden states of 32"):
        DraftModel(TARGET, stop_head=AcceptanceHeadConfig(32))
    with pytest.raises(ValueError, match="stop_threshold must be in"):
        DraftModel(TARGET, stop_head=CONSTANT, stop_threshold=1.5)
    drafter = DraftModel(TARGET, stop_head=CONSTANT)
    with pytest.raises(ValueError, match="'acceptance_head'"):
        sdjax.generate(PARAMS, PROMPTS, spec(drafter), draft_params=PARAMS)
    wide = init_acceptance_head(AcceptanceHeadConfig(TARGET.hidden_size, 2), jax.random.key(0))
    with pytest.raises(ValueError, match="do not fit"):
        sdjax.generate(PARAMS, PROMPTS, spec(drafter),
                       draft_params=with_acceptance_head(PARAMS, wide))


def test_the_head_reads_the_state_the_draft_had_after_reading_each_drafted_token(monkeypatch):
    """What the stop rule is given at depth d is the draft's final hidden state at the
    depth-d token, as a whole-sequence forward over prompt + root + drafts computes it:
    the state `sdjax train acceptance` trains the head on."""
    seen = []

    def record(cfg, params, hidden):  # traced (levels run under lax.cond)
        jax.debug.callback(lambda h: seen.append(np.asarray(h)), hidden[:, 0], ordered=True)
        return jnp.full(hidden.shape[:2], 0.99)

    monkeypatch.setattr(draft_model, "acceptance_probability", record)
    head = AcceptanceHeadConfig(DRAFT.hidden_size)
    drafter = DraftModel(DRAFT, num_draft=4, stop_head=head, stop_threshold=0.5)
    params = with_acceptance_head(DRAFT_PARAMS, init_acceptance_head(head, jax.random.key(0)))
    prompts = jnp.array([[5, 9, 2, 7, 7, 1], [3, 3, 8, 1, 4, 6]])
    lengths = jnp.array([6, 6])
    state = drafter.init(params, prompts, lengths, 32)
    sequence = jnp.zeros((2, 32), jnp.int32).at[:, :6].set(prompts).at[:, 6].set(11)
    tree, _ = drafter.propose(params, state, sequence, lengths + 1, jax.random.key(1),
                              spec(drafter))
    whole = jnp.concatenate([sequence[:, :7], tree.tokens[:, 1:]], axis=1)
    hidden = sequence_forward(DRAFT_PARAMS, DRAFT, whole).hidden
    assert len(seen) == 3  # depths 1..3 (the chain's last token is never judged)
    for depth, state_seen in enumerate(seen, start=1):
        np.testing.assert_allclose(state_seen, hidden[:, 6 + depth], atol=1e-5)


def test_the_random_head_of_the_exact_law_test_stops_chains_at_several_depths():
    """The sampled-law entry of tests/drafters/test_speculative.py truncates for real."""
    cfg = sdjax.SpecConfig(model=TINY, temperature=0.9, max_new_tokens=24, eos_token_id=(),
                           drafter=DraftModel(TINY_DRAFT, num_draft=3,
                                              stop_head=TINY_STOP_HEAD, stop_threshold=0.5))
    out = sdjax.generate(TINY_PARAMS, [PROMPT] * 64, cfg,
                         draft_params=with_acceptance_head(TINY_DRAFT_PARAMS,
                                                           TINY_STOP_HEAD_PARAMS))
    plain = sdjax.generate(TINY_PARAMS, [PROMPT] * 64, cfg.replace(
        drafter=DraftModel(TINY_DRAFT, num_draft=3)), draft_params=TINY_DRAFT_PARAMS)
    # Truncation shows as fewer drafts accepted at depth 3 than with the whole chain.
    assert out.stats["acceptance_by_depth"][2] < 0.9 * plain.stats["acceptance_by_depth"][2]
    assert out.stats["acceptance_by_depth"][0] > 0


def test_a_head_trained_for_another_temperature_is_refused():
    drafter = DraftModel(TARGET, stop_head=CONSTANT)
    with pytest.raises(ValueError, match="trained for temperature 0.0"):
        sdjax.generate(PARAMS, PROMPTS, spec(drafter, temperature=0.7),
                       draft_params=with_acceptance_head(PARAMS, constant_head(0.5)))


@pytest.fixture(scope="module")
def pair():
    target = sdjax.load_hf(testbed.path("target"))
    draft = sdjax.load_hf(testbed.path("draft"), load_tokenizer=False)
    train = data.encode_corpus(target.tokenizer, [stdlib_source("textwrap", "shlex", "string")])
    val = data.encode_corpus(target.tokenizer, [stdlib_source("json.decoder")])
    return target, draft, train, val


def _config(path, **changes):
    values = dict(target="unused", draft="unused", output=str(path), prompt_len=16,
                  seq_len=96, batch_size=8, steps=40, learning_rate=1e-2, warmup_steps=4,
                  weight_decay=0.0, eval_every=40, eval_batches=2, checkpoint_every=20,
                  data_parallel=1)
    return acceptance.AcceptanceTrainConfig(**{**values, **changes})


@pytest.mark.parametrize("temperature", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_a_trained_head_beats_the_best_constant_guess(pair, tmp_path, temperature):
    target, draft, train, val = pair
    # Sampled drafts' soft labels are noisier: that head trains longer.
    cfg = _config(tmp_path, temperature=temperature, steps=60 if temperature == 0 else 120)
    head_cfg, result = acceptance.train_acceptance(cfg, target, draft, train, val,
                                                   progress=False)
    last = result.history[-1]
    assert 0.1 < last["eval_accept_rate"] < 0.9  # both outcomes are common
    # Greedy labels are 0/1 facts about the draft's state; sampled ones are mostly noise
    # of the token drawn (measured: 0.79 and 0.95 of the constant guess's error).
    assert last["eval_brier"] < (0.85 if temperature == 0 else 0.97) * last[
        "eval_brier_constant"], last
    if temperature:
        return  # sampled decoding with a stop head: the exact-law test
    # Saved and loaded, it drives the drafter; the output is still plain greedy.
    save_acceptance_head(str(tmp_path / "head"), head_cfg, jax.device_get(result.params))
    loaded_cfg, head = load_acceptance_head(str(tmp_path / "head"))
    assert loaded_cfg == head_cfg
    prompts = np.stack([val[s:s + 32] for s in range(0, 800, 100)])
    cfg = sdjax.SpecConfig(model=target.config, max_new_tokens=40, drafter=DraftModel(
        draft.config, num_draft=8, stop_head=loaded_cfg, stop_threshold=0.7))
    out = sdjax.generate(target.params, prompts, cfg,
                         draft_params=with_acceptance_head(draft.params, head))
    plain = sdjax.generate(target.params, prompts,
                           sdjax.SpecConfig(model=target.config, max_new_tokens=40))
    np.testing.assert_array_equal(out.tokens, plain.tokens)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(pair, tmp_path):
    target, draft, train, _ = pair
    cfg = _config(tmp_path / "whole", steps=4, checkpoint_every=2, temperature=1.0)
    _, whole = acceptance.train_acceptance(cfg, target, draft, train, progress=False)
    parts = dataclasses.replace(cfg, output=str(tmp_path / "parts"))
    acceptance.train_acceptance(parts, target, draft, train, stop_at=2, progress=False)
    _, resumed = acceptance.train_acceptance(parts, target, draft, train, progress=False)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_labels_are_greedy_agreement_or_the_rejection_samplers_acceptance():
    target = jnp.log(jnp.array([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]]))
    draft = jnp.log(jnp.array([[[0.3, 0.6, 0.1], [0.1, 0.3, 0.6]]]))
    tokens = jnp.array([[1, 2]])
    np.testing.assert_array_equal(acceptance.acceptance_labels(target, draft, tokens, 0.0),
                                  [[0.0, 1.0]])
    np.testing.assert_allclose(acceptance.acceptance_labels(target, draft, tokens, 1.0),
                               [[0.5, 1.0]], rtol=1e-6)
