"""The bundled testbed: `transformers` loads both models and agrees with sdjax."""

import os

import numpy as np
import pytest

import sdjax
from sdjax import testbed
from sdjax.models.transformer import sequence_forward
from tests.hf_models import stdlib_source

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", testbed.MODELS)
def test_transformers_gives_the_same_logits_and_greedy_tokens(name):
    model = sdjax.load_hf(testbed.path(name), load_tokenizer=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(testbed.path("target"))
    ids = tokenizer(stdlib_source("json.decoder")[:1500])["input_ids"][:200]
    ours = sequence_forward(model.params, model.config, np.asarray([ids])).logits
    hf = transformers.AutoModelForCausalLM.from_pretrained(testbed.path(name),
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=2e-4)
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=24, eos_token_id=())
    out = sdjax.generate(model.params, ids, cfg)
    with torch.no_grad():
        hf_tokens = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                                min_new_tokens=24, pad_token_id=0)[0, len(ids):].numpy()
    np.testing.assert_array_equal(out.tokens[0], hf_tokens)


def test_the_pair_shares_the_tokenizer_and_fits_the_budget():
    target = sdjax.load_hf(testbed.path("target"))
    draft = sdjax.load_hf(testbed.path("draft"), load_tokenizer=False)
    assert draft.config.vocab_size == target.config.vocab_size == len(target.tokenizer)
    size = sum(os.path.getsize(os.path.join(testbed.path(n), f))
               for n in testbed.MODELS for f in os.listdir(testbed.path(n)))
    assert size <= 25 * 2**20


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown testbed model"):
        testbed.path("gpt-5")


@pytest.mark.parametrize("kind", testbed.HEADS)
def test_bundled_heads_fit_the_target_and_decode_losslessly(kind):
    from sdjax.heads import load_heads, make_drafter

    target = sdjax.load_hf(testbed.path("target"))
    heads, params = load_heads(testbed.path(kind))
    assert heads.kind == kind and heads.hidden_size == target.config.hidden_size
    prompt = target.tokenizer(stdlib_source("json.decoder")[:1200])["input_ids"]
    cfg = sdjax.SpecConfig(model=target.config, max_new_tokens=32, eos_token_id=())
    plain = sdjax.generate(target.params, prompt, cfg)
    out = sdjax.generate(target.params, prompt, cfg.replace(drafter=make_drafter(heads)),
                         draft_params=params)
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.stats["tau"] > 1.5  # trained heads: drafts are really accepted
