"""Drafting across tokenizers (`CrossVocabDraft`): the token map of two toy tokenizers
with a partial overlap, the draft's bookkeeping over its own text, greedy equality,
and the exact law under sampling (with a negative control)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models

import sdjax
from sdjax import sharding, trees
from sdjax.drafters import CrossVocabDraft, DraftModel, DraftTree, token_map, with_token_map
from sdjax.drafters.cross_vocab import translate
from sdjax.models import KVCache, Transformer
from tests.drafters.test_speculative import (
    BOUND,
    NEW,
    PARAMS,
    PROMPT,
    PROMPTS,
    SAMPLES,
    TARGET,
    TINY,
    TINY_PARAMS,
    exact_sequence_probs,
    sequence_tv,
    sharpen,
    spec,
)

LETTERS = "abcdefghijklmnop"
PAIRS = ["".join(p) for p in itertools.product(LETTERS, repeat=2)]


def bpe(tokens, merges) -> Tokenizer:
    """A BPE tokenizer over exactly `tokens` (ids in order) that concatenates on decode."""
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.decoder = decoders.Fuse()
    return tok


# The target: 16 letters and all 256 pairs (272 ids with text; ids 272..319 have none).
TARGET_TOKENIZER = bpe([*LETTERS, *PAIRS], [tuple(p) for p in PAIRS])
# The draft: the letters, 100 of the pairs (the other 156 read as two pieces) and 84
# triples the target does not have (never to be drafted).
_rng = np.random.default_rng(0)
DRAFT_PAIRS = [PAIRS[i] for i in sorted(_rng.choice(256, 100, replace=False))]
TRIPLES = [p + c for p, c in itertools.product(DRAFT_PAIRS, LETTERS)][::19][:84]
DRAFT_TOKENIZER = bpe([*LETTERS, *DRAFT_PAIRS, *TRIPLES],
                      [tuple(p) for p in DRAFT_PAIRS] + [(t[:2], t[2]) for t in TRIPLES])
MAP = token_map(TARGET_TOKENIZER, DRAFT_TOKENIZER, 320, 200, max_pieces=2)
CROSS = sdjax.models.family_config("gpt2", vocab_size=200, hidden_size=32, num_layers=1,
                                   num_heads=2, num_kv_heads=2, head_dim=16, intermediate_size=64,
                                   max_position_embeddings=2048)
CROSS_PARAMS = sdjax.init_params(CROSS, jax.random.PRNGKey(40))
# The same draft, sure that its next token is one of the triples the target lacks.
TRIPLE_LOVER = jax.tree.map(lambda x: x, CROSS_PARAMS)
TRIPLE_LOVER["params"]["embed"]["embedding"] = CROSS_PARAMS["params"]["embed"][
    "embedding"].at[116:].multiply(40.0)


def test_the_token_map_pairs_equal_texts_and_reads_the_rest_in_pieces():
    target = dict(zip(map(int, MAP.target_ids), map(int, MAP.draft_ids)))
    assert len(target) == 16 + 100  # the letters and the draft's pairs
    for t, d in target.items():
        assert TARGET_TOKENIZER.id_to_token(t) == DRAFT_TOKENIZER.id_to_token(d)
    assert not set(range(116, 200)) & set(target.values())  # no triple is shared
    missing = PAIRS.index(next(p for p in PAIRS if p not in DRAFT_PAIRS)) + 16
    assert MAP.num_pieces[missing] == 2
    assert [DRAFT_TOKENIZER.id_to_token(int(i)) for i in MAP.pieces[missing]] == list(
        TARGET_TOKENIZER.id_to_token(missing))
    assert MAP.num_pieces[300] == 1 and MAP.pieces[300, 0] == 0  # no text: the fallback


def test_translate_lays_each_rows_pieces_end_to_end():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 320, (3, 9))
    lengths = np.array([9, 4, 1])
    text, count = translate(jnp.asarray(tokens), jnp.asarray(lengths), MAP)
    for row, n in enumerate(lengths):
        want = [int(p) for t in tokens[row, :n] for p in MAP.pieces[t, :MAP.num_pieces[t]]]
        assert count[row] == len(want)
        assert np.asarray(text[row, :len(want)]).tolist() == want


def test_each_cycles_chain_is_the_drafts_greedy_decoding_of_the_text_so_far():
    """The draft's cache after accepts of every length (and next tokens of one and two
    pieces) gives the chain a from-scratch greedy decoding of the translated text gives."""
    drafter = CrossVocabDraft(CROSS, num_draft=3)
    params = drafter.bind(with_token_map(CROSS_PARAMS, MAP), PARAMS)
    cfg = spec(drafter, max_new_tokens=40)
    model = Transformer(CROSS)
    shared = np.asarray(MAP.draft_ids)
    to_target = dict(zip(shared.tolist(), np.asarray(MAP.target_ids).tolist()))

    size = 160  # causal: padding after the text changes none of its logits
    logits_of = jax.jit(lambda text: model.apply(
        CROSS_PARAMS, text, jnp.arange(size)[None], KVCache.init(CROSS, 1, size)).logits[0])

    def scratch_chain(sequence):
        text, n = translate(jnp.asarray([sequence]), jnp.asarray([len(sequence)]), MAP)
        text = np.asarray(text[0, :int(n[0])]).tolist()
        chain = []
        for _ in range(3):
            logits = logits_of(jnp.asarray([text + [0] * (size - len(text))]))[len(text) - 1]
            best = int(shared[np.argmax(np.asarray(logits)[shared])])
            chain.append(to_target[best])
            text.append(best)
        return chain

    rng = np.random.default_rng(2)
    prompt = list(PROMPTS[0])
    max_len = 64
    state = drafter.init(params, jnp.asarray([prompt]), jnp.asarray([len(prompt)]), max_len)
    sequence = prompt + [int(rng.integers(0, 320))]
    two_pieces = [t for t in range(16, 272) if MAP.num_pieces[t] == 2]
    propose = jax.jit(drafter.propose, static_argnums=5)
    for cycle in range(8):
        buffer = jnp.asarray([sequence + [0] * (max_len - len(sequence))])
        tree, state = propose(params, state, buffer, jnp.asarray([len(sequence)]),
                              jax.random.PRNGKey(cycle), cfg)
        assert np.asarray(tree.tokens[0, 1:]).tolist() == scratch_chain(sequence), cycle
        accepted = cycle % 4  # 0..3 drafts, then a next token of one or two pieces
        nxt = int(two_pieces[cycle]) if cycle % 2 else int(rng.integers(0, 16))
        sequence += np.asarray(tree.tokens[0, 1:1 + accepted]).tolist() + [nxt]
        state = drafter.commit(state, None, None)


def test_drafts_stay_in_the_shared_vocabulary():
    drafter = CrossVocabDraft(CROSS, num_draft=4)
    cfg = spec(drafter, max_new_tokens=20)
    prompt = jnp.asarray([PROMPTS[1]])
    lengths = jnp.asarray([prompt.shape[1]])
    params = drafter.bind(with_token_map(TRIPLE_LOVER, MAP), PARAMS)
    state = drafter.init(params, prompt, lengths, 32)
    sequence = jnp.pad(prompt, ((0, 0), (0, 16)))
    text, n = translate(sequence, lengths, MAP)
    own = Transformer(CROSS).apply(TRIPLE_LOVER, text[:, :int(n[0])],
                                   jnp.arange(int(n[0]))[None], KVCache.init(CROSS, 1, 64))
    assert int(jnp.argmax(own.logits[0, -1])) >= 116  # left alone, it would draft a triple
    propose = jax.jit(drafter.propose, static_argnums=5)
    for temperature in (0.0, 1.0):
        tree, _ = propose(params, state, sequence, lengths,
                                  jax.random.PRNGKey(0), cfg.replace(temperature=temperature))
        assert set(np.asarray(tree.tokens[0, 1:]).tolist()) <= set(np.asarray(MAP.target_ids))
        if temperature:
            np.testing.assert_allclose(tree.probs[0, 1:].sum(-1), 1.0, rtol=1e-5)
            outside = np.setdiff1d(np.arange(320), np.asarray(MAP.target_ids))
            assert float(jnp.abs(tree.probs[0, 1:, outside]).max()) == 0.0


@pytest.mark.parametrize("drafter,draft_params", [
    (CrossVocabDraft(CROSS, num_draft=3), CROSS_PARAMS),
    pytest.param(CrossVocabDraft(CROSS, tree=trees.kary(2, 2)), CROSS_PARAMS,
                 marks=pytest.mark.slow),  # trees: the level-by-level path DraftModel tests
    (CrossVocabDraft(CROSS, num_draft=4), TRIPLE_LOVER),
], ids=["chain", "tree_2x2", "draft_prefers_unshared_tokens"])
def test_greedy_equals_plain_greedy(drafter, draft_params):
    plain = sdjax.generate(PARAMS, PROMPTS, spec(max_new_tokens=25))
    for prompts in (PROMPTS, PROMPTS[:1]):  # a ragged batch, and batch 1
        out = sdjax.generate(PARAMS, prompts, spec(drafter, max_new_tokens=25),
                             draft_params=with_token_map(draft_params, MAP))
        np.testing.assert_array_equal(out.tokens, plain.tokens[:len(prompts)])
        np.testing.assert_array_equal(out.num_tokens, plain.num_tokens[:len(prompts)])


def test_a_draft_that_is_the_target_in_other_ids_is_always_accepted():
    """The draft's vocabulary is the target's, permuted: with the target's weights so
    permuted it is the target, and every draft is accepted (positions and window right)."""
    tokens = [*LETTERS, *PAIRS, *(p + "a" for p in PAIRS[:48])]  # 320
    merges = [tuple(p) for p in PAIRS] + [(p, "a") for p in PAIRS[:48]]
    order = np.random.default_rng(3).permutation(320)  # draft id i is target id order[i]
    target_tok = bpe(tokens, merges)
    draft_tok = bpe([tokens[t] for t in order], merges)
    tmap = token_map(target_tok, draft_tok, 320, 320)
    assert len(tmap.target_ids) == 320
    params = jax.tree.map(lambda x: x, PARAMS)
    params["params"]["embed"]["embedding"] = PARAMS["params"]["embed"]["embedding"][order]
    params["params"]["lm_head"]["kernel"] = PARAMS["params"]["lm_head"]["kernel"][:, order]
    cfg = spec(CrossVocabDraft(TARGET, num_draft=4), max_new_tokens=1 + 5 * 6)
    out = sdjax.generate(PARAMS, PROMPTS, cfg, draft_params=with_token_map(params, tmap))
    assert out.stats["tau"] == 5.0
    np.testing.assert_array_equal(out.tokens, sdjax.generate(PARAMS, PROMPTS, cfg.replace(
        drafter=None)).tokens)


# ------------------------------------------------------- sampling through the loop
# Target tokens a, b, c, "ab"; draft tokens a, b, c, "ca", "bc": "ab" reads as two
# pieces and is never drafted, and the draft's "ca" and "bc" are never proposed.
TINY_MAP = token_map(bpe(["a", "b", "c", "ab"], [("a", "b")]),
                     bpe(["a", "b", "c", "ca", "bc"], [("c", "a"), ("b", "c")]), 4, 5,
                     max_pieces=2)
TINY_CROSS = TINY.replace(vocab_size=5, hidden_size=8, num_heads=1, head_dim=8,
                          intermediate_size=16)
TINY_CROSS_PARAMS = with_token_map(
    sharpen(sdjax.init_params(TINY_CROSS, jax.random.PRNGKey(41)), 12), TINY_MAP)


@dataclasses.dataclass(frozen=True)
class Unnormalised(CrossVocabDraft):
    """Negative control: reports the draft's probabilities over the shared tokens
    without renormalising them, as if the unshared ones' mass did not exist."""

    def propose(self, draft_params, state, sequence, seq_len, key, cfg):
        tree, state = super().propose(draft_params, state, sequence, seq_len, key, cfg)
        return DraftTree(tree.tokens, tree.probs * 0.4), state


