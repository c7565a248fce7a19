"""Kangaroo: the target's first E layers, a trained adapter with a cache of its own,
and the target's LM head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdjax
from sdjax import trees
from sdjax.decode.loop import verify_forward
from sdjax.decode.prompts import prefill
from sdjax.heads import Kangaroo, init_kangaroo, kangaroo_config
from sdjax.heads.kangaroo import Adapter, KangarooConfig
from sdjax.models import KVCache, Transformer
from sdjax.models.transformer import sequence_forward
from sdjax.protocols import VerifyResult
from sdjax.trees import static_topology
from tests.drafters.test_speculative import (
    KANGAROO,
    KANGAROO_PARAMS,
    PARAMS,
    PROMPTS,
    TARGET,
    noisy,
    spec,
)

SLIDING = TARGET.replace(sliding_window=4, sliding_layers=(True, False))
MODELS = pytest.mark.parametrize("cfg", [TARGET, SLIDING], ids=["global", "sliding"])


def without_last_mlp(params):
    """The target with its last layer's MLP zeroed: that layer is then only its
    attention half, which is what the adapter is."""
    params = jax.tree.map(lambda x: x, params)
    down = params["params"]["layers_1"]["mlp"]["down_proj"]
    down["kernel"] = jnp.zeros_like(down["kernel"])
    return params


@MODELS
def test_an_adapter_equal_to_the_last_layer_makes_the_draft_the_target(cfg):
    """Exit after layer 0 of 2, adapter = layer 1's attention half (how `init_kangaroo`
    starts it), layer 1 without its MLP: the draft is the target, so every greedy draft
    is accepted, if and only if the adapter's cache holds layer 1's exact KV of every
    committed token each cycle (its catch-up over the accepted path)."""
    params = without_last_mlp(PARAMS)
    adapter = kangaroo_config(cfg, 1)
    drafter = Kangaroo(adapter=adapter, num_draft=4)
    out = sdjax.generate(params, PROMPTS, spec(drafter, max_new_tokens=1 + 5 * 6).replace(
        model=cfg), draft_params=init_kangaroo(adapter, params, jax.random.PRNGKey(0)))
    assert out.stats["tau"] == 5.0
    np.testing.assert_array_equal(out.stats["acceptance_by_depth"], [1, 1, 1, 1])


# The MLP-free target and a perturbed copy of its last layer's attention half: drafts
# that are often, but not always, the target's.
MLP_FREE = without_last_mlp(PARAMS)
NEAR_ADAPTER = noisy(init_kangaroo(KANGAROO, MLP_FREE, jax.random.PRNGKey(0)), 1, 0.01)


@jax.jit
def _next_token(padded, length):
    """The draft's greedy next token after padded[:length], from scratch: the target's
    LM head over the adapter over a fresh forward's layer-E states (padding comes after
    the text, which causal attention never sees)."""
    states = sequence_forward(MLP_FREE, TARGET, padded[None], hidden_layers=(1,))
    positions = jnp.arange(padded.size)[None]
    normed, _ = Adapter(KANGAROO).apply(NEAR_ADAPTER, states.intermediates[0], positions,
                                        KVCache.init(KANGAROO.layer, 1, padded.size))
    logits = Transformer(TARGET).apply(MLP_FREE, normed[0, length - 1],
                                       method=Transformer.lm_logits)
    return jnp.argmax(logits)


def adapter_chain(text, length):
    """The draft's greedy chain of `length` tokens after `text`, from scratch."""
    text = list(text)
    for _ in range(length):
        padded = np.zeros(64, np.int32)
        padded[:len(text)] = text
        text.append(int(_next_token(padded, len(text))))
    return text[-length:]


