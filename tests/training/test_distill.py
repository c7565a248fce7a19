"""DistillSpec / Seq-KD on the bundled testbed pair: each divergence raises the draft's
acceptance by depth on held-out prompts, the on-policy sampler is the draft's own
decoding, resume is exact, and bad configs are refused by name."""

import dataclasses
import math

import jax
import numpy as np
import pytest

import sdjax
from sdjax import data, testbed
from sdjax.drafters import DraftModel
from sdjax.drafters.draft_model import draft_from_layers, load_draft_model, save_draft_model
from sdjax.training import distill
from tests.hf_models import stdlib_source


@pytest.fixture(scope="module")
def pair():
    """The testbed target and draft (float32), a distillation stream and held-out prompts
    (another module's source)."""
    target = sdjax.load_hf(testbed.path("target"))
    draft = sdjax.load_hf(testbed.path("draft"), load_tokenizer=False)
    train = data.encode_corpus(target.tokenizer, [stdlib_source("textwrap", "shlex", "string")])
    val = data.encode_corpus(target.tokenizer, [stdlib_source("json.decoder")])
    starts = np.linspace(0, len(val) - 40, 8).astype(int)
    return target, draft, train, val, np.stack([val[s:s + 32] for s in starts])


def _config(path, **changes):
    values = dict(target="unused", draft="unused", output=str(path), prompt_len=32,
                  seq_len=128, batch_size=8, steps=20, learning_rate=1e-3, warmup_steps=4,
                  weight_decay=0.0, eval_every=20, eval_batches=2, checkpoint_every=10,
                  data_parallel=1)
    return distill.DistillConfig(**{**values, **changes})


def _speculate(target, draft_cfg, draft_params, prompts):
    """(tokens, acceptance by depth) of a greedy 4-token draft chain."""
    cfg = sdjax.SpecConfig(model=target.config, drafter=DraftModel(draft_cfg, num_draft=4),
                           max_new_tokens=48)
    out = sdjax.generate(target.params, prompts, cfg, draft_params=draft_params)
    return out.tokens, out.stats["acceptance_by_depth"]