def test_tiny_map_shares_three_tokens():
    assert np.asarray(TINY_MAP.target_ids).tolist() == [0, 1, 2]
    assert np.asarray(TINY_MAP.pieces[3]).tolist() == [0, 1]


@pytest.mark.parametrize("drafter", [
    CrossVocabDraft(TINY_CROSS, num_draft=2),
    pytest.param(CrossVocabDraft(TINY_CROSS, tree=trees.kary(2, 2)), marks=pytest.mark.slow)],
    ids=["chain", "tree"])
def test_sampled_sequences_follow_the_target(drafter):
    exact = exact_sequence_probs(0.9)
    cfg = sdjax.SpecConfig(model=TINY, drafter=drafter, max_new_tokens=NEW, temperature=0.9,
                           eos_token_id=(), min_prompt_bucket=4)
    out = sdjax.generate(TINY_PARAMS, [PROMPT] * SAMPLES, cfg, draft_params=TINY_CROSS_PARAMS)
    assert sequence_tv(out, exact) < BOUND
    assert out.stats["tau"] > 1.1  # the drafts were really used
    assert np.any(out.tokens == 3)  # the target does emit the token the draft never drafts


def test_unnormalised_draft_probabilities_fail_the_same_check():
    exact = exact_sequence_probs(0.9)
    cfg = sdjax.SpecConfig(model=TINY, drafter=Unnormalised(TINY_CROSS, num_draft=2),
                           max_new_tokens=NEW, temperature=0.9, eos_token_id=(),
                           min_prompt_bucket=4)
    out = sdjax.generate(TINY_PARAMS, [PROMPT] * SAMPLES, cfg, draft_params=TINY_CROSS_PARAMS)
    assert sequence_tv(out, exact) > BOUND


