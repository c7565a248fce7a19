"""Training losses of the draft heads, each a pure function of (params, frozen target
params, windows [B, T + 1], key): what `sdjax.training.fit` minimises.

Medusa / Hydra (`heads_loss`): the target runs over corpus windows (frozen); head k
(0-based) at position t learns the token at t + k + 2: with `distill` the target's
own distribution for that token (Medusa-2's self-distillation, so the heads learn
what the target will accept), otherwise the corpus token. Hydra's head k also reads
the corpus tokens t + 1 .. t + k + 1 (teacher forcing; at decode time, the drafted
path). Head k's loss is weighted by head_decay**k (Medusa's 0.8); metrics
`top1_head{k}`: head k's top-1 agreement with the target's greedy token.

EAGLE (`eagle_loss`): the target gives its features and next-token distributions,
then the draft unrolls `ttt_steps` times ("training-time test", EAGLE-3): step 0
reads the target's features of the previous positions; step s > 0 reads the draft's
own h from step s - 1 instead, and each position attends to step-0 entries up to s
positions back plus its own unrolled entries since, exactly what a depth-(s + 1)
tree node sees while drafting.

- `eagle` (EAGLE-1): smooth-L1 regression of h onto the target's feature plus
  `token_weight` x cross-entropy against the target's distribution, on step 0, with
  uniform noise on the input features in training (EAGLE's robustness trick, drawn
  from the step's key that `fit` derives from (seed, step), so a resumed run is
  exact). Deeper steps are only measured.
- `eagle3`: cross-entropy against the target at every unrolled step, step s
  weighted by head_decay**s. With a reduced draft vocabulary the teacher is the
  target's distribution restricted to it and renormalised (as EAGLE-3 trains), and
  in training the target's LM head computes only those rows (on Gemma 3 the full
  head is most of the target's cost).

Metrics `top1_depth{s+1}`: how often step s's argmax is the target's, i.e. the greedy
acceptance at that depth given the shallower drafts were right.

Kangaroo (`kangaroo_loss`): the adapter over the target's layer-E states learns the
target's next-token distribution (cross-entropy; with a reduced vocabulary, the
target's restricted and renormalised, its LM head's rows only).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdjax.config import ModelConfig
from sdjax.drafters.vocab import restrict, to_target
from sdjax.heads import eagle as eagle_net
from sdjax.heads.common import bind_shared, target_lm_head, vocab_ids
from sdjax.heads.eagle import EagleConfig, EagleNet
from sdjax.heads.kangaroo import Adapter, KangarooConfig
from sdjax.models.cache import KVCache
from sdjax.models.transformer import ModelOutput, sequence_forward, softcap


class Teacher(NamedTuple):
    """What the frozen target tells a draft over corpus windows."""
    out: ModelOutput  # its forward (logits empty when only the draft vocabulary's are made)
    logits: jax.Array  # [B, T, head_size] next-token logits over the draft's vocabulary
    token: jax.Array  # [B, T] the greedy token the draft is measured against (target ids)


def teach(target_params, target_cfg: ModelConfig, inputs, ids, training: bool,
          hidden_layers=()) -> Teacher:
    """The target's forward over `inputs` and its next-token logits over the draft's
    vocabulary (`ids`, None: all of it). With a reduced vocabulary in training, only
    those rows of the LM head are computed (on Gemma 3 the full head is most of the
    target's cost) and `token` is the best of them; in evaluation the full head runs
    and `token` is the target's own greedy token."""
    target_params = jax.lax.stop_gradient(target_params)
    reduced_only = ids is not None and training
    out = sequence_forward(target_params, target_cfg, inputs, hidden_layers=hidden_layers,
                           logits=not reduced_only)
    if reduced_only:
        kernel = restrict(target_lm_head(target_params["params"]), ids).astype(jnp.float32)
        logits = softcap(out.hidden.astype(jnp.float32) @ kernel, target_cfg.final_logit_softcap)
        return Teacher(out, logits, jnp.take(ids, logits.argmax(-1)))
    logits = out.logits if ids is None else restrict(out.logits, ids)
    return Teacher(out, logits, out.logits.argmax(-1))


def heads_loss(heads_params, target_params, windows, key=None, *, target_cfg: ModelConfig,
               module, head_decay: float, distill: bool):
    """(weighted mean CE over heads, {top1_head{k}: agreement with the target}); `key`
    None means evaluation (the loss is deterministic)."""
    ids = vocab_ids(heads_params)
    if ids is not None and not distill:
        raise ValueError("a reduced draft vocabulary trains on the target's distribution "
                         "(distill); corpus tokens are target ids, not draft indices")
    teacher = teach(target_params, target_cfg, windows[:, :-1], ids, key is not None)
    hidden = teacher.out.hidden
    length = hidden.shape[1]
    params = bind_shared(heads_params, target_params, module.config.shared_names)
    logits = module.apply(params, hidden, windows,
                          method=module.teacher_forced)  # [B, T, K, head_size]
    total, weights, metrics = 0.0, 0.0, {}
    for k in range(module.config.num_heads):
        pred = logits[:, : length - k - 1, k]  # at t: the token at t + k + 2
        if distill:  # the target's prediction of that token
            ce = optax.softmax_cross_entropy(pred, jax.nn.softmax(teacher.logits[:, k + 1:]))
        else:
            ce = optax.softmax_cross_entropy_with_integer_labels(pred, windows[:, k + 2:])
        total += head_decay**k * ce.mean()
        weights += head_decay**k
        metrics[f"top1_head{k}"] = (to_target(ids, pred.argmax(-1)) ==
                                    teacher.token[:, k + 1:]).mean()
    return total / weights, metrics


def unrolled_mask(length: int, step: int, steps: int) -> np.ndarray:
    """[T, steps * T] what position p of unrolled step `step` attends to: step-0
    entries at positions <= p - step, and the entry of step j (1 <= j <= step) at
    position p - step + j."""
    p = np.arange(length)[:, None]
    q = np.arange(length)[None, :]
    blocks = [q <= p - step] + [(q == p - step + j) & (j <= step) for j in range(1, steps)]
    return np.concatenate(blocks, axis=1)


def eagle_loss(draft_params, target_params, windows, key=None, *, target_cfg: ModelConfig,
               eagle_cfg: EagleConfig, ttt_steps: int, head_decay: float,
               token_weight: float, feature_noise: float):
    """(loss, {top1_depth{d}: agreement with the target's greedy token}). With a `key`
    (training), EAGLE-1's input features get uniform noise of +-`feature_noise`."""
    inputs = windows[:, :-1]
    ids = vocab_ids(draft_params)
    taught = teach(target_params, target_cfg, inputs, ids, key is not None,
                   eagle_cfg.feature_layers)
    raw = taught.out.features()
    teacher = jax.nn.softmax(taught.logits)
    params = eagle_net.bind(eagle_cfg, draft_params, jax.lax.stop_gradient(target_params))
    net = EagleNet(eagle_cfg)
    target_features = net.apply(params, raw, method=EagleNet.features)
    batch, length = inputs.shape
    features = eagle_net.shift_features(target_features)
    if eagle_cfg.kind == "eagle" and feature_noise > 0 and key is not None:
        features += jax.random.uniform(key, features.shape, minval=-feature_noise,
                                       maxval=feature_noise)
    positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)
    cache = KVCache.init(eagle_cfg.layer, batch, ttt_steps * length)
    total, weights, metrics = 0.0, 0.0, {}
    for step in range(ttt_steps):
        logits, hidden, cache = net.apply(
            params, inputs, features, positions, cache,
            jnp.asarray(unrolled_mask(length, step, ttt_steps)), step * length)
        valid = (jnp.arange(length) >= step)[None].astype(jnp.float32)  # defined positions
        mean = lambda x: (x * valid).sum() / (valid.sum() * batch)
        ce = mean(optax.softmax_cross_entropy(logits, teacher))
        metrics[f"top1_depth{step + 1}"] = mean(to_target(ids, logits.argmax(-1)) ==
                                                taught.token)
        if eagle_cfg.kind == "eagle3":
            total += head_decay**step * ce
            weights += head_decay**step
        elif step == 0:
            regression = mean(optax.huber_loss(hidden, target_features).mean(-1))
            total, weights = regression + token_weight * ce, 1.0
        features = eagle_net.shift_features(hidden)
    return total / weights, metrics


