"""Tiny `transformers` models, one per supported architecture, as test references."""

import os

import torch
import transformers

_BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, initializer_range=0.1,
             eos_token_id=None, bos_token_id=None, pad_token_id=None)

SPECS = {
    "llama_gqa": lambda: transformers.LlamaConfig(num_key_value_heads=2, **_BASE),
    "llama3_rope_mqa_bias": lambda: transformers.LlamaConfig(
        num_key_value_heads=1, attention_bias=True, mlp_bias=True, head_dim=24,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16},
        **_BASE),
    "llama_rope_linear_tied": lambda: transformers.LlamaConfig(
        num_key_value_heads=4, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        **_BASE),
    "mistral_sliding": lambda: transformers.MistralConfig(
        num_key_value_heads=2, sliding_window=8, **_BASE),
    "qwen2_bias_tied": lambda: transformers.Qwen2Config(
        num_key_value_heads=2, tie_word_embeddings=True, **_BASE),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128,
        initializer_range=0.1, eos_token_id=None, bos_token_id=None),
    # Gemma: soft caps small enough to bend the scores, a window (8) shorter than the
    # prompts so local and global layers differ, query_pre_attn_scalar != head_dim and
    # head_dim != hidden / heads.
    "gemma2_softcap": lambda: transformers.Gemma2Config(
        num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=40, sliding_window=8,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention"], **_BASE),
    "gemma3_local_global": lambda: transformers.Gemma3TextConfig(
        **{**_BASE, "num_hidden_layers": 3}, num_key_value_heads=1, head_dim=24,
        query_pre_attn_scalar=40, sliding_window=8, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0,
                               "factor": 2.0}}),
}


def multimodal_gemma3():
    """A tiny image-text Gemma 3 (`Gemma3Config`: a SigLIP tower and a text tower); its
    image-token ids (93-95) are above the ids the parity tests feed it."""
    text = {**_BASE, "num_key_value_heads": 1, "head_dim": 24, "query_pre_attn_scalar": 40,
            "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    return transformers.Gemma3Config(text_config=text, vision_config=vision,
                                     mm_tokens_per_image=4, boi_token_index=93,
                                     eoi_token_index=94, image_token_index=95)


def build(name: str, config=None):
    torch.manual_seed(sum(map(ord, name)))
    config = config or SPECS[name]()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # Gemma's norms start at w = 0, which would hide their (1 + w)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") and not param.abs().any():
                param.normal_(0.0, 0.5)
    return model


def write_checkpoint(name: str, path: str) -> str:
    build(name).save_pretrained(path)
    return path


def load_torch(path: str):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def stdlib_source(*modules: str) -> str:
    """Real text: source files of the running interpreter's standard library."""
    import importlib
    texts = []
    for name in modules:
        with open(importlib.import_module(name).__file__, encoding="utf-8") as f:
            texts.append(f.read())
    return "\n".join(texts)


def train_tokenizer(path: str, vocab_size: int) -> None:
    from sdjax.data import train_tokenizer as train

    os.makedirs(path, exist_ok=True)
    train([stdlib_source("textwrap", "shlex")], vocab_size).save_pretrained(path)
