"""One process of a two-process run on localhost (`jax.distributed`, CPU collectives):
sharded `generate` with an EAGLE draft and a few Medusa training steps over a mesh
that spans both processes. The test runs the same functions in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m tests.multiprocess_worker ADDRESS PROCESS_ID OUTPUT
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

import sdjax
from sdjax import sharding
from sdjax.heads import Eagle, HeadsConfig, eagle_config, init_eagle, init_heads
from sdjax.training import heads as heads_training
from sdjax.training.loop import fit

TARGET = sdjax.ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=4, head_dim=16, intermediate_size=128,
                           max_position_embeddings=256)
PROMPTS = [list(range(5, 5 + n)) for n in (7, 3, 12, 5)]
STREAM = np.random.default_rng(0).integers(0, 256, 4000).astype(np.int32)


def decode() -> np.ndarray:
    """Greedy EAGLE-1 tokens [4, 16] on a (data 2, model 4) mesh."""
    params = sdjax.init_params(TARGET, jax.random.PRNGKey(0))
    eagle = eagle_config(TARGET)
    cfg = sdjax.SpecConfig(model=TARGET, drafter=Eagle(eagle), max_new_tokens=16,
                           eos_token_id=())
    mesh = sharding.make_mesh(data=2, model=4)
    return sdjax.generate(params, PROMPTS, cfg, mesh=mesh,
                          draft_params=init_eagle(eagle, params, jax.random.PRNGKey(1))).tokens


def train(output: str) -> dict:
    """Medusa heads after 3 AdamW steps on a (data 2, model 4) mesh, gathered to host."""
    params = sdjax.init_params(TARGET, jax.random.PRNGKey(0))
    heads = HeadsConfig(num_heads=2, hidden_size=64, vocab_size=256)
    cfg = heads_training.HeadsTrainConfig(
        target="unused", output=output, num_heads=2, seq_len=16, batch_size=8, steps=3,
        warmup_steps=1, eval_every=3, checkpoint_every=3, data_parallel=2, model_parallel=4)
    loss_fn = heads_training.make_loss(cfg, TARGET, heads)
    result = fit(cfg, init_heads(heads, params, jax.random.PRNGKey(2)), loss_fn, STREAM,
                 frozen=params, progress=False)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(result.params,
                                                                       tiled=True))


def flatten(tree) -> dict:
    """Leaf path -> leaf, as np.savez can store them."""
    return {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


if __name__ == "__main__":
    address, process_id, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(address, num_processes=2, process_id=process_id)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    tokens = decode()
    flat = flatten(train(output + "/run"))
    if process_id == 0:
        np.savez(output + "/result.npz", tokens=tokens, **flat)
    jax.distributed.shutdown()
