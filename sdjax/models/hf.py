"""Hugging Face checkpoint interop: `load_hf` reads an ordinary checkpoint folder,
`save_hf` writes one that `transformers` loads.

A folder holds config.json (read through `transformers.AutoConfig`), the weights as
model.safetensors or sharded behind model.safetensors.index.json, and optionally
the tokenizer files (read through `AutoTokenizer`).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import safetensors.flax

from sdjax.config import ModelConfig, RopeScaling
from sdjax.models.families import (
    FAMILIES,
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    family_config,
)
from sdjax.models.transformer import param_shapes

if TYPE_CHECKING:
    import transformers


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")
# Parts of a multimodal Gemma 3 checkpoint that are not its text tower.
_NOT_TEXT_TOWER = ("vision_tower", "multi_modal_projector")
_TEXT_TOWER_PREFIXES = ("model.language_model.", "language_model.model.")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel",
                  "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
_CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig",
                   "qwen2": "Qwen2Config", "gemma2": "Gemma2Config",
                   "gemma3_text": "Gemma3TextConfig"}


class LoadedModel(NamedTuple):
    """A checkpoint in memory: config, params pytree, tokenizer (or None)."""
    config: ModelConfig
    params: Dict[str, Any]
    tokenizer: Optional[Any]


# ----------------------------------------------------------------------------- config


def _rope_scaling(params: Dict[str, Any]) -> RopeScaling:
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise UnsupportedModelError(
            f"rope type {rope_type!r} is not supported (default, linear, llama3 are)"
        )
    known = {f: params[f] for f in ("factor", "low_freq_factor", "high_freq_factor",
                                    "original_max_position_embeddings") if f in params}
    return RopeScaling(rope_type=rope_type, **known)


def _rope_from_hf(hf: Any) -> Dict[str, Any]:
    """rope_theta, rope_scaling and (for per-layer-type rope, Gemma 3) rope_local_theta,
    from `rope_parameters` (new) or `rope_theta` / `rope_scaling` (old)."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    fields = {}
    if "full_attention" in params:  # one rope per layer type
        local = dict(params.get("sliding_attention") or {})
        if local and _rope_scaling(local).rope_type != "default":
            raise UnsupportedModelError("a scaled rope on sliding-window layers is not supported")
        if local:
            fields["rope_local_theta"] = float(local.get("rope_theta", 10000.0))
        params = dict(params["full_attention"])
    fields.update(rope_theta=float(params.get("rope_theta", 10000.0)),
                  rope_scaling=_rope_scaling(params))
    return fields


def _eos_ids(value) -> Tuple[int, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, int) else tuple(value)


def _gpt2_sizes(hf: Any) -> Dict[str, Any]:
    for flag, ok in (("scale_attn_by_inverse_layer_idx", False),
                     ("scale_attn_weights", True), ("add_cross_attention", False)):
        if getattr(hf, flag, ok) != ok:
            raise UnsupportedModelError(f"GPT-2 option {flag}={not ok} is not supported")
    return dict(
        hidden_size=hf.n_embd, num_layers=hf.n_layer, num_heads=hf.n_head,
        num_kv_heads=hf.n_head, head_dim=hf.n_embd // hf.n_head,
        intermediate_size=hf.n_inner or 4 * hf.n_embd, max_position_embeddings=hf.n_positions,
        norm_eps=hf.layer_norm_epsilon, activation=hf.activation_function,
    )


def _decoder_sizes(hf: Any, model_type: str) -> Dict[str, Any]:
    """The fields of a Llama-style decoder config (Llama, Mistral, Qwen2, Gemma 2/3)."""
    if getattr(hf, "use_bidirectional_attention", False):
        raise UnsupportedModelError("bidirectional attention is not supported")
    sliding_window = getattr(hf, "sliding_window", None)
    if model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
        sliding_window = None
    layer_types = getattr(hf, "layer_types", None)
    fields = dict(
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        max_position_embeddings=hf.max_position_embeddings,
        norm_eps=hf.rms_norm_eps,
        activation=getattr(hf, "hidden_activation", None) or hf.hidden_act,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        sliding_window=sliding_window,
        sliding_layers=(tuple(t == "sliding_attention" for t in layer_types)
                        if sliding_window is not None and layer_types else None),
        query_pre_attn_scalar=getattr(hf, "query_pre_attn_scalar", None),
        attn_logit_softcap=getattr(hf, "attn_logit_softcapping", None),
        final_logit_softcap=getattr(hf, "final_logit_softcapping", None),
        **_rope_from_hf(hf),
    )
    if getattr(hf, "attention_bias", False):
        fields.update(qkv_bias=True, out_bias=True)
    return fields


