"""Sharded generate on 8 simulated CPU devices (see conftest) and the pmap entry."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sdjax
from sdjax import sharding
from tests.drafters import test_speculative as spec_tests

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

PROMPTS = [list(range(3, 3 + n)) for n in (4, 9, 2, 6, 12)]  # 5 rows: not a multiple of 2 or 8


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "qwen2_bias_tied", "gemma3_local_global"])
def test_sharded_generate_matches_unsharded(hf_checkpoints, arch):
    model = sdjax.load_hf(hf_checkpoints[arch])
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=16, eos_token_id=())
    plain = sdjax.generate(model.params, PROMPTS, cfg)
    mesh = sharding.make_mesh(data=2, model=4)
    sharded = sdjax.generate(model.params, PROMPTS, cfg, mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens, plain.tokens)


# One of each kind of drafter state in the default run (all of them with -m slow): a draft
# model's cache (tree), an ensemble's tuple of them, heads' hidden state, EAGLE's cache,
# feature buffer and dynamic frontier, REST's datastore, the target's own cache, and
# Lookahead's window and pool with non-candidate tokens.
DEFAULT_MESH_DRAFTERS = {"draft_model_tree_2x2", "ensemble_reduced_chain_and_tree",
                         "hydra_tree_noisy", "eagle3_dynamic_adaptive", "rest_tree",
                         "layer_skip_tree_2x2", "lookahead_context_reduced_vocab"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[] if n in DEFAULT_MESH_DRAFTERS else pytest.mark.slow)
    for n in sorted(spec_tests.DRAFTERS)])
def test_every_drafter_on_a_mesh_equals_one_device(name):
    drafter, draft_params = spec_tests.DRAFTERS[name]
    cfg = spec_tests.spec(drafter, max_new_tokens=14)
    plain = sdjax.generate(spec_tests.PARAMS, spec_tests.PROMPTS, cfg, draft_params=draft_params)
    mesh = sharding.make_mesh(data=2, model=4)
    sharded = sdjax.generate(spec_tests.PARAMS, spec_tests.PROMPTS, cfg,
                             draft_params=draft_params, mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens, plain.tokens)
    np.testing.assert_array_equal(sharded.stats["accepted_hist"], plain.stats["accepted_hist"])


@pytest.mark.slow  # 18 s; the greedy mesh tests above cover every drafter state
def test_sampled_decoding_on_a_data_mesh_equals_one_device():
    drafter, draft_params = spec_tests.DRAFTERS["eagle_tree"]
    cfg = spec_tests.spec(drafter, max_new_tokens=12, temperature=1.0, seed=3)
    plain = sdjax.generate(spec_tests.PARAMS, spec_tests.PROMPTS, cfg, draft_params=draft_params)
    sharded = sdjax.generate(spec_tests.PARAMS, spec_tests.PROMPTS, cfg,
                             draft_params=draft_params, mesh=sharding.make_mesh(data=8, model=1))
    np.testing.assert_array_equal(sharded.tokens, plain.tokens)


def test_params_are_really_split_over_the_model_axis(hf_checkpoints):
    model = sdjax.load_hf(hf_checkpoints["llama_gqa"])
    mesh = sharding.make_mesh(data=2, model=4)
    specs = sharding.param_specs(model.params, mesh)["params"]
    assert specs["layers_0"]["attn"]["q_proj"]["kernel"] == P(None, "model")
    assert specs["layers_0"]["mlp"]["down_proj"]["kernel"] == P("model", None)
    assert specs["embed"]["embedding"] == P("model", None)
    assert specs["final_norm"]["scale"] == P(None)
    placed = sharding.shard_params(model.params, mesh)
    kernel = placed["params"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (64, 128 // 4)


def test_unknown_parameter_has_no_silent_rule():
    mesh = sharding.make_mesh(data=2, model=4)
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.param_specs({"params": {"mystery": {"w": np.zeros(4)}}}, mesh)


def test_mesh_size_must_match_devices():
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh(data=2, model=3)


def test_pmap_entry_matches_batched_generate(hf_checkpoints):
    model = sdjax.load_hf(hf_checkpoints["llama_gqa"])
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=12, eos_token_id=())
    batched = sdjax.generate(model.params, PROMPTS, cfg)
    pmapped = sdjax.generate_pmapped(model.params, PROMPTS, cfg, devices=jax.devices()[:4])
    np.testing.assert_array_equal(pmapped.tokens, batched.tokens)
    np.testing.assert_array_equal(pmapped.num_tokens, batched.num_tokens)


def test_two_processes_on_one_mesh_equal_one_process(tmp_path):
    """The multi-host path a TPU pod takes, for real: two processes joined by
    `jax.distributed.initialize`, 4 CPU devices each, one (2 x 4) mesh across them."""
    import os
    import socket
    import subprocess
    import sys

    from tests import multiprocess_worker as worker

    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker", address,
                               str(i), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_array_equal(result["tokens"], worker.decode())
    flat = worker.flatten(worker.train(str(tmp_path / "single")))
    assert set(flat) == set(result.files) - {"tokens"}
    for name, value in flat.items():
        np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
