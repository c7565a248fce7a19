"""Medusa, Hydra, the MLP speculator, ReDrafter, EAGLE and Kangaroo training: losses fall,
held-out agreement rises above untrained heads, resume is exact, sharded training matches one
device, exported heads decode the same."""

import dataclasses

import jax
import numpy as np
import pytest

import sdjax
from sdjax import trees
from sdjax.heads import (
    Eagle,
    Eagle2,
    Hydra,
    Kangaroo,
    Medusa,
    MLPSpeculator,
    ReDrafter,
    init_eagle,
    init_heads,
    load_heads,
    save_heads,
)
from sdjax.training import heads as heads_training
from sdjax.training import lm, loop
from tests.training.conftest import TINY_MODEL

MODEL = TINY_MODEL


@pytest.fixture(scope="module")
def setup(tmp_path_factory, corpus):
    """A tiny target trained briefly on real source, and the corpus streams."""
    tokenizer, train, val = corpus
    model_cfg = lm.model_config(MODEL, len(tokenizer), tokenizer.eos_token_id)
    cfg = lm.LMTrainConfig(model=MODEL, output=str(tmp_path_factory.mktemp("lm")), seq_len=64,
                           batch_size=16, steps=200, learning_rate=1e-2, warmup_steps=10,
                           eval_every=200, eval_batches=1, checkpoint_every=200,
                           data_parallel=1)
    params = lm.train_lm(cfg, model_cfg, train, progress=False).params
    return sdjax.LoadedModel(model_cfg, jax.device_get(params), tokenizer), train, val


# A kind name, or an EAGLE-3 draft with a reduced vocabulary of its 128 most
# frequent training tokens (an int32 leaf in the trained params).
VARIANTS = {"eagle3_reduced": dict(kind="eagle3", draft_vocab=128),
            "hydra_reduced": dict(kind="hydra", draft_vocab=128),
            "kangaroo": dict(kind="kangaroo", exit_layer=1),
            "kangaroo_reduced": dict(kind="kangaroo", exit_layer=1, draft_vocab=128)}


def _config(path, kind="medusa", **changes):
    values = dict(target="unused", output=str(path), num_heads=3, seq_len=32, batch_size=8,
                  steps=6, learning_rate=1e-2, warmup_steps=2, eval_every=3, eval_batches=2,
                  checkpoint_every=3, data_parallel=1, **VARIANTS.get(kind, dict(kind=kind)))
    return heads_training.HeadsTrainConfig(**{**values, **changes})


# The full-vocabulary Hydra shares every line with the reduced one but its head: slow.
@pytest.mark.parametrize("kind", ["medusa", pytest.param("hydra", marks=pytest.mark.slow),
                                  "hydra_reduced", "mlp_speculator", "redrafter"])