def test_divergences_match_their_closed_forms():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.7, 0.2, 0.1])
    log_p, log_q = np.log(p), np.log(q)
    kl = lambda a, b: float(np.sum(a * np.log(a / b)))
    m = (p + q) / 2
    expected = {"fkl": kl(p, q), "rkl": kl(q, p), "jsd": (kl(p, m) + kl(q, m)) / 2,
                "tvd": float(np.abs(p - q).sum() / 2)}
    for name, fn in distill.DIVERGENCES.items():
        np.testing.assert_allclose(fn(log_p, log_q), expected[name], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(fn(log_p, log_p), 0.0, atol=1e-7, err_msg=name)
    # Disjoint supports: JSD reaches log 2, TV reaches 1.
    far_p, far_q = np.log([1.0 - 1e-12, 1e-12]), np.log([1e-12, 1.0 - 1e-12])
    np.testing.assert_allclose(distill.jensen_shannon(far_p, far_q), math.log(2), rtol=1e-6)
    np.testing.assert_allclose(distill.total_variation(far_p, far_q), 1.0, rtol=1e-6)


def test_greedy_on_policy_samples_are_the_drafts_own_greedy_decoding(pair):
    _, draft, _, _, prompts = pair
    sampled = jax.jit(lambda p, x: distill.sample_continuations(
        p, draft.config, x, 16, jax.random.key(0), 0.0))(draft.params, prompts)
    out = sdjax.generate(draft.params, prompts, sdjax.SpecConfig(model=draft.config,
                                                                 max_new_tokens=16))
    np.testing.assert_array_equal(sampled[:, :32], prompts)
    np.testing.assert_array_equal(sampled[:, 32:], out.tokens)


# (divergence, on-policy fraction): each divergence once, on fixed and on-policy data.
@pytest.mark.parametrize("divergence,on_policy", [
    ("tvd", 0.5), pytest.param("fkl", 0.0, marks=pytest.mark.slow),
    pytest.param("rkl", 0.5, marks=pytest.mark.slow),
    pytest.param("jsd", 0.0, marks=pytest.mark.slow)])
def test_distillation_raises_acceptance_by_depth_on_held_out_prompts(pair, tmp_path,
                                                                     divergence, on_policy):
    target, draft, train, val, prompts = pair
    cfg = _config(tmp_path, divergence=divergence, on_policy=on_policy)
    loss_fn = distill.distill_loss(cfg, draft.config, target.config)
    before = distill.evaluate(cfg, draft.params, loss_fn, val, frozen=target.params)
    result = distill.train_distill(cfg, target, draft, train, val, progress=False)
    after = result.history[-1]
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_top1"] > before["eval_top1"] + 0.05
    assert after["eval_accept"] > before["eval_accept"] + 0.05
    greedy = sdjax.generate(target.params, prompts,
                            sdjax.SpecConfig(model=target.config, max_new_tokens=48)).tokens
    tokens_before, depth_before = _speculate(target, draft.config, draft.params, prompts)
    tokens_after, depth_after = _speculate(target, draft.config,
                                           jax.device_get(result.params), prompts)
    np.testing.assert_array_equal(tokens_before, greedy)
    np.testing.assert_array_equal(tokens_after, greedy)
    assert np.all(depth_after > depth_before), (depth_before, depth_after)


@pytest.mark.slow  # fit's resume is in the default run (LM, heads); this adds on-policy rows
def test_resume_reproduces_the_uninterrupted_run(pair, tmp_path):
    target, draft, train, _, _ = pair
    cfg = _config(tmp_path / "whole", divergence="jsd", on_policy=0.5, steps=4,
                  checkpoint_every=2, batch_size=4, seq_len=64, prompt_len=16)
    whole = distill.train_distill(cfg, target, draft, train, progress=False)
    parts = dataclasses.replace(cfg, output=str(tmp_path / "parts"))
    distill.train_distill(parts, target, draft, train, stop_at=2, progress=False)
    resumed = distill.train_distill(parts, target, draft, train, progress=False)
    assert resumed.step == 4
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_on_policy_rows_count_only_the_positions_that_predict_a_sample():
    weights = np.asarray(distill.on_policy_weights((3, 6), 2, 4))
    # Rows 0-1: tokens 4.. are sampled; position t predicts token t + 1, so 3.. count.
    np.testing.assert_array_equal(weights, [[0, 0, 0, 1, 1, 1]] * 2 + [[1] * 6])


def test_the_cli_names_every_divergence():
    from sdjax import cli

    assert cli.DIVERGENCE_NAMES == tuple(sorted(distill.DIVERGENCES))


@pytest.mark.parametrize("changes,message", [
    (dict(on_policy=0.1, batch_size=4), "rounds to no on-policy row"),
    (dict(divergence="kl"), "divergence must be one of"),
    (dict(on_policy=1.5), "on_policy must be in"),
    (dict(on_policy=0.5, prompt_len=128), "prompt_len must be in"),
    (dict(sample_temperature=-1.0), "sample_temperature must be >= 0"),
    (dict(export_dtype="int8"), "export_dtype"),
    (dict(draft=None), "needs one of draft"),
    (dict(draft_layers=(0, 1)), "needs one of draft"),
    (dict(draft_vocab=0), "draft_vocab must be >= 1"),
])
def test_bad_configs_are_refused_by_name(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **changes)


def test_a_draft_with_another_vocabulary_is_refused(pair):
    target, draft, _, _, _ = pair
    other = dataclasses.replace(draft.config, vocab_size=draft.config.vocab_size // 2)
    with pytest.raises(ValueError, match="share a tokenizer"):
        distill.check_pair(target.config, other)


def test_a_draft_of_all_the_targets_layers_is_the_target(pair):
    target, _, _, _, prompts = pair
    layers = range(target.config.num_layers)
    cfg, params = draft_from_layers(target.config, target.params, layers)
    assert cfg == target.config
    tokens, depth = _speculate(target, cfg, params, prompts)
    np.testing.assert_array_equal(depth, [1.0] * 4)
    # Sliding-window layers keep their kind; bad layer lists are refused.
    sliding = target.config.replace(sliding_window=16,
                                    sliding_layers=(True, False, True, True, False, True))
    assert draft_from_layers(sliding, target.params, (1, 2, 4))[0].sliding_layers == (
        False, True, False)
    for bad in ((), (3, 1), (0, 0), (6,)):
        with pytest.raises(ValueError, match="distinct ascending layers"):
            draft_from_layers(target.config, target.params, bad)


def test_a_layer_draft_over_a_reduced_vocabulary_distils_and_reloads(pair, tmp_path):
    """The Gemma 3 recipe on the testbed: two of the target's six layers, scoring the 512
    most frequent training tokens, distilled half on-policy; greedy stays exact before
    and after, and the tokens accepted per cycle rise."""
    target, _, train, val, prompts = pair
    cfg = _config(tmp_path, draft=None, draft_layers=(0, 5), draft_vocab=512, on_policy=0.5,
                  divergence="fkl", steps=30, eval_every=30)
    draft, ids = distill.initial_draft(cfg, target, train)
    assert draft.config.num_layers == 2 and ids.shape == (512,)
    loss_fn = distill.distill_loss(cfg, draft.config, target.config, ids)
    before = distill.evaluate(cfg, draft.params, loss_fn, val, frozen=target.params)
    result = distill.train_distill(cfg, target, draft, train, val, progress=False,
                                   vocab_ids=ids)
    after = result.history[-1]
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_top1"] > before["eval_top1"] + 0.05
    sampled = distill.sample_continuations(result.params, draft.config, prompts, 8,
                                           jax.random.key(1), 1.0, ids)
    assert np.isin(np.asarray(sampled[:, 32:]), ids).all()  # on-policy rows stay in the K
    save_draft_model(str(tmp_path / "hf"), draft.config,
                     {**jax.device_get(result.params), "vocab_ids": ids}, target.tokenizer)
    model, draft_params = load_draft_model(str(tmp_path / "hf"))
    np.testing.assert_array_equal(draft_params["vocab_ids"], ids)
    greedy = sdjax.generate(target.params, prompts,
                            sdjax.SpecConfig(model=target.config, max_new_tokens=48)).tokens
    tokens_before, depth_before = _speculate(target, draft.config,
                                             {**draft.params, "vocab_ids": ids}, prompts)
    tokens_after, depth_after = _speculate(target, model.config, draft_params, prompts)
    np.testing.assert_array_equal(tokens_before, greedy)
    np.testing.assert_array_equal(tokens_after, greedy)
    # tokens accepted per cycle (the sum over depths); depth 1 starts near 0.6 already
    assert depth_after.sum() > depth_before.sum() + 0.2, (depth_before, depth_after)
