"""Tiny GGUF files written from `transformers` checkpoints the way llama.cpp's converter
writes them (q/k rows permuted for llama, Gemma norms stored as 1 + w), so that
`load_gguf` is tested against files whose every tensor type and convention we chose."""

import string

import gguf
import numpy as np
import torch
import transformers

# A small sentencepiece-style vocabulary: specials (pad, eos, bos, unk, as each family's
# tokenizer spells them), then characters, then a few merges.
SPECIALS = {"gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
            "llama": ["<pad>", "</s>", "<s>", "<unk>", "<mask>"]}
_CHARS = ["\u2581"] + list(string.ascii_lowercase + string.digits + ".,:()=_\n")
_MERGES = ["\u2581d", "\u2581r", "de", "\u2581de", "re", "\u2581re", "ur", "rn", "urn"]


def vocabulary(size: int, specials):
    tokens = specials + _CHARS + _MERGES
    tokens += [f"<unused{i}>" for i in range(size - len(tokens))]
    assert len(tokens) == size
    return tokens


def _permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of rotary q/k rows."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2,
                          *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _random_blocks(rows: int, cols: int, qtype) -> np.ndarray:
    """Valid quantised bytes (random codes, small finite float16 scales) for the types
    gguf-py cannot quantise to (K types, Q8_1), which readers must still handle."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.random.default_rng(0).integers(0, 256, (rows, cols // block, size), np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        data[..., -2:] = scale  # d is the last field
    else:
        data[..., 0:2] = scale  # d, then dmin
        data[..., 2:4] = scale
    return data.reshape(rows, -1)


def write_gguf(hf_dir: str, path: str, arch: str, types=None, tensor_types=None) -> dict:
    """Writes the checkpoint at hf_dir as a GGUF of architecture `arch`. `types` maps a
    GGUF tensor-name suffix to a GGMLQuantizationType (default F32); `tensor_types`
    forces a type for one tensor by full name. Returns the written tensors' types."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    cfg = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(cfg.sliding_window)
    if getattr(cfg, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    if getattr(cfg, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    specials = SPECIALS["gemma" if arch.startswith("gemma") else "llama"]
    tokens = vocabulary(cfg.vocab_size, specials)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    written = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        value = tensor.numpy()
        if arch == "llama" and base.endswith("q_proj"):
            value = _permute(value, cfg.num_attention_heads)
        if arch == "llama" and base.endswith("k_proj"):
            value = _permute(value, cfg.num_key_value_heads)
        if arch.startswith("gemma") and "norm" in base:
            value = value + 1.0
        qtype = gguf.GGMLQuantizationType.F32
        if value.ndim == 2:
            qtype = next((t for key, t in (types or {}).items() if name.endswith(key)), qtype)
        qtype = (tensor_types or {}).get(name, qtype)
        if qtype.name.endswith("_K") or qtype == gguf.GGMLQuantizationType.Q8_1:
            data = _random_blocks(*value.shape, qtype)
        elif qtype == gguf.GGMLQuantizationType.F32:
            data = np.ascontiguousarray(value, np.float32)
        else:
            data = gguf.quants.quantize(np.ascontiguousarray(value, np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        written[name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written