def test_each_cycle_drafts_what_the_adapter_computes_from_scratch():
    """Through the loop, after accepts of mixed lengths, each cycle's chain is the
    draft's greedy continuation of the committed text: checked by replaying the loop's
    acceptances with from-scratch drafts (they must give the same counts)."""
    gamma, new = 3, 20
    plain = sdjax.generate(MLP_FREE, PROMPTS, spec(max_new_tokens=new + gamma))
    out = sdjax.generate(MLP_FREE, PROMPTS, spec(Kangaroo(adapter=KANGAROO, num_draft=gamma),
                                                 max_new_tokens=new),
                         draft_params=NEAR_ADAPTER)
    np.testing.assert_array_equal(out.tokens, plain.tokens[:, :new])
    histogram = np.zeros(gamma + 1, int)
    for prompt, tokens in zip(PROMPTS, np.asarray(plain.tokens)):
        done = 1  # the prefill's token is the first root
        while done < new:
            chain = adapter_chain(list(prompt) + tokens[:done].tolist(), gamma)
            accepted = 0
            while accepted < gamma and chain[accepted] == tokens[done + accepted]:
                accepted += 1
            histogram[accepted] += 1
            done += accepted + 1
    assert histogram[1:].sum() > 0  # some drafts were accepted: the check has teeth
    assert out.stats["cycles"].sum() == histogram.sum()
    expected = [histogram[d:].sum() / histogram.sum() for d in range(1, gamma + 1)]
    np.testing.assert_allclose(out.stats["acceptance_by_depth"], expected)


# (drafter, [(accepted path as node indices, next root)] per cycle): a chain whose cycles
# accept 2, 0, 3 and 1 drafts, and a 2 x 2 tree whose accepted paths leave nodes behind.
CYCLES = {
    "chain": (Kangaroo(adapter=KANGAROO, num_draft=3),
              [([0, 1, 2], 11), ([0], 13), ([0, 1, 2, 3], 17), ([0, 1], 19)]),
    "tree": (Kangaroo(adapter=KANGAROO, tree=trees.kary(2, 2)),
             [([0, 2, 5], 11), ([0], 13), ([0, 1, 4], 17), ([0, 2], 19)]),
}


@pytest.mark.parametrize("name", CYCLES)
def test_the_adapters_cache_holds_the_committed_texts_kv_after_mixed_accepts(name):
    """Cycles of mixed accepted paths: the adapter's committed keys and values (rotated
    at their positions) are those of a fresh run over the committed text."""
    drafter, cycles = CYCLES[name]
    bound, cfg, max_len = drafter.bind(KANGAROO_PARAMS, PARAMS), spec(drafter), 64
    depth = drafter.shape.max_depth
    tokens, lengths = jnp.asarray([PROMPTS[0]]), jnp.asarray([len(PROMPTS[0])])
    start = prefill(PARAMS, TARGET, tokens, lengths, max_len, (1,))
    state, cache = drafter.init(bound, tokens, lengths, max_len, start.features), start.cache
    topology = static_topology(drafter.shape, 1)
    text = list(PROMPTS[0]) + [7]  # then the root
    for path, next_root in cycles:
        sequence = jnp.zeros((1, max_len), jnp.int32).at[0, :len(text)].set(jnp.asarray(text))
        tree, state, cache = drafter.propose(bound, state, sequence, jnp.asarray([len(text)]),
                                             jax.random.PRNGKey(0), cfg, target_cache=cache)
        cache, _, features, _ = verify_forward(Transformer(TARGET), PARAMS, tree, topology,
                                               cache, (1,))
        accepted = len(path) - 1
        padded = jnp.asarray([path + [path[-1]] * (depth + 1 - len(path))])
        cache = cache.commit(jnp.asarray([accepted + 1]),
                             None if topology.is_chain else padded)
        result = VerifyResult(path=padded, num_accepted=jnp.asarray([accepted]),
                              next_token=jnp.asarray([next_root]))
        state = drafter.commit(state, result, cache.length, features)
        text += np.asarray(tree.tokens[0, path[1:]]).tolist() + [next_root]
    committed = len(text) - 1  # the last root is not in the caches yet
    adapter_cache = drafter._catch_up(bound["adapter"], state, cache.length)
    assert int(adapter_cache.length[0]) == int(cache.length[0]) == committed
    states = sequence_forward(PARAMS, TARGET, jnp.asarray([text[:-1]]), hidden_layers=(1,))
    _, fresh = Adapter(KANGAROO).apply(bound["adapter"], states.intermediates[0],
                                       jnp.arange(committed)[None],
                                       KVCache.init(KANGAROO.layer, 1, committed))
    for got, want in ((adapter_cache.keys, fresh.keys), (adapter_cache.values, fresh.values)):
        np.testing.assert_allclose(got[0][0, :committed], want[0][0], atol=2e-5)