def kangaroo_loss(adapter_params, target_params, windows, key=None, *,
                  target_cfg: ModelConfig, kangaroo_cfg: KangarooConfig):
    """(cross-entropy of the adapter's next-token distribution against the target's,
    {top1_depth1: agreement with the target's greedy token}). The adapter reads the
    target's exact layer-E states at every depth, so depth 1 stands for all."""
    ids = vocab_ids(adapter_params)
    taught = teach(target_params, target_cfg, windows[:, :-1], ids, key is not None,
                   (kangaroo_cfg.exit_layer,))
    states = taught.out.intermediates[0]
    batch, length = states.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    normed, _ = Adapter(kangaroo_cfg).apply(
        adapter_params, states, positions,
        KVCache.init(kangaroo_cfg.layer, batch, length))
    kernel = target_lm_head(jax.lax.stop_gradient(target_params)["params"])
    kernel = (kernel if ids is None else restrict(kernel, ids)).astype(jnp.float32)
    logits = softcap(normed @ kernel, target_cfg.final_logit_softcap)
    loss = optax.softmax_cross_entropy(logits, jax.nn.softmax(taught.logits)).mean()
    agreement = (to_target(ids, logits.argmax(-1)) == taught.token).mean()
    return loss, {"top1_depth1": agreement}