def test_training_lowers_the_loss_and_beats_untrained_heads(setup, tmp_path, kind):
    target, train, val = setup
    cfg = _config(tmp_path, steps=40, eval_every=20, checkpoint_every=40, kind=kind)
    heads_cfg, result = heads_training.train_heads(cfg, target, train, val, progress=False)
    untrained = init_heads(heads_cfg, target.params, jax.random.PRNGKey(0),
                           result.params["params"].get("vocab_ids"))
    windows = loop.eval_windows(val, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    loss_fn = heads_training.make_loss(cfg, target.config, heads_cfg)
    before, before_metrics = loss_fn(untrained, target.params, windows)
    after = result.history[-1]
    # Soft-label CE keeps the target's own entropy: only the KL part can fall.
    assert after["eval_loss"] < float(before) - 0.15, (float(before), after)
    gains = [after[f"eval_top1_head{k}"] - float(before_metrics[f"top1_head{k}"])
             for k in range(3)]
    assert min(gains) > 0.02 and np.mean(gains) > 0.05, gains


# Kangaroo's adapter reads exact target states at every depth: it reports depth 1 only.
@pytest.mark.parametrize("kind", [
    "eagle", pytest.param("eagle3", marks=pytest.mark.slow), "eagle3_reduced",
    pytest.param("kangaroo", marks=pytest.mark.slow), "kangaroo_reduced"])
def test_training_lowers_the_loss_and_raises_acceptance_by_depth(setup, tmp_path, kind):
    target, train, val = setup
    cfg = _config(tmp_path, steps=40, eval_every=20, checkpoint_every=40, kind=kind)
    draft_cfg, result = heads_training.train_heads(cfg, target, train, val, progress=False)
    ids = result.params["params"].get("vocab_ids")
    untrained = init_heads(draft_cfg, target.params, jax.random.PRNGKey(0), ids)
    windows = loop.eval_windows(val, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    before, before_metrics = heads_training.make_loss(cfg, target.config, draft_cfg)(
        untrained, target.params, windows)
    after = result.history[-1]
    # Soft-label CE keeps the target's entropy; Kangaroo's adapter starts as the target's
    # next layer (68% agreement here), so less of its loss is left to fall.
    drop = 0.02 if cfg.kind == "kangaroo" else 0.2 * float(before)
    assert after["eval_loss"] < float(before) - drop, (float(before), after)
    gains = [after[f"eval_{name}"] - float(value) for name, value in before_metrics.items()]
    assert len(gains) == (1 if cfg.kind == "kangaroo" else 3) and min(gains) > 0.05, gains


def test_unrolled_training_sees_what_a_tree_node_sees():
    """Unrolled step s at position p stands for a depth-(s + 1) node whose root is at
    p - s: it sees the committed entries up to the root (step 0) and its own path."""
    from sdjax.heads.losses import unrolled_mask
    length, steps = 6, 3
    mask = unrolled_mask(length, 2, steps).reshape(length, steps, length)
    p = 4
    assert np.flatnonzero(mask[p, 0]).tolist() == [0, 1, 2]  # up to the root at p - 2
    assert np.flatnonzero(mask[p, 1]).tolist() == [3]  # the depth-1 node
    assert np.flatnonzero(mask[p, 2]).tolist() == [4]  # itself
    causal = unrolled_mask(length, 0, steps).reshape(length, steps, length)
    np.testing.assert_array_equal(causal[:, 0], np.tril(np.ones((length, length), bool)))
    assert not causal[:, 1:].any()


def test_eagle_feature_noise_comes_from_the_step_key(setup, tmp_path):
    target, train, _ = setup
    cfg = _config(tmp_path, kind="eagle")
    eagle_cfg = sdjax.heads.eagle_config(target.config)
    params = init_eagle(eagle_cfg, target.params, jax.random.PRNGKey(0))
    loss_fn = heads_training.make_loss(cfg, target.config, eagle_cfg)
    windows = loop.batch_at(train, 0, 4, cfg.seq_len, 0)
    loss = lambda key, fn=loss_fn: float(fn(params, target.params, windows, key)[0])
    noiseless = heads_training.make_loss(dataclasses.replace(cfg, feature_noise=0.0),
                                         target.config, eagle_cfg)
    # Evaluation (no key) sees no noise; each training key its own.
    assert loss(None) == loss(jax.random.key(0), noiseless)
    assert len({loss(None), loss(jax.random.key(0)), loss(jax.random.key(1))}) == 3


# fit()'s resume is the same for every kind and runs by default in tests/training/
# test_lm.py; every kind's here is slow.
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hydra", "redrafter", "eagle", "eagle3", "eagle3_reduced",
                                  "kangaroo_reduced"])
def test_resume_reproduces_the_uninterrupted_run(setup, tmp_path, kind):
    target, train, val = setup
    _, whole = heads_training.train_heads(_config(tmp_path / "whole", kind=kind), target,
                                          train, val, progress=False)
    cfg = _config(tmp_path / "split", kind=kind)
    _, first = heads_training.train_heads(cfg, target, train, val, stop_at=3, progress=False)
    assert first.step == 3
    _, resumed = heads_training.train_heads(cfg, target, train, val, progress=False)
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)


