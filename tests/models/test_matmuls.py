"""The model's CPU-specific matmul forms compute what the plain products do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdjax.models.transformer import HEAD_CHUNK, HEAD_CHUNK_MAX_ROWS, head_dot

HEAD = jnp.asarray(np.random.default_rng(0).standard_normal((2 * HEAD_CHUNK, 16), np.float32))


def _batched_dots(fn, *args) -> int:
    """Batched dot_generals in fn's program (the chunked form has one)."""
    return sum(1 for eqn in jax.make_jaxpr(fn)(*args).eqns
               if eqn.primitive.name == "dot_general" and eqn.params["dimension_numbers"][1][0])


@pytest.mark.parametrize("shape,chunked", [
    ((1, 16), False),                              # an autoregressive step: one row
    ((2, 4, 16), True),                            # a batch of 4-node trees
    ((1, HEAD_CHUNK_MAX_ROWS, 16), True),
    ((1, HEAD_CHUNK_MAX_ROWS + 1, 16), False),     # training-sized: the plain product
])
def test_the_chunked_lm_head_equals_the_plain_product(shape, chunked):
    hidden = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32))
    expected = np.einsum("...d,vd->...v", np.asarray(hidden, np.float64),
                         np.asarray(HEAD, np.float64))
    out = jax.jit(head_dot)(hidden, HEAD)
    assert out.shape == (*shape[:-1], 2 * HEAD_CHUNK)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    assert _batched_dots(head_dot, hidden, HEAD) == int(chunked)


def test_the_chunked_form_is_for_float32_heads_it_divides():
    rows = jnp.ones((8, 16), jnp.float32)
    assert _batched_dots(head_dot, rows, HEAD[:HEAD_CHUNK]) == 0          # one chunk
    assert _batched_dots(head_dot, rows, HEAD[:HEAD_CHUNK + 8]) == 0      # not a multiple
    assert _batched_dots(head_dot, rows.astype(jnp.bfloat16), HEAD.astype(jnp.bfloat16)) == 0
