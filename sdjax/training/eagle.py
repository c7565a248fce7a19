"""EAGLE draft training on a frozen target (`sdjax train heads` with kind eagle / eagle3).

Each step runs the target over corpus windows (frozen, sharded like the draft) for
its features and next-token distributions, then unrolls the draft `ttt_steps`
times ("training-time test", EAGLE-3): step 0 reads the target's features of the
previous positions; step s > 0 reads the draft's own h from step s - 1 instead,
and each position attends to step-0 entries up to s positions back plus its own
unrolled entries since, exactly what a depth-(s + 1) tree node sees while drafting.

- `eagle` (EAGLE-1): smooth-L1 regression of h onto the target's feature plus
  `token_weight` x cross-entropy against the target's distribution, on step 0, with
  uniform noise on the input features (EAGLE's robustness trick, keyed by the batch
  so that a resumed run is exact). Deeper steps are only measured.
- `eagle3`: cross-entropy against the target at every unrolled step, step s
  weighted by head_decay**s.

Metrics `top1_depth{s+1}`: how often step s's argmax is the target's, i.e. the greedy
acceptance at that depth given the shallower drafts were right (held-out in eval).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdjax.config import ModelConfig
from sdjax.heads import eagle as eagle_net
from sdjax.heads.eagle import EagleConfig, EagleNet
from sdjax.models.cache import KVCache
from sdjax.training.lm import forward


def unrolled_mask(length: int, step: int, steps: int) -> np.ndarray:
    """[T, steps * T] what position p of unrolled step `step` attends to: step-0
    entries at positions <= p - step, and the entry of step j (1 <= j <= step) at
    position p - step + j."""
    p = np.arange(length)[:, None]
    q = np.arange(length)[None, :]
    blocks = [q <= p - step] + [(q == p - step + j) & (j <= step) for j in range(1, steps)]
    return np.concatenate(blocks, axis=1)


def eagle_loss(draft_params, target_params, windows, *, target_cfg: ModelConfig,
               eagle_cfg: EagleConfig, ttt_steps: int, head_decay: float,
               token_weight: float, feature_noise: float):
    """(loss, {top1_depth{d}: agreement with the target's greedy token})."""
    inputs = windows[:, :-1]
    target_params = jax.lax.stop_gradient(target_params)
    out = forward(target_params, target_cfg, inputs, hidden_layers=eagle_cfg.feature_layers)
    raw = out.features()
    teacher = jax.nn.softmax(out.logits)
    teacher_token = out.logits.argmax(-1)
    params = eagle_net.bind(eagle_cfg, draft_params, target_params)
    net = EagleNet(eagle_cfg)
    target_features = net.apply(params, raw, method=EagleNet.features)
    batch, length = inputs.shape
    features = eagle_net.shift_features(target_features)
    if eagle_cfg.kind == "eagle" and feature_noise > 0:
        key = jax.random.fold_in(jax.random.PRNGKey(17), jnp.sum(windows))
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
        metrics[f"top1_depth{step + 1}"] = mean(logits.argmax(-1) == teacher_token)
        if eagle_cfg.kind == "eagle3":
            total += head_decay**step * ce
            weights += head_decay**step
        elif step == 0:
            regression = mean(optax.huber_loss(hidden, target_features).mean(-1))
            total, weights = regression + token_weight * ce, 1.0
        features = eagle_net.shift_features(hidden)
    return total / weights, metrics
