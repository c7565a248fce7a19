"""sdjax models against `transformers` PyTorch models with the same weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import sdjax
from sdjax.models import KVCache, Transformer
from tests import hf_models

ARCHS = sorted(hf_models.SPECS)
# Long enough to cross the sliding window (8) and the llama3 rope's original length (16).
SEQ = np.random.default_rng(0).integers(0, 96, size=(2, 40))


def sdjax_logits(model: sdjax.LoadedModel, tokens: np.ndarray) -> np.ndarray:
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    cache = KVCache.init(model.config, batch, length)
    out = Transformer(model.config).apply(model.params, jnp.asarray(tokens), positions, cache)
    return np.asarray(out.logits)


def torch_logits(torch_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch_model(torch.as_tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(hf_checkpoints, arch):
    path = hf_checkpoints[arch]
    ours = sdjax_logits(sdjax.load_hf(path), SEQ)
    theirs = torch_logits(hf_models.load_torch(path), SEQ)
    assert np.abs(ours).max() > 0.1  # a non-trivial model
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_transformers(hf_checkpoints, arch):
    path = hf_checkpoints[arch]
    model = sdjax.load_hf(path)
    prompt = SEQ[0, :7]
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=48, eos_token_id=())
    ours = sdjax.generate(model.params, prompt.tolist(), cfg).tokens[0]
    with torch.no_grad():
        theirs = hf_models.load_torch(path).generate(
            torch.as_tensor(prompt[None]), max_new_tokens=48, min_new_tokens=48,
            do_sample=False, pad_token_id=0)[0, 7:].numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_hf_round_trips_through_transformers(hf_checkpoints, arch, tmp_path):
    model = sdjax.load_hf(hf_checkpoints[arch])
    sdjax.save_hf(str(tmp_path), model.config, model.params)
    reloaded = hf_models.load_torch(str(tmp_path))
    np.testing.assert_allclose(
        torch_logits(reloaded, SEQ), sdjax_logits(model, SEQ), atol=1e-4, rtol=0)
    assert sdjax.load_hf(str(tmp_path)).config == model.config


def test_multimodal_gemma3_loads_its_text_tower(tmp_path):
    model = hf_models.build("gemma3_multimodal", hf_models.multimodal_gemma3())
    model.save_pretrained(str(tmp_path))
    ours = sdjax.load_hf(str(tmp_path))
    assert ours.config.hf_model_type == "gemma3_text" and ours.config.qk_norm
    tokens = SEQ % 90
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(sdjax_logits(ours, tokens), theirs, atol=1e-4, rtol=0)


def test_intermediate_hidden_states_match_transformers(hf_checkpoints):
    path = hf_checkpoints["llama_gqa"]
    model = sdjax.load_hf(path)
    cache = KVCache.init(model.config, 2, SEQ.shape[1])
    positions = jnp.broadcast_to(jnp.arange(SEQ.shape[1]), SEQ.shape)
    out = Transformer(model.config).apply(
        model.params, jnp.asarray(SEQ), positions, cache, hidden_layers=(0, 1))
    with torch.no_grad():
        ref = hf_models.load_torch(path)(torch.as_tensor(SEQ), output_hidden_states=True)
    assert len(out.intermediates) == 2
    for ours, layer in zip(out.intermediates, (0, 1)):
        np.testing.assert_allclose(np.asarray(ours), ref.hidden_states[layer].numpy(), atol=1e-4)


def test_bfloat16_params_and_compute_stay_close(hf_checkpoints):
    path = hf_checkpoints["llama_gqa"]
    exact = sdjax_logits(sdjax.load_hf(path), SEQ)
    low = sdjax.load_hf(path, dtype="bfloat16")
    assert jnp.asarray(low.params["params"]["embed"]["embedding"]).dtype == jnp.bfloat16
    approx = sdjax_logits(low, SEQ)
    assert approx.dtype == np.float32
    assert np.abs(approx - exact).max() < 0.1 * np.abs(exact).max()