def test_a_reduced_vocabulary_drafts_only_its_own_tokens():
    ids = np.arange(0, 320, 7)
    adapter = kangaroo_config(TARGET, 1, draft_vocab=ids.size)
    params = init_kangaroo(adapter, PARAMS, jax.random.PRNGKey(2), ids)
    drafter = Kangaroo(adapter=adapter, num_draft=3)
    cfg = spec(drafter, max_new_tokens=8)
    prompts, lengths = jnp.asarray([PROMPTS[1]]), jnp.asarray([len(PROMPTS[1])])
    bound = drafter.bind(params, PARAMS)
    start = sdjax.decode.prompts.prefill(PARAMS, TARGET, prompts, lengths, 32, (1,))
    state = drafter.init(bound, prompts, lengths, 32, start.features)
    sequence = jnp.zeros((1, 32), jnp.int32).at[0, :lengths[0]].set(prompts[0])
    tree, _, _ = drafter.propose(bound, state, sequence.at[0, lengths[0]].set(5), lengths + 1,
                                 jax.random.PRNGKey(0), cfg, target_cache=start.cache)
    assert np.isin(np.asarray(tree.tokens[0, 1:]), ids).all()
    # the first draft: the best of the reduced vocabulary under a from-scratch forward
    text = jnp.asarray([PROMPTS[1] + [5]])
    states = sequence_forward(PARAMS, TARGET, text, hidden_layers=(1,)).intermediates[0]
    normed, _ = Adapter(adapter).apply(params, states, jnp.arange(text.shape[1])[None],
                                       KVCache.init(adapter.layer, 1, text.shape[1]))
    logits = Transformer(TARGET).apply(PARAMS, normed[0, -1], method=Transformer.lm_logits)
    assert int(tree.tokens[0, 1]) == ids[int(jnp.argmax(logits[ids]))]


@pytest.mark.parametrize("make,message", [
    (lambda: kangaroo_config(TARGET, 0), "exit_layer must be in 1..2"),
    (lambda: kangaroo_config(TARGET, 3), "exit_layer must be in 1..2"),
    (lambda: KangarooConfig(TARGET, 1), "one attention layer"),
    (lambda: KangarooConfig(KANGAROO.layer, 1, kind="eagle"), "kind is 'kangaroo'"),
    (lambda: init_kangaroo(kangaroo_config(TARGET, 1, 8), PARAMS, jax.random.PRNGKey(0)),
     "needs its 8 target ids"),
    (lambda: Kangaroo(adapter=KANGAROO, num_draft=0), "num_draft"),
])
def test_bad_kangaroo_configs_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("adapter,draft_params,message", [
    (KANGAROO, None, "needs the adapter's params"),
    (kangaroo_config(TARGET.replace(vocab_size=256), 1), KANGAROO_PARAMS,
     "does not fit the target"),
    (kangaroo_config(TARGET.replace(num_layers=4), 4), KANGAROO_PARAMS,
     "layers the target does not have"),
    (kangaroo_config(TARGET.replace(num_heads=2, num_kv_heads=1), 1), KANGAROO_PARAMS,
     "was not made for this target"),
])
def test_kangaroo_checks_its_params_before_compiling(adapter, draft_params, message):
    with pytest.raises(ValueError, match=message):
        sdjax.generate(PARAMS, PROMPTS, spec(Kangaroo(adapter=adapter), max_new_tokens=4),
                       draft_params=draft_params)
