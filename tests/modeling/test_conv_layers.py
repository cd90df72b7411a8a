"""modeling/layers.py: the pointwise Conv and weights tied across calls.

The references are flax's own ``nnx.Conv`` (the layer these replace) and
autodiff's gradient of the plain repeated calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frcnn_jax.modeling import layers


def _pair(kernel, stride, use_bias, padding, dtype=jnp.float32):
  """Our Conv and nnx.Conv with the same parameters."""
  kw = dict(kernel_size=(kernel, kernel), strides=stride, padding=padding,
            use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32)
  ours = layers.Conv(6, 5, rngs=nnx.Rngs(0), **kw)
  ref = nnx.Conv(6, 5, rngs=nnx.Rngs(0), **kw)
  if use_bias:
    bias = jnp.linspace(-1.0, 1.0, 5)
    ours.bias[...] = bias
    ref.bias[...] = bias
  return ours, ref


@pytest.mark.parametrize("stride", [1, 2, (2, 1)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_pointwise_conv_is_nnx_conv(stride, use_bias):
  ours, ref = _pair(1, stride, use_bias, ((0, 0), (0, 0)))
  assert ours._pointwise()
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, 6))
  np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)
  assert ours(x).shape == ref(x).shape

  def loss(m, x):
    return jnp.sum(jnp.sin(m(x)))

  g_ours, gx_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
  g_ref, gx_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
  np.testing.assert_allclose(g_ours.kernel[...], g_ref.kernel[...],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx_ours, gx_ref, rtol=1e-5, atol=1e-5)


def test_pointwise_conv_keeps_the_compute_dtype():
  ours, ref = _pair(1, 1, True, "VALID", dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(2), (1, 4, 4, 6))
  assert ours(x).dtype == ref(x).dtype == jnp.bfloat16
  np.testing.assert_allclose(ours(x).astype(np.float32),
                             ref(x).astype(np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel,padding", [(3, ((1, 1), (1, 1))),
                                            (1, ((1, 1), (1, 1)))])
def test_other_convs_are_nnx_convs_own_call(kernel, padding):
  # A 3x3 kernel, or a 1x1 kernel with padding, is not a matrix product.
  ours, ref = _pair(kernel, 1, True, padding)
  assert not ours._pointwise()
  x = jax.random.normal(jax.random.key(3), (1, 7, 8, 6))
  np.testing.assert_array_equal(ours(x), ref(x))


def test_tied_values_and_gradients():
  w = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.float32(0.5)}
  xs = [jnp.linspace(0.0, 1.0, 3) * (i + 1) for i in range(4)]

  def uses(copies):
    return sum(jnp.sum(jnp.tanh(c["a"] @ x) * c["b"] ** (i + 1))
               for i, (c, x) in enumerate(zip(copies, xs)))

  def tied_loss(w):
    return uses(layers.tied(w, len(xs)))

  copies = layers.tied(w, len(xs))
  assert len(copies) == len(xs)
  for c in copies:  # each copy is the tree itself
    np.testing.assert_array_equal(c["a"], w["a"])
    assert c["b"] == w["b"]

  def plain_loss(w):
    return uses([w] * len(xs))

  np.testing.assert_allclose(tied_loss(w), plain_loss(w), rtol=1e-6)
  g_tied = jax.jit(jax.grad(tied_loss))(w)
  g_plain = jax.grad(plain_loss)(w)
  for k in w:
    np.testing.assert_allclose(g_tied[k], g_plain[k], rtol=1e-5, atol=1e-6)


def test_apply_shared_is_repeated_calls():
  conv = layers.Conv(4, 3, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                     rngs=nnx.Rngs(0))
  xs = [jax.random.normal(jax.random.key(i), (1, s, s + 1, 4))
        for i, s in enumerate((8, 4, 2))]

  def shared(m):
    return sum(jnp.sum(y ** 2) for y in layers.apply_shared(m, xs))

  def repeated(m):
    return sum(jnp.sum(m(x) ** 2) for x in xs)

  for y, x in zip(layers.apply_shared(conv, xs), xs):
    np.testing.assert_array_equal(y, conv(x))
  g_shared = nnx.grad(shared)(conv)
  g_repeated = nnx.grad(repeated)(conv)
  np.testing.assert_allclose(g_shared.kernel[...], g_repeated.kernel[...],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_shared.bias[...], g_repeated.bias[...],
                             rtol=1e-5, atol=1e-5)
  # The barrier that keeps XLA from fusing the per-call weight gradients
  # is in the lowered gradient program.
  hlo = jax.jit(nnx.grad(shared)).lower(conv).as_text()
  assert "optimization_barrier" in hlo
