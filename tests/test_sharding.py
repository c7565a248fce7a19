"""Sharded generate on 8 simulated CPU devices (see conftest) and the pmap entry."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sdjax
from sdjax import sharding

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
