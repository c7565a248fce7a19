"""GGUF import: llama.cpp's single-file checkpoints as sdjax models.

`load_gguf(path)` reads a .gguf with the `gguf` package (its reader and dequantisers),
rebuilds the `ModelConfig` from the file's metadata, undoes what llama.cpp's converter
changed in the tensors (the q/k row permutation of llama, Gemma's stored `1 + w` norm
weights), and rebuilds the tokenizer from the vocabulary the file stores (through
`transformers`' GGUF tokenizer conversion). `convert_gguf(path, out)` writes the same
model as a Hugging Face folder, which `transformers` and `load_hf` both read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np
from tqdm import tqdm

from sdjax.config import ModelConfig, RopeScaling
from sdjax.models.families import MissingExtraError, UnsupportedModelError, family_config
from sdjax.models.hf import LoadedModel, params_from_hf_tensors, save_hf, weight_names

if TYPE_CHECKING:
    pass


# GGUF architecture -> the `transformers` model type sdjax builds for it.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2",
                      "gemma3": "gemma3_text"}
_GEMMA = ("gemma2", "gemma3")
# llama.cpp's Gemma 2/3 graphs scale queries by hidden / heads on the 27B models (46 and
# 62 layers) and by head_dim otherwise; the file does not store query_pre_attn_scalar.
_GEMMA_27B_LAYERS = (46, 62)
_GEMMA3_SLIDING_PATTERN = 6  # llama.cpp: every 6th Gemma 3 layer is global
_GEMMA3_LOCAL_ROPE_THETA = 10000.0  # llama.cpp's fixed base for Gemma 3's local layers


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise MissingExtraError(
            "reading GGUF files needs the `gguf` package: pip install 'sdjax[gemma3]' "
            "(or pip install gguf)") from err
    return gguf


def _reader(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist")
    try:
        return _gguf().GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as err:
        raise ValueError(f"{path} is not a readable GGUF file (truncated or corrupt?): "
                         f"{err}") from err


def _metadata(reader) -> Dict[str, Any]:
    """The scalar metadata (the tokenizer's large arrays are left out)."""
    return {key: field.contents() for key, field in reader.fields.items()
            if not key.startswith("tokenizer.ggml.") or key.endswith("_id")}


def config_from_gguf(path: str, dtype: str = "float32",
                     param_dtype: Optional[str] = None) -> ModelConfig:
    """The ModelConfig that a GGUF file's metadata describes."""
    return _config(_reader(path), path, dtype, param_dtype or dtype)


def _config(reader, path: str, dtype: str, param_dtype: str) -> ModelConfig:
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{tuple(GGUF_ARCHITECTURES)}")

    def key(name, default=KeyError):
        value = meta.get(f"{arch}.{name}", default)
        if value is KeyError:
            raise ValueError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise UnsupportedModelError(
            f"{path}: per-frequency rope factors (rope_freqs, e.g. Llama 3.1's rope) are "
            "not supported from GGUF; convert the original checkpoint with load_hf")
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: GGUF file has no token_embd.weight tensor")
    num_layers, hidden = int(key("block_count")), int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", hidden // num_heads))
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise UnsupportedModelError(f"{path}: rope scaling {scaling!r} is not supported")
    fields = dict(
        vocab_size=int(tensors["token_embd.weight"].shape[-1]),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(key("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        intermediate_size=int(key("feed_forward_length")),
        max_position_embeddings=int(key("context_length")),
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=(RopeScaling("linear", float(key("rope.scaling.factor")))
                      if scaling == "linear" else RopeScaling()),
        tie_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=tuple(np.atleast_1d(meta.get("tokenizer.ggml.eos_token_id", ())).tolist()),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        dtype=dtype,
        param_dtype=param_dtype,
    )
    if arch in _GEMMA:
        pattern = 2 if arch == "gemma2" else _GEMMA3_SLIDING_PATTERN
        fields.update(
            sliding_window=int(key("attention.sliding_window")),
            sliding_layers=tuple(i % pattern < pattern - 1 for i in range(num_layers)),
            query_pre_attn_scalar=(hidden // num_heads if num_layers in _GEMMA_27B_LAYERS
                                   else head_dim),
            attn_logit_softcap=key("attn_logit_softcapping", None),
            final_logit_softcap=key("final_logit_softcapping", None),
        )
        if arch == "gemma3":
            fields["rope_local_theta"] = _GEMMA3_LOCAL_ROPE_THETA
    elif key("attention.sliding_window", None):
        fields["sliding_window"] = int(key("attention.sliding_window"))
    return family_config(GGUF_ARCHITECTURES[arch], **fields)


def _unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's interleaving of each rotary head's rows (llama q/k)."""
    rows = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, rows, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _tensors(reader, path: str, cfg: ModelConfig, arch: str) -> Dict[str, np.ndarray]:
    """Every tensor sdjax needs, dequantised, under its Hugging Face name."""
    gguf = _gguf()
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, cfg.num_layers)
    stored = {t.name: t for t in reader.tensors}
    out = {}
    for hf_name, _, _ in tqdm(list(weight_names(cfg)), desc="dequantising GGUF tensors",
                              unit="tensor", leave=False):
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{names.get_name(base)}.{suffix}"
        if gguf_name not in stored:
            raise ValueError(f"{path}: GGUF file has no tensor {gguf_name} ({hf_name})")
        tensor = stored[gguf_name]
        try:
            value = gguf.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise UnsupportedModelError(
                f"{path}: tensor {gguf_name} has quantisation type {tensor.tensor_type.name}, "
                "which the gguf package cannot dequantise") from err
        value = value.reshape(tuple(reversed(tensor.shape.tolist())))
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):
            heads = cfg.num_heads if base.endswith("q_proj") else cfg.num_kv_heads
            value = _unpermute_rows(value, heads)
        if arch in _GEMMA and "norm" in base:
            value = value - 1.0  # llama.cpp stores Gemma's norm scales as 1 + w
        out[hf_name] = value.astype(np.float32)
    return out


def _tokenizer(reader, path: str, arch: str):
    """The tokenizer a GGUF file describes, as a `transformers` fast tokenizer.

    The vocabulary is read with the `gguf` package and handed to `transformers`' GGUF
    tokenizer converter (which rebuilds Gemma's merges, pre-tokenizers and special
    tokens); `transformers`' own GGUF reader would need PyTorch.
    """
    import transformers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    values = {key[len("tokenizer."):]: field.contents() for key, field in reader.fields.items()
              if key.startswith("tokenizer.")}
    groups = {group: {name: values[key] for key, name in renames.items() if key in values}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    vocabulary, config = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in vocabulary:
        raise ValueError(f"{path}: GGUF file has no tokenizer vocabulary")
    if vocabulary.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece
    for name in ("bos", "eos", "unk", "pad"):
        token_id = vocabulary.get(f"{name}_token_id")
        if token_id is not None:
            config[f"{name}_token"] = vocabulary["tokens"][token_id]
    try:
        backend, extra = convert_gguf_tokenizer(arch, vocabulary)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot rebuild the tokenizer: {err}") from err
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def load_gguf(path: str, dtype: str = "float32", param_dtype: Optional[str] = None,
              load_tokenizer: bool = True) -> LoadedModel:
    """Loads config, dequantised parameters and tokenizer from a .gguf file."""
    reader = _reader(path)
    cfg = _config(reader, path, dtype, param_dtype or dtype)
    arch = reader.fields["general.architecture"].contents()
    params = params_from_hf_tensors(cfg, _tensors(reader, path, cfg, arch))
    return LoadedModel(cfg, params, _tokenizer(reader, path, arch) if load_tokenizer else None)


def convert_gguf(path: str, output: str) -> str:
    """Writes a .gguf file's model as a Hugging Face folder (float32 safetensors, config,
    tokenizer) that `transformers` and `sdjax.load_hf` load; returns the folder."""
    model = load_gguf(path)
    save_hf(output, model.config, model.params, model.tokenizer)
    return output
