"""Autoregressive `generate`: batching, stopping, sampling, bucketing, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax import decode
from sdjax.models import KVCache, Transformer
from sdjax.sampling import warp_logits
from tests.stats import tv, tv_bound

CFG = sdjax.ModelConfig(vocab_size=320, hidden_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                        max_position_embeddings=256)
PARAMS = sdjax.init_params(CFG, jax.random.PRNGKey(0))
RNG = np.random.default_rng(2)
PROMPTS = [RNG.integers(0, 320, size=n).tolist() for n in (5, 11, 3)]


def spec(**kw):
    kw.setdefault("eos_token_id", ())
    return sdjax.SpecConfig(model=CFG, **kw)


def reference_greedy(prompt, steps):
    """Greedy decoding by full re-forwards, no cache reuse: the plainest reference."""
    seq = list(prompt)
    model = Transformer(CFG)
    for _ in range(steps):
        tokens = jnp.asarray([seq])
        out = model.apply(PARAMS, tokens, jnp.arange(len(seq))[None],
                          KVCache.init(CFG, 1, len(seq)))
        seq.append(int(jnp.argmax(out.logits[0, -1])))
    return seq[len(prompt):]


def test_greedy_equals_full_reforward_reference():
    out = sdjax.generate(PARAMS, PROMPTS[0], spec(max_new_tokens=6))
    assert out.tokens[0].tolist() == reference_greedy(PROMPTS[0], 6)


def test_ragged_batch_equals_each_prompt_alone():
    cfg = spec(max_new_tokens=20)
    batched = sdjax.generate(PARAMS, PROMPTS, cfg)
    for i, prompt in enumerate(PROMPTS):
        alone = sdjax.generate(PARAMS, prompt, cfg)
        np.testing.assert_array_equal(batched.tokens[i], alone.tokens[0])


def test_exactly_max_new_tokens():
    out = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=7))
    assert out.tokens.shape == (3, 7)
    np.testing.assert_array_equal(out.num_tokens, [7, 7, 7])
    np.testing.assert_array_equal(out.stats["target_calls"], [7, 7, 7])
    one = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=1))
    np.testing.assert_array_equal(one.tokens[:, 0], out.tokens[:, 0])


def test_eos_stops_each_row_on_its_own():
    free = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=16)).tokens
    eos = int(free[1, 4])  # row 1 emits this at step 4 (maybe earlier too)
    stop = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=16, eos_token_id=eos,
                                                pad_token_id=-1))
    for row in range(3):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if hits.size else 16
        assert stop.num_tokens[row] == end
        np.testing.assert_array_equal(stop.tokens[row, :end], free[row, :end])
        assert (stop.tokens[row, end:] == -1).all()


def test_eos_defaults_to_the_models_own():
    free = sdjax.generate(PARAMS, PROMPTS[0], spec(max_new_tokens=10)).tokens[0]
    cfg = sdjax.SpecConfig(model=CFG.replace(eos_token_id=(int(free[2]),)), max_new_tokens=10)
    out = sdjax.generate(PARAMS, PROMPTS[0], cfg)
    assert out.num_tokens[0] == np.flatnonzero(free == free[2])[0] + 1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    cfg = spec(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.9)
    a = sdjax.generate(PARAMS, PROMPTS, cfg).tokens
    b = sdjax.generate(PARAMS, PROMPTS, cfg).tokens
    c = sdjax.generate(PARAMS, PROMPTS, cfg.replace(seed=1)).tokens
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_one_compilation_per_prompt_bucket():
    cfg = spec(max_new_tokens=5, min_prompt_bucket=16, seed=123)
    before = decode.compile_count()
    for n in (3, 9, 16):
        out = sdjax.generate(PARAMS, list(range(n)), cfg)
    assert decode.compile_count() == before + 1
    assert out.stats["compile_seconds"] == 0.0
    sdjax.generate(PARAMS, list(range(17)), cfg)  # next bucket
    assert decode.compile_count() == before + 2


def test_a_new_seed_or_length_limit_reuses_the_compiled_loop():
    cfg = spec(max_new_tokens=7, temperature=1.0)
    sdjax.generate(PARAMS, PROMPTS, cfg)
    before = decode.compile_count()
    outs = [sdjax.generate(PARAMS, PROMPTS, cfg.replace(seed=seed)).tokens
            for seed in (1, 2, 3)]
    sdjax.generate(PARAMS, PROMPTS, cfg.replace(max_seq_len=200))
    assert decode.compile_count() == before
    assert (outs[0] != outs[1]).any()  # the seed still reaches the program, as data


def test_params_of_another_dtype_compile_a_second_program():
    cfg = spec(max_new_tokens=9)
    sdjax.generate(PARAMS, PROMPTS, cfg)
    before = decode.compile_count()
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    out = sdjax.generate(bf16, PROMPTS, cfg)
    assert decode.compile_count() == before + 1
    # The model computes in float32 (cfg dtype): bf16 weights upcast inside.
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32), bf16)
    np.testing.assert_array_equal(out.tokens, sdjax.generate(upcast, PROMPTS, cfg).tokens)


def _unfused_arrays(hlo: str, shape: str) -> list:
    """Instructions of an optimised HLO module that materialise a `shape` array (e.g.
    "f32[320,64]") as a whole: those outside fusions' own computations."""
    found, computation = [], None
    for line in hlo.splitlines():
        if line.rstrip().endswith("{") and line.lstrip().startswith(("%", "ENTRY")):
            computation = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
        elif f"= {shape}{{" in line and "computation" not in computation:
            found.append(line.strip()[:120])
    return found


