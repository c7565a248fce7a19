"""Frozen, hashable configuration dataclasses.

They are passed to `jax.jit` as static arguments, so every field is an immutable
Python value (tuples, not lists). Each checks its fields' types and ranges when built
(`sdjax.validation`); `from_dict` builds one from a mapping (a YAML preset, a JSON
file) and names any key it does not know.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple, Union

from sdjax.protocols import Drafter, Verifier
from sdjax.validation import check_fields, check_range, from_dict

NORMS = ("rms", "layer")
POSITION_EMBEDDINGS = ("rope", "learned")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling, as `transformers` names it (`rope_type`)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        check_fields(self)
        check_range(self, "factor", 0, low_open=True)
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer, as feature flags.

    The defaults are Llama's (pre-norm RMSNorm, rotary positions, gated MLP, separate
    q/k/v); a model family is a preset of these flags (`sdjax.models.families`), so
    nothing outside `sdjax.models` needs to know which family it runs.
    `hf_model_type` remembers the `transformers` model type so that `save_hf` writes
    the same family back.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float = 1e-6
    activation: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: Optional[int] = None
    sliding_layers: Optional[Tuple[bool, ...]] = None  # None: all layers, if window set
    # Family features (Llama's values by default).
    norm: str = "rms"  # "rms" | "layer" (LayerNorm with bias, GPT-2)
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + w): Gemma stores w - 1
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys (Gemma 3)
    sandwich_norms: bool = False  # norms after attention and after the MLP too (Gemma 2/3)
    scale_embeddings: bool = False  # input embeddings times sqrt(hidden_size) (Gemma)
    query_pre_attn_scalar: Optional[float] = None  # scores scaled by its -1/2 power
    attn_logit_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap)
    rope_local_theta: Optional[float] = None  # sliding layers' rope base (Gemma 3)
    position_embedding: str = "rope"  # "rope" | "learned" (GPT-2)
    fused_qkv: bool = False  # one q/k/v projection (GPT-2)
    gated_mlp: bool = True  # act(gate(x)) * up(x); False: act(up(x))
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    bos_token_id: Optional[int] = None
    eos_token_id: Tuple[int, ...] = ()
    pad_token_id: Optional[int] = None
    hf_model_type: str = "llama"

    def __post_init__(self):
        check_fields(self)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "max_position_embeddings"):
            check_range(self, name, 1)
        check_range(self, "norm_eps", 0, low_open=True)
        if self.sliding_window is not None:
            check_range(self, "sliding_window", 1)
        bad = [i for i in self.eos_token_id if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ModelConfig.eos_token_id {bad} outside the vocabulary "
                             f"[0, {self.vocab_size})")
        for name, value, choices in (("norm", self.norm, NORMS),
                                     ("position_embedding", self.position_embedding,
                                      POSITION_EMBEDDINGS),
                                     ("activation", self.activation, ACTIVATIONS)):
            if value not in choices:
                raise ValueError(f"unsupported {name} {value!r}; supported: {choices}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ValueError("sliding_layers needs one entry per layer")
        for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    @property
    def query_scale(self) -> float:
        """What attention multiplies q.k by."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def uses_sliding_window(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        return self.sliding_layers is None or self.sliding_layers[layer]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig from its `dataclasses.asdict` form (e.g. read back from JSON)."""
    return from_dict(ModelConfig, {**values, "rope_scaling": values.get("rope_scaling") or {}})


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """What `generate` does: the model, the drafter, how many tokens, how to sample,
    when to stop.

    `drafter=None` is plain autoregressive decoding; otherwise a `Drafter` (one of
    `sdjax.drafters` or `sdjax.heads`: frozen dataclasses, so the config stays
    hashable); `verifier=None` is lossless rejection sampling (`sdjax.verify`).
    temperature 0 is greedy decoding. `eos_token_id=None` stops on the model's own
    EOS ids; `()` never stops early. `pad_token_id` fills each output row after its
    end (any int: -1 marks the end unmistakably). `max_seq_len=None` allows up to the model's
    `max_position_embeddings` positions (prompt + new tokens).
    """

    model: ModelConfig
    drafter: Optional[Drafter] = None
    verifier: Optional[Verifier] = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: Union[None, int, Tuple[int, ...]] = None
    pad_token_id: int = 0
    seed: int = 0
    min_prompt_bucket: int = 16
    max_seq_len: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        check_fields(self)
        check_range(self, "max_new_tokens", 1)
        check_range(self, "temperature", 0)
        check_range(self, "top_k", 0)
        check_range(self, "top_p", 0, 1, low_open=True)
        check_range(self, "min_prompt_bucket", 1)
        if self.max_seq_len is not None:
            check_range(self, "max_seq_len", 2)
        vocab = self.model.vocab_size
        bad = [i for i in self.eos_ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"SpecConfig.eos_token_id {bad} outside the vocabulary [0, {vocab})")

    def program(self) -> "SpecConfig":
        """This config without the fields that only the host reads (the seed, the
        prompt bucketing and length limit): what the compiled loop depends on."""
        return self.replace(seed=0, min_prompt_bucket=16, max_seq_len=None)

    @property
    def eos_ids(self) -> Tuple[int, ...]:
        if self.eos_token_id is None:
            return tuple(self.model.eos_token_id)
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @property
    def seq_limit(self) -> int:
        return self.max_seq_len or self.model.max_position_embeddings

    def replace(self, **changes) -> "SpecConfig":
        return dataclasses.replace(self, **changes)