def config_from_hf(hf: Any, dtype: str = "float32", param_dtype: str = "float32") -> ModelConfig:
    """Converts a `transformers` config object into a ModelConfig (a multimodal Gemma 3
    config gives its text tower's)."""
    model_type = getattr(hf, "model_type", None)
    if model_type == "gemma3":
        hf, model_type = hf.text_config, "gemma3_text"
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: "
            f"{SUPPORTED_MODEL_TYPES + ('gemma3',)}"
        )
    sizes = _gpt2_sizes(hf) if model_type == "gpt2" else _decoder_sizes(hf, model_type)
    return family_config(
        model_type,
        vocab_size=hf.vocab_size,
        bos_token_id=hf.bos_token_id,
        eos_token_id=_eos_ids(hf.eos_token_id),
        pad_token_id=hf.pad_token_id,
        dtype=dtype,
        param_dtype=param_dtype,
        **sizes,
    )


def _rope_to_hf(cfg: ModelConfig) -> Dict[str, Any]:
    rope = {"rope_type": cfg.rope_scaling.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.rope_type != "default":
        rope["factor"] = cfg.rope_scaling.factor
    if cfg.rope_scaling.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_scaling.low_freq_factor,
            high_freq_factor=cfg.rope_scaling.high_freq_factor,
            original_max_position_embeddings=cfg.rope_scaling.original_max_position_embeddings,
        )
    if cfg.rope_local_theta is None:
        return rope
    return {"full_attention": rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta}}


def config_to_hf(cfg: ModelConfig) -> transformers.PretrainedConfig:
    """The `transformers` config object that describes the same model."""
    import transformers

    common = dict(
        vocab_size=cfg.vocab_size,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=list(cfg.eos_token_id) if len(cfg.eos_token_id) > 1 else
        (cfg.eos_token_id[0] if cfg.eos_token_id else None),
        pad_token_id=cfg.pad_token_id,
    )
    if cfg.hf_model_type == "gpt2":
        return transformers.GPT2Config(
            n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings,
            layer_norm_epsilon=cfg.norm_eps, activation_function=cfg.activation, **common,
        )
    decoder = dict(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
        hidden_act=cfg.activation, rope_parameters=_rope_to_hf(cfg),
        tie_word_embeddings=cfg.tie_embeddings, **common,
    )
    per_family = {
        "llama": dict(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias),
        "mistral": dict(sliding_window=cfg.sliding_window),
        "qwen2": dict(use_sliding_window=cfg.sliding_window is not None,
                      sliding_window=cfg.sliding_window),
    }.get(cfg.hf_model_type)
    if per_family is None:  # Gemma 2 / 3
        decoder["hidden_activation"] = decoder.pop("hidden_act")
        per_family = dict(
            query_pre_attn_scalar=cfg.query_pre_attn_scalar,
            attn_logit_softcapping=cfg.attn_logit_softcap,
            final_logit_softcapping=cfg.final_logit_softcap,
            sliding_window=cfg.sliding_window,
            layer_types=[
                "sliding_attention" if cfg.uses_sliding_window(i) else "full_attention"
                for i in range(cfg.num_layers)],
        )
    config_class = getattr(transformers, _CONFIG_CLASSES[cfg.hf_model_type])
    return config_class(**decoder, **per_family)


# ---------------------------------------------------------------------------- weights