# Slow: the default run has fit() on a mesh against one device (test_lm) and heads
# trained on a mesh spanning two processes (test_sharding).
@pytest.mark.parametrize("kind,metric", [
    pytest.param("hydra", "eval_top1_head0", marks=pytest.mark.slow),
    pytest.param("eagle3", "eval_top1_depth2", marks=pytest.mark.slow)])
def test_sharded_training_matches_one_device(setup, tmp_path, kind, metric):
    target, train, val = setup
    _, one = heads_training.train_heads(_config(tmp_path / "one", kind=kind), target, train,
                                        val, progress=False)
    _, sharded = heads_training.train_heads(
        _config(tmp_path / "4x2", data_parallel=4, model_parallel=2, kind=kind), target,
        train, val, progress=False)
    assert len(one.history) == len(sharded.history) == 2
    for a, b in zip(one.history, sharded.history):
        for key in ("loss", "eval_loss", metric):
            np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("kind,drafter", [
    pytest.param("medusa", Medusa, marks=pytest.mark.slow),
    pytest.param("hydra", Hydra, marks=pytest.mark.slow), ("mlp_speculator", MLPSpeculator),
    ("redrafter", lambda c, tree: ReDrafter(c, beam_width=2)),
    pytest.param("eagle", Eagle, marks=pytest.mark.slow),
    pytest.param("eagle3", lambda c, tree: Eagle2(c, depth=3, top_k=2, num_nodes=6),
                 marks=pytest.mark.slow),
    ("eagle3_reduced", Eagle),
    # the bundled testbed and Gemma adapters load through load_heads in the default run
    pytest.param("kangaroo_reduced", lambda c, tree: Kangaroo(adapter=c, tree=tree),
                 marks=pytest.mark.slow)])
def test_exported_heads_reload_and_decode_identically(setup, tmp_path, kind, drafter):
    target, train, val = setup
    heads_cfg, result = heads_training.train_heads(_config(tmp_path, kind=kind), target, train,
                                                   val, progress=False)
    save_heads(str(tmp_path / "heads"), heads_cfg, result.params)
    loaded_cfg, loaded = load_heads(str(tmp_path / "heads"))
    assert loaded_cfg == heads_cfg
    prompt = val[:40].tolist()
    cfg = sdjax.SpecConfig(model=target.config, max_new_tokens=24, eos_token_id=())
    plain = sdjax.generate(target.params, prompt, cfg)
    tree = trees.from_choices([(0,), (1,), (0, 0), (0, 0, 0)])
    outs = [sdjax.generate(target.params, prompt, cfg.replace(drafter=drafter(c, tree)),
                           draft_params=p) for c, p in ((heads_cfg, result.params),
                                                        (loaded_cfg, loaded))]
    for out in outs:
        np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert outs[0].stats["tau"] == outs[1].stats["tau"]


