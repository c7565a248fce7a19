"""Bad checkpoints fail loudly, naming what is wrong."""

import json
import os
import shutil

import numpy as np
import pytest
import transformers

import sdjax
from tests import hf_models


def copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sdjax.load_hf(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        sdjax.load_hf(str(tmp_path))


def test_missing_weights(hf_checkpoints, tmp_path):
    path = copy(hf_checkpoints["llama_gqa"], tmp_path / "m")
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="expected model.safetensors"):
        sdjax.load_hf(path)
    open(os.path.join(path, "pytorch_model.bin"), "wb").close()
    with pytest.raises(FileNotFoundError, match="safe_serialization"):
        sdjax.load_hf(path)


def test_unknown_architecture(tmp_path):
    transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(sdjax.UnsupportedModelError, match="'bert' is not supported"):
        sdjax.load_hf(str(tmp_path))


def test_unsupported_rope_type(tmp_path):
    transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                               "rope_theta": 10000.0},
    ).save_pretrained(tmp_path)
    with pytest.raises(sdjax.UnsupportedModelError, match="yarn"):
        sdjax.load_hf(str(tmp_path))


def test_missing_and_misshapen_tensors(hf_checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file
    path = copy(hf_checkpoints["llama_gqa"], tmp_path / "m")
    weights = load_file(os.path.join(path, "model.safetensors"))
    bad = dict(weights)
    del bad["model.layers.1.mlp.up_proj.weight"]
    save_file(bad, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        sdjax.load_hf(path)
    bad = dict(weights, **{"model.norm.weight": np.ones(7, np.float32)})
    save_file(bad, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(7,\)"):
        sdjax.load_hf(path)


def test_sharded_safetensors_and_old_rope_keys(hf_checkpoints, tmp_path):
    """A checkpoint split over shards, with the pre-`rope_parameters` config keys."""
    model = hf_models.load_torch(hf_checkpoints["llama3_rope_mqa_bias"])
    path = str(tmp_path / "m")
    model.save_pretrained(path, max_shard_size="20KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    loaded = sdjax.load_hf(path)
    reference = sdjax.load_hf(hf_checkpoints["llama3_rope_mqa_bias"])
    assert loaded.config == reference.config
    assert loaded.config.rope_scaling.rope_type == "llama3"
    np.testing.assert_array_equal(
        loaded.params["params"]["layers_1"]["attn"]["o_proj"]["kernel"],
        reference.params["params"]["layers_1"]["attn"]["o_proj"]["kernel"])


def test_tokenizer_is_loaded_and_checked_against_the_vocabulary(hf_checkpoints, tokenizer_dir,
                                                               tmp_path):
    path = copy(hf_checkpoints["llama_gqa"], tmp_path / "m")  # vocabulary 96
    for name in os.listdir(tokenizer_dir):  # 300 tokens
        shutil.copy(os.path.join(tokenizer_dir, name), path)
    with pytest.raises(ValueError, match="do not belong together"):
        sdjax.load_hf(path)
    assert sdjax.load_hf(path, load_tokenizer=False).tokenizer is None


def test_tokenizer_round_trips_through_save_hf(tokenizer_dir, tmp_path):
    import jax
    cfg = sdjax.ModelConfig(vocab_size=320, hidden_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=2, head_dim=16, intermediate_size=64,
                            max_position_embeddings=64, eos_token_id=(0,))
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    params = sdjax.init_params(cfg, jax.random.PRNGKey(0))
    sdjax.save_hf(str(tmp_path), cfg, params, tok)
    loaded = sdjax.load_hf(str(tmp_path))
    assert loaded.config == cfg
    # written like any other file (safetensors' own writer would make it private)
    (tmp_path / "plain.txt").write_text("")
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
    assert mode("model.safetensors") == mode("plain.txt") == mode("config.json")
    text = hf_models.stdlib_source("shlex")[:500]
    assert loaded.tokenizer.decode(loaded.tokenizer(text)["input_ids"]) == text