def weight_names(cfg: ModelConfig) -> Iterator[Tuple[str, Tuple[str, ...], bool]]:
    """(HF tensor name, sdjax param path, transpose?) for every parameter of `cfg`."""

    def linear(hf_name, path, bias, transpose=True):
        yield f"{hf_name}.weight", path + ("kernel",), transpose
        if bias:
            yield f"{hf_name}.bias", path + ("bias",), False

    def norm(hf_name, path):
        yield f"{hf_name}.weight", path + ("scale",), False
        if cfg.norm == "layer":
            yield f"{hf_name}.bias", path + ("bias",), False

    if cfg.hf_model_type == "gpt2":  # GPT-2's own tensor names
        yield "transformer.wte.weight", ("embed", "embedding"), False
        yield "transformer.wpe.weight", ("pos_embed", "embedding"), False
        for i in range(cfg.num_layers):
            hf, me = f"transformer.h.{i}", (f"layers_{i}",)
            yield from norm(f"{hf}.ln_1", me + ("attn_norm",))
            yield from linear(f"{hf}.attn.c_attn", me + ("attn", "qkv_proj"), True, False)
            yield from linear(f"{hf}.attn.c_proj", me + ("attn", "o_proj"), True, False)
            yield from norm(f"{hf}.ln_2", me + ("mlp_norm",))
            yield from linear(f"{hf}.mlp.c_fc", me + ("mlp", "up_proj"), True, False)
            yield from linear(f"{hf}.mlp.c_proj", me + ("mlp", "down_proj"), True, False)
        yield from norm("transformer.ln_f", ("final_norm",))
        return

    yield "model.embed_tokens.weight", ("embed", "embedding"), False
    for i in range(cfg.num_layers):
        hf, me = f"model.layers.{i}", (f"layers_{i}",)
        yield from norm(f"{hf}.input_layernorm", me + ("attn_norm",))
        for name in ("q_proj", "k_proj", "v_proj"):
            yield from linear(f"{hf}.self_attn.{name}", me + ("attn", name), cfg.qkv_bias)
        yield from linear(f"{hf}.self_attn.o_proj", me + ("attn", "o_proj"), cfg.out_bias)
        if cfg.qk_norm:
            yield from norm(f"{hf}.self_attn.q_norm", me + ("attn", "q_norm"))
            yield from norm(f"{hf}.self_attn.k_norm", me + ("attn", "k_norm"))
        if cfg.sandwich_norms:  # Gemma 2/3: post_attention_layernorm follows attention
            yield from norm(f"{hf}.post_attention_layernorm", me + ("post_attn_norm",))
            yield from norm(f"{hf}.pre_feedforward_layernorm", me + ("mlp_norm",))
            yield from norm(f"{hf}.post_feedforward_layernorm", me + ("post_mlp_norm",))
        else:
            yield from norm(f"{hf}.post_attention_layernorm", me + ("mlp_norm",))
        for name in ("gate_proj", "up_proj", "down_proj"):
            yield from linear(f"{hf}.mlp.{name}", me + ("mlp", name), cfg.mlp_bias)
    yield from norm("model.norm", ("final_norm",))
    if not cfg.tie_embeddings:
        yield from linear("lm_head", ("lm_head",), False)


def read_safetensors_file(path: str) -> Dict[str, jax.Array]:
    """One safetensors file; a damaged one is a ValueError that names it."""
    try:
        return safetensors.flax.load_file(path)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file (truncated or "
                         f"corrupt?): {err}") from err


def write_safetensors(path: str, tensors: Dict[str, Any], metadata=None) -> None:
    """Writes arrays (jax or numpy) as a safetensors file, created like any other file:
    with the umask's permissions (safetensors' own writer makes every file private)."""
    data = safetensors.flax.save({k: jnp.asarray(v) for k, v in tensors.items()}, metadata)
    with open(path, "wb") as f:
        f.write(data)


def save_tree(path: str, tree) -> None:
    """A nested dict of arrays as one safetensors file, keys joined by '/'."""
    from flax.traverse_util import flatten_dict

    write_safetensors(path, {"/".join(k): v for k, v in flatten_dict(tree).items()})


def load_tree(path: str) -> dict:
    """The nested dict `save_tree` wrote."""
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({tuple(k.split("/")): v
                           for k, v in read_safetensors_file(path).items()})


def _read_safetensors(path: str) -> Dict[str, jax.Array]:
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return read_safetensors_file(single)
    if os.path.exists(index):
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{index} lists no weight files (no 'weight_map')")
        tensors: Dict[str, jax.Array] = {}
        for shard in shards:
            shard_path = os.path.join(path, shard)
            if not os.path.exists(shard_path):
                raise FileNotFoundError(f"{index} lists shard {shard}, which is missing")
            tensors.update(read_safetensors_file(shard_path))
        return tensors
    other = [f for f in ("pytorch_model.bin", "model.bin", "flax_model.msgpack")
             if os.path.exists(os.path.join(path, f))]
    hint = f" (found {other}: re-save it with safe_serialization=True)" if other else ""
    raise FileNotFoundError(
        f"no weights in {path}: expected model.safetensors or "
        f"model.safetensors.index.json{hint}"
    )


