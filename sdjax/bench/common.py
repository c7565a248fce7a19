"""Shared pieces of the benchmark commands: the random-weight test checkpoint, the
draft-model tree the benchmarks use, the machine a report was measured on."""

from __future__ import annotations

import argparse
import os
import platform

import jax

from sdjax import trees

# The x86 instructions that decide XLA:CPU's speed here: without AVX-512 BF16 (or AMX) a
# bfloat16 matmul is emulated and runs slower than float32 (Gemma 3 270M, 2026-12-07).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

# A static draft tree for the draft model: two candidates at the first two levels,
# then the best path goes two levels deeper (8 nodes).
DRAFT_TREE = trees.from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0],
                                 [0, 0, 0, 0]])


def machine(cpuinfo: str = "/proc/cpuinfo") -> str:
    """One line naming what a benchmark ran on: the CPU, its cores, which of `CPU_FLAGS`
    it has, and JAX's backend. Figures measured on machines whose lines differ do not
    compare (the same session's ratios do)."""
    model, flags = platform.processor() or platform.machine(), set()
    if os.path.exists(cpuinfo):
        with open(cpuinfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model, flags = fields.get("model name", model), set(fields.get("flags", "").split())
    has = [f for f in CPU_FLAGS if f in flags]
    lacks = [f for f in CPU_FLAGS if f not in flags]
    isa = " ".join(has) or "none of " + " ".join(CPU_FLAGS)
    if has and lacks:
        isa += " (no " + ", ".join(lacks) + ")"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cores} cores, {isa}; jax {jax.__version__} on "
            f"{jax.devices()[0].device_kind}")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Size of the random-weight Llama checkpoint (defaults: about 28.8M parameters)."""
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)


def build_checkpoint(args, path: str) -> int:
    """Writes a random-weight `LlamaForCausalLM` with `transformers`; returns its size."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
        eos_token_id=None, bos_token_id=None, pad_token_id=None)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())



def torch_generate(model, prompts, new_tokens: int, **kwargs):
    """Greedy `transformers` generate of exactly `new_tokens` after each of `prompts`
    (equal-length id lists): (new token ids [B, new_tokens], seconds)."""
    import time

    import torch

    tokens = torch.as_tensor(prompts)
    start = time.perf_counter()
    with torch.no_grad():  # an explicit mask: a real token equal to pad_token_id stays seen
        out = model.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=0, **kwargs)
    return out[:, len(prompts[0]):].numpy(), time.perf_counter() - start