def test_a_bfloat16_loop_widens_no_table_and_prefills_one_logits_row():
    """Fixed costs of every `generate` on a bfloat16 model: XLA:CPU gathered embeddings
    through a float32 copy of the whole table (hoisted out of the loop: ~280 ms a call
    on Gemma 3), and the prefill computed logits at every prompt slot (~350 ms for 256
    tokens). The compiled program must hold neither."""
    from functools import partial

    from sdjax.decode.loop import decode_loop
    bf16 = CFG.replace(dtype="bfloat16", param_dtype="bfloat16")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    program = jax.jit(partial(decode_loop, cfg=spec(max_new_tokens=4).replace(model=bf16)))
    text = program.lower(params, None, jnp.zeros((1, 16), jnp.int32), jnp.array([16]),
                         jax.random.PRNGKey(0)).compile().as_text()
    assert "bf16[320,64]" in text  # the table is there, in its own dtype
    assert _unfused_arrays(text, "f32[320,64]") == []  # converted rows only, in the gathers
    assert "[1,16,320]" not in text  # logits of all 16 prompt slots


def test_both_key_styles_give_the_same_draws():
    cfg = spec(max_new_tokens=10, temperature=1.0)
    raw = sdjax.generate(PARAMS, PROMPTS, cfg, key=jax.random.PRNGKey(5))
    typed = sdjax.generate(PARAMS, PROMPTS, cfg, key=jax.random.key(5))
    np.testing.assert_array_equal(raw.tokens, typed.tokens)
    np.testing.assert_array_equal(sdjax.generate(PARAMS, PROMPTS, cfg.replace(seed=5)).tokens,
                                  typed.tokens)


@pytest.mark.parametrize("key,error,match", [
    (np.array([1, 2], np.uint32), TypeError, "key must be"),
    (jnp.zeros((3,), jnp.uint32), ValueError, "raw key must be uint32"),
    (jax.random.split(jax.random.key(0), 2), ValueError, "single key"),
])
def test_malformed_keys_are_refused(key, error, match):
    with pytest.raises(error, match=match):
        sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=2), key=key)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0),
                                                     (1.3, 0, 0.8)])
def test_first_sampled_token_follows_the_warped_target(temperature, top_k, top_p):
    draws = 20000
    cfg = spec(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    # A sharper head than random init: top-k and top-p then cut 0.2-0.5 of the mass,
    # several times the bound below.
    sharp = jax.tree.map(lambda x: x, PARAMS)
    sharp["params"]["lm_head"]["kernel"] = PARAMS["params"]["lm_head"]["kernel"] * 8
    out = sdjax.generate(sharp, [PROMPTS[0]] * draws, cfg)
    logits = Transformer(CFG).apply(sharp, jnp.asarray([PROMPTS[0]]),
                                    jnp.arange(5)[None], KVCache.init(CFG, 1, 5)).logits[0, -1]
    target = np.asarray(jax.nn.softmax(warp_logits(logits, temperature, top_k, top_p)))
    assert tv(out.tokens[:, 0], target) < tv_bound(draws, CFG.vocab_size)
    assert target[out.tokens[:, 0]].min() > 0  # nothing outside the warped support


def test_warp_top_k_and_top_p_keep_the_right_support():
    logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1]))
    assert np.isfinite(warp_logits(logits, 1.0, top_k=2)).tolist() == [True, True, False, False]
    assert np.isfinite(warp_logits(logits, 1.0, top_p=0.75)).tolist() == [True, True, True, False]
    assert np.isfinite(warp_logits(logits, 1.0, top_p=0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(warp_logits(logits, 1.0, top_p=0.1)).tolist() == [True, False, False, False]


def test_text_prompts_with_a_tokenizer(tokenizer_dir):
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    out = sdjax.generate(PARAMS, ["def wrap(text):", "import os"], spec(max_new_tokens=6),
                         tokenizer=tok)
    assert len(out.text) == 2
    alone = sdjax.generate(PARAMS, tok("import os")["input_ids"], spec(max_new_tokens=6))
    np.testing.assert_array_equal(out.tokens[1], alone.tokens[0])
    assert out.text[1] == tok.decode(alone.tokens[0].tolist())


@pytest.mark.parametrize("prompt,message", [
    ([1, 2, 320], "outside"),
    ([[1, 2], [-1]], "outside"),
    ([], "at least one token"),
    ([[1, 2], []], "at least one token"),
    (list(range(250)), "exceeds"),
    ("some text", "needs a tokenizer"),
    (np.zeros((1, 2, 3), np.int32), "rank"),
])
def test_bad_prompts_raise_clear_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        sdjax.generate(PARAMS, prompt, spec(max_new_tokens=8))


@pytest.mark.parametrize("kw,message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-2), "top_k"),
])
def test_bad_config_values_raise(kw, message):
    with pytest.raises(ValueError, match=message):
        spec(**kw)


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown SpecConfig key\(s\) \['temprature'\]"):
        sdjax.from_dict(sdjax.SpecConfig, {"model": CFG, "temprature": 0.5})