def _set_path(tree: dict, path: Tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _text_tower(tensors: Dict[str, Any]) -> Dict[str, Any]:
    """A multimodal checkpoint's language-model tensors under a text model's names."""
    out = {}
    for name, value in tensors.items():
        if any(part in name for part in _NOT_TEXT_TOWER):
            continue
        for prefix in _TEXT_TOWER_PREFIXES:
            if name.startswith(prefix):
                name = "model." + name[len(prefix):]
        out[name] = value
    return out


def params_from_hf_tensors(cfg: ModelConfig, tensors: Dict[str, jax.Array]) -> dict:
    """Maps HF tensor names to the sdjax parameter pytree, checking every shape."""
    if cfg.hf_model_type == "gpt2":  # original GPT-2 checkpoints omit "transformer."
        tensors = {k if k.startswith(("transformer.", "lm_head")) else f"transformer.{k}": v
                   for k, v in tensors.items() if not k.endswith(_GPT2_BUFFERS)}
    tensors = _text_tower(tensors)
    expected = param_shapes(cfg)["params"]
    params: dict = {}
    used = set()
    for hf_name, path, transpose in weight_names(cfg):
        if hf_name not in tensors:
            raise ValueError(f"checkpoint is missing tensor {hf_name!r}")
        value = tensors[hf_name].T if transpose else tensors[hf_name]
        want = expected
        for key in path:
            want = want[key]
        if value.shape != want.shape:
            raise ValueError(
                f"tensor {hf_name!r} has shape {tuple(value.shape)}, "
                f"the config needs {tuple(want.shape)}"
            )
        _set_path(params, path, jnp.asarray(value, dtype=cfg.param_dtype))
        used.add(hf_name)
    unused = sorted(set(tensors) - used - {"lm_head.weight"})
    if unused:
        warnings.warn(f"checkpoint tensors not used by sdjax: {unused[:8]}"
                      f"{' ...' if len(unused) > 8 else ''}", stacklevel=2)
    return {"params": params}


def params_to_hf_tensors(cfg: ModelConfig, params: dict) -> Dict[str, jax.Array]:
    """`transformers`-named tensors of `params` (what `save_hf` writes)."""
    tree = params["params"]
    out = {}
    for hf_name, path, transpose in weight_names(cfg):
        value = tree
        for key in path:
            value = value[key]
        out[hf_name] = value.T if transpose else value
    return out


def read_json(path: str) -> dict:
    """A JSON object from a file; malformed JSON is a ValueError naming the file."""
    try:
        with open(path) as f:
            values = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return values


# ------------------------------------------------------------------------- public API


def load_hf(
    path: str,
    dtype: str = "float32",
    param_dtype: Optional[str] = None,
    load_tokenizer: bool = True,
) -> LoadedModel:
    """Loads config, parameters and (if present) tokenizer from a checkpoint folder."""
    import transformers

    if path.lower().endswith(".gguf"):
        raise ValueError(f"{path} names a GGUF file, not a checkpoint folder: load it with "
                         "sdjax.load_gguf, or convert it with `sdjax convert`")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path!r} does not exist")
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path!r} has no config.json")
    model_type = read_json(config_path).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES + ("gemma3",):  # before transformers' advice
        raise UnsupportedModelError(
            f"{config_path}: model_type {model_type!r} is not supported; supported: "
            f"{SUPPORTED_MODEL_TYPES + ('gemma3',)}")
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    cfg = config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype or dtype)
    params = params_from_hf_tensors(cfg, _read_safetensors(path))
    tokenizer = None
    if load_tokenizer and any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        if len(tokenizer) > cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                f"only {cfg.vocab_size}: they do not belong together"
            )
    return LoadedModel(cfg, params, tokenizer)


def save_hf(path: str, cfg: ModelConfig, params: dict, tokenizer: Any = None) -> None:
    """Writes config.json, model.safetensors (and the tokenizer) for `transformers`."""
    os.makedirs(path, exist_ok=True)
    hf_config = config_to_hf(cfg)
    hf_config.architectures = [_ARCHITECTURES[cfg.hf_model_type]]
    hf_config.save_pretrained(path)
    write_safetensors(os.path.join(path, "model.safetensors"),
                      params_to_hf_tensors(cfg, params), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)