def test_bad_draft_params_are_refused():
    cfg = spec(CrossVocabDraft(CROSS), max_new_tokens=4)
    with pytest.raises(ValueError, match="needs draft_params = with_token_map"):
        sdjax.generate(PARAMS, PROMPTS[0], cfg, draft_params=CROSS_PARAMS)
    with pytest.raises(ValueError, match="reads 4 target tokens; the target's vocabulary "
                                         "has 320"):
        sdjax.generate(PARAMS, PROMPTS[0], cfg, draft_params=with_token_map(CROSS_PARAMS,
                                                                             TINY_MAP))
    with pytest.raises(ValueError, match="do not fit the model config"):
        sdjax.generate(PARAMS, PROMPTS[0], spec(CrossVocabDraft(CROSS.replace(vocab_size=256))),
                       draft_params=with_token_map(CROSS_PARAMS, MAP))
    with pytest.raises(ValueError, match="CrossVocabDraft"):
        sdjax.generate(PARAMS, PROMPTS[0], spec(DraftModel(CROSS)), draft_params=CROSS_PARAMS)


def test_on_a_mesh_equals_one_device():
    """The token map is replicated, the draft's cache split like any draft model's."""
    cfg = spec(CrossVocabDraft(CROSS, num_draft=3), max_new_tokens=14)
    params = with_token_map(CROSS_PARAMS, MAP)
    plain = sdjax.generate(PARAMS, PROMPTS, cfg, draft_params=params)
    sharded = sdjax.generate(PARAMS, PROMPTS, cfg, draft_params=params,
                             mesh=sharding.make_mesh(data=2, model=4))
    np.testing.assert_array_equal(sharded.tokens, plain.tokens)
    np.testing.assert_array_equal(sharded.stats["accepted_hist"], plain.stats["accepted_hist"])
