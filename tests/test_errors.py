"""Bad input through the API: each case raises the exact exception type with a message
that names the problem (the CLI's table is in test_cli.py)."""

import math

import jax
import numpy as np
import pytest

import sdjax
from sdjax import heads, training, trees
from sdjax.drafters import DraftModel, PromptLookup
from sdjax.verify import TypicalAcceptance

MODEL = sdjax.ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                          num_kv_heads=2, head_dim=16, intermediate_size=64,
                          max_position_embeddings=128, eos_token_id=(1,))
PARAMS = sdjax.init_params(MODEL, jax.random.PRNGKey(0))
NAN, INF = math.nan, math.inf


def spec(**kw):
    return sdjax.SpecConfig(model=MODEL, **kw)


# (what, builder, exception type, message fragment)
CONFIG_CASES = [
    ("temperature NaN", lambda: spec(temperature=NAN), ValueError, "temperature must be finite"),
    ("temperature inf", lambda: spec(temperature=INF), ValueError, "must be finite"),
    ("temperature < 0", lambda: spec(temperature=-0.1), ValueError, "temperature must be >= 0"),
    ("temperature str", lambda: spec(temperature="0.5"), TypeError, "temperature must be float"),
    ("top_p NaN", lambda: spec(top_p=NAN), ValueError, "top_p must be finite"),
    ("top_p 0", lambda: spec(top_p=0.0), ValueError, "top_p must be in (0, 1]"),
    ("top_k < 0", lambda: spec(top_k=-1), ValueError, "top_k must be >= 0"),
    ("top_k float", lambda: spec(top_k=2.0), TypeError, "top_k must be int"),
    ("max_new_tokens 2.5", lambda: spec(max_new_tokens=2.5), TypeError,
     "max_new_tokens must be int"),
    ("max_new_tokens bool", lambda: spec(max_new_tokens=True), TypeError, "got True"),
    ("max_new_tokens 0", lambda: spec(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1"),
    ("eos as str", lambda: spec(eos_token_id="63"), TypeError, "eos_token_id must be"),
    ("eos outside vocab", lambda: spec(eos_token_id=64), ValueError, "[64] outside the vocabulary"),
    ("negative eos", lambda: spec(eos_token_id=(3, -1)), ValueError, "[-1] outside"),
    ("pad as str", lambda: spec(pad_token_id="0"), TypeError, "pad_token_id must be int"),
    ("seed float", lambda: spec(seed=1.5), TypeError, "seed must be int"),
    ("drafter name", lambda: spec(drafter="medusa"), TypeError,
     "drafter must be Drafter or None, got 'medusa'"),
    ("verifier name", lambda: spec(verifier="typical"), TypeError, "verifier must be Verifier"),
    ("bucket 0", lambda: spec(min_prompt_bucket=0), ValueError, "min_prompt_bucket must be >= 1"),
    ("unknown key", lambda: sdjax.from_dict(sdjax.SpecConfig, {"model": MODEL, "temprature": 1}),
     ValueError, "unknown SpecConfig key(s) ['temprature']"),
    ("not a mapping", lambda: sdjax.from_dict(sdjax.SpecConfig, ["model"]), TypeError,
     "needs a mapping"),
    ("vocab 0", lambda: MODEL.replace(vocab_size=0), ValueError, "vocab_size must be >= 1"),
    ("norm_eps NaN", lambda: MODEL.replace(norm_eps=NAN), ValueError, "norm_eps must be finite"),
    ("layers str", lambda: MODEL.replace(num_layers="2"), TypeError, "num_layers must be int"),
    ("model eos outside", lambda: MODEL.replace(eos_token_id=(99,)), ValueError, "outside"),
    ("lookup 0", lambda: PromptLookup(num_draft=0), ValueError, "num_draft"),
    ("lookup float", lambda: PromptLookup(num_draft=2.0), TypeError, "num_draft must be int"),
    ("draft str", lambda: DraftModel(MODEL, num_draft="4"), TypeError, "num_draft must be int"),
    ("draft not a model", lambda: DraftModel("tiny"), TypeError, "config must be ModelConfig"),
    ("tree list", lambda: trees.TreeShape([-1, 0]), TypeError, "parents must be a tuple of int"),
    ("typical epsilon", lambda: TypicalAcceptance(epsilon=-1.0), ValueError,
     "epsilon must be in [0, 1]"),
    ("eagle2 confidence", lambda: heads.Eagle2(heads.eagle_config(MODEL), min_confidence=NAN),
     ValueError, "min_confidence must be finite"),
    ("heads 0", lambda: heads.HeadsConfig(num_heads=0, hidden_size=32, vocab_size=64),
     ValueError, "num_heads must be >= 1"),
    ("loop lr str", lambda: training.LoopConfig(output="x", learning_rate="1e-3"), TypeError,
     "learning_rate must be float"),
    ("loop steps 0", lambda: training.LoopConfig(output="x", steps=0), ValueError,
     "steps must be >= 1"),
    ("loop clip inf", lambda: training.LoopConfig(output="x", grad_clip=INF), ValueError,
     "grad_clip must be finite"),
]


@pytest.mark.parametrize("what,build,error,message", CONFIG_CASES,
                         ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values_are_refused_by_name(what, build, error, message):
    with pytest.raises(error) as raised:
        build()
    assert message in str(raised.value)


# (what, prompt, exception type, message fragment)
PROMPT_CASES = [
    ("floats", [1.5, 2.0], TypeError, "non-integer token ids [1.5, 2.0]"),
    ("bools", [True, False], TypeError, "non-integer token ids"),
    ("float array", np.array([1.0, 2.0]), TypeError, "integer array"),
    ("digit strings without tokenizer", ["1", "2"], ValueError, "needs a tokenizer"),
    ("digit-string array", np.array(["1", "2"]), TypeError, "integer array"),
    ("None row", [[1, 2], None], TypeError, "a list of ['NoneType', 'list']"),
    ("a bare int", 5, TypeError, "a prompt is text"),
    ("empty", [], ValueError, "at least one token"),
    ("empty row", [[1, 2], []], ValueError, "at least one token"),
    ("out of vocab", [[1, 64]], ValueError, "outside [0, 64): [64]"),
    ("negative id", [3, -2], ValueError, "outside [0, 64): [-2]"),
    ("rank 3", np.ones((1, 1, 2), np.int32), ValueError, "rank 1 or 2"),
]


@pytest.mark.parametrize("what,prompt,error,message", PROMPT_CASES,
                         ids=[c[0] for c in PROMPT_CASES])
def test_malformed_prompts_are_refused(what, prompt, error, message):
    with pytest.raises(error) as raised:
        sdjax.generate(PARAMS, prompt, spec(max_new_tokens=2))
    assert message in str(raised.value)


def test_yaml_style_values_are_converted_where_they_are_unambiguous():
    cfg = sdjax.from_dict(training.LoopConfig, {"output": "x", "learning_rate": "1e-3"})
    assert cfg.learning_rate == 1e-3  # YAML 1.1 reads an unquoted 1e-3 as a string
    cfg = sdjax.from_dict(sdjax.SpecConfig, {"model": MODEL, "eos_token_id": [1, 2]})
    assert cfg.eos_ids == (1, 2)
    with pytest.raises(TypeError, match="learning_rate must be float"):
        sdjax.from_dict(training.LoopConfig, {"output": "x", "learning_rate": "fast"})


def test_files_that_are_not_what_they_claim(tmp_path):
    with pytest.raises(ValueError, match="names a GGUF file"):
        sdjax.load_hf(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="GGUF file .* does not exist"):
        sdjax.load_gguf(str(tmp_path / "model.gguf"))
    (tmp_path / "mystery").mkdir()
    (tmp_path / "mystery" / "config.json").write_text('{"model_type": "mystery"}')
    with pytest.raises(sdjax.UnsupportedModelError, match="'mystery' is not supported"):
        sdjax.load_hf(str(tmp_path / "mystery"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        sdjax.load_hf(str(tmp_path / "broken"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_weights_name_the_file(tmp_path, damage):
    sdjax.save_hf(str(tmp_path), MODEL, PARAMS)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
        sdjax.load_hf(str(tmp_path))


def test_draft_params_are_never_silently_ignored():
    with pytest.raises(ValueError, match="PromptLookup drafts without a model"):
        sdjax.generate(PARAMS, [1, 2], spec(drafter=PromptLookup(num_draft=2)),
                       draft_params=PARAMS)
    with pytest.raises(ValueError, match="Autoregressive drafts without a model"):
        sdjax.generate(PARAMS, [1, 2], spec(), draft_params=PARAMS)


def test_a_damaged_heads_folder_names_its_file(tmp_path):
    cfg = heads.HeadsConfig(num_heads=2, hidden_size=32, vocab_size=64)
    heads.save_heads(str(tmp_path), cfg, heads.init_heads(cfg, PARAMS, jax.random.PRNGKey(1)))
    (tmp_path / "heads.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="heads.safetensors is not a readable safetensors"):
        heads.load_heads(str(tmp_path))
    (tmp_path / "heads_config.json").write_text('{"kind": "medusa3"}')
    with pytest.raises(ValueError, match="unknown head kind 'medusa3'"):
        heads.load_heads(str(tmp_path))


def test_params_of_another_model_are_named_before_tracing():
    wider = sdjax.init_params(MODEL.replace(intermediate_size=96), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"params do not fit the model config: .*down_proj"
                                         r".*has shape \(96, 32\), the model needs \(64, 32\)"):
        sdjax.generate(wider, [1, 2], spec())
    with pytest.raises(TypeError, match="must be a {'params': ...} pytree"):
        sdjax.generate(PARAMS["params"], [1, 2], spec())
    with pytest.raises(ValueError, match="draft_params do not fit the model config"):
        sdjax.generate(PARAMS, [1, 2], spec(drafter=DraftModel(MODEL.replace(num_layers=2))),
                       draft_params=PARAMS)