def test_a_reduced_vocabulary_holds_the_most_frequent_training_tokens(setup, tmp_path):
    from sdjax.drafters.vocab import frequent_tokens

    target, train, val = setup
    cfg = _config(tmp_path, kind="eagle3_reduced", steps=3)
    eagle_cfg, result = heads_training.train_heads(cfg, target, train, val, progress=False)
    ids = np.asarray(result.params["params"]["vocab_ids"])
    counts = np.bincount(train, minlength=target.config.vocab_size)
    assert len(ids) == len(set(ids.tolist())) == 128 and np.all(np.diff(ids) > 0)
    assert counts[ids].min() >= np.delete(counts, ids).max()  # no outsider is more frequent
    np.testing.assert_array_equal(frequent_tokens(train, 128, target.config.vocab_size), ids)
    assert result.params["params"]["lm_head"]["kernel"].shape == (eagle_cfg.hidden_size, 128)
    save_heads(str(tmp_path / "shipped"), eagle_cfg, result.params, dtype="bfloat16")
    _, shipped = load_heads(str(tmp_path / "shipped"))  # shipping: floats cast, ids kept
    assert shipped["params"]["lm_head"]["kernel"].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(shipped["params"]["vocab_ids"], ids)
    with pytest.raises(ValueError, match="not this target's tokenizer"):
        frequent_tokens(np.array([0, 5, 900]), 2, 600)
    with pytest.raises(ValueError, match="draft_vocab: eagle heads read the full"):
        _config(tmp_path, kind="eagle", draft_vocab=64)
    with pytest.raises(ValueError, match="draft_vocab needs distill"):
        _config(tmp_path, kind="hydra", draft_vocab=64, distill=False)
    with pytest.raises(ValueError, match="draft_vocab must be in"):
        sdjax.heads.eagle_config(target.config, "eagle3", draft_vocab=10**6)
    for kind, exit_layer in (("kangaroo", 0), ("eagle", 1)):
        with pytest.raises(ValueError, match="exit_layer"):
            _config(tmp_path, kind=kind, exit_layer=exit_layer)
    with pytest.raises(ValueError, match="needs distill: true"):
        _config(tmp_path, kind="kangaroo", exit_layer=1, distill=False)


def test_a_run_can_start_from_shipped_heads(setup, tmp_path):
    """init_from: a run starts from a heads folder (bfloat16 as shipped, widened back), its
    reduced vocabulary kept; heads of another shape are refused by field."""
    target, train, val = setup
    cfg = _config(tmp_path / "first", kind="hydra_reduced", steps=3)
    heads_cfg, first = heads_training.train_heads(cfg, target, train, val, progress=False)
    save_heads(str(tmp_path / "shipped"), heads_cfg, first.params, dtype="bfloat16")
    _, shipped = load_heads(str(tmp_path / "shipped"))
    # One step at warmup's learning rate 0 leaves the start as it was.
    _, second = heads_training.train_heads(
        _config(tmp_path / "second", kind="hydra_reduced", steps=1, warmup_steps=10,
                init_from=str(tmp_path / "shipped")), target, train, val, progress=False)
    widened = jax.tree.map(lambda x: x if x.dtype.kind == "i" else np.float32(x), shipped)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(second.params), widened)
    assert second.params["params"]["lm_head"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(second.params["params"]["vocab_ids"],
                                  first.params["params"]["vocab_ids"])
    with pytest.raises(ValueError, match=r"differ from this run's in \['num_heads'\]"):
        heads_training.train_heads(
            _config(tmp_path / "third", kind="hydra_reduced", num_heads=2,
                    init_from=str(tmp_path / "shipped")), target, train, val, progress=False)


def test_heads_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="heads_config.json"):
        load_heads(str(tmp_path))


def test_generation_shards_hold_the_targets_own_continuations(setup, tmp_path):
    from sdjax.training.generations import read_generations, write_generations

    target, train, _ = setup
    folder = str(tmp_path / "generations")
    manifest = write_generations(target, train, folder, num_prompts=5, prompt_len=16,
                                 new_tokens=12, batch_size=2, prompts_per_shard=2,
                                 progress=False)
    assert len(manifest["shards"]) == 3  # 2 + 2 + 1 prompts
    stream = read_generations(folder, target.config)
    assert len(stream) == manifest["tokens"]
    prompt = stream[:16]
    assert any(np.array_equal(prompt, train[s: s + 16]) for s in range(len(train) - 16))
    cfg = sdjax.SpecConfig(model=target.config, max_new_tokens=12)
    reference = sdjax.generate(target.params, prompt.tolist(), cfg)
    count = int(reference.num_tokens[0])
    np.testing.assert_array_equal(stream[16: 16 + count], reference.tokens[0, :count])
    with pytest.raises(ValueError, match="generated by a model with vocab"):
        read_generations(folder, target.config.replace(vocab_size=7))
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_generations(str(tmp_path))
