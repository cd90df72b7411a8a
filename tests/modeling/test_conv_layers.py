"""modeling/layers.py: the pointwise Conv, norms folded into convolutions,
and weights tied across calls.

The references are flax's own ``nnx.Conv`` (the layer these replace), the
norm applied after the convolution, and autodiff's gradient of the plain
repeated calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jax_core

from frcnn_jax.modeling import fpn
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


def _affine(c=5, seed=7):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.uniform(k1, (c,), minval=0.3, maxval=2.0),
          jax.random.normal(k2, (c,)))


@pytest.mark.parametrize("kernel,stride,padding", [
    (1, 1, ((0, 0), (0, 0))), (1, 2, "VALID"), (3, 1, ((1, 1), (1, 1))),
    (3, 2, ((1, 1), (1, 1))), (7, 2, ((3, 3), (3, 3))), (3, 1, "SAME")])
@pytest.mark.parametrize("use_bias", [True, False])
def test_affine_folds_into_the_kernel(kernel, stride, padding, use_bias):
  # conv(x, affine=(f, o)) is nnx.Conv(x) * f + o, values and gradients
  # (to the kernel, the bias, the input and the affine itself).
  ours, ref = _pair(kernel, stride, use_bias, padding)
  x = jax.random.normal(jax.random.key(4), (2, 9, 11, 6))
  aff = _affine()
  np.testing.assert_allclose(ours(x, affine=aff), ref(x) * aff[0] + aff[1],
                             rtol=1e-5, atol=1e-5)

  def loss(m, x, aff, folded):
    y = m(x, affine=aff) if folded else m(x) * aff[0] + aff[1]
    return jnp.sum(jnp.sin(y))

  g = nnx.grad(loss, argnums=(0, 1, 2))(ours, x, aff, True)
  g_ref = nnx.grad(loss, argnums=(0, 1, 2))(ref, x, aff, False)
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g[0].kernel[...], g_ref[0].kernel[...], **tol)
  if use_bias:
    np.testing.assert_allclose(g[0].bias[...], g_ref[0].bias[...], **tol)
  np.testing.assert_allclose(g[1], g_ref[1], **tol)
  for a, b in zip(g[2], g_ref[2]):
    np.testing.assert_allclose(a, b, **tol)


def test_affine_keeps_the_compute_dtype():
  ours, ref = _pair(3, 1, True, ((1, 1), (1, 1)), dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(5), (1, 6, 6, 6))
  aff = _affine()
  y = ours(x, affine=aff)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      y.astype(np.float32),
      ref(x).astype(np.float32) * aff[0] + aff[1], rtol=3e-2, atol=3e-2)


def test_unfoldable_conv_applies_the_affine_after():
  # A padding the fold does not handle (circular) still gives the right map.
  ours, ref = _pair(3, 1, True, "CIRCULAR")
  x = jax.random.normal(jax.random.key(6), (1, 6, 7, 6))
  aff = _affine()
  assert not ours._foldable(x)
  np.testing.assert_allclose(ours(x, affine=aff), ref(x) * aff[0] + aff[1],
                             rtol=1e-6, atol=1e-6)


def _frozen_bn(c=5):
  bn = layers.FrozenBatchNorm(c)
  k = jax.random.split(jax.random.key(8), 4)
  bn.scale[...] = jax.random.uniform(k[0], (c,), minval=0.5, maxval=1.5)
  bn.bias[...] = jax.random.normal(k[1], (c,))
  bn.mean[...] = jax.random.normal(k[2], (c,))
  bn.var[...] = jax.random.uniform(k[3], (c,), minval=0.2, maxval=3.0)
  return bn


def _activation_sized_muls(fn, *args):
  """Multiplies in fn's jaxpr whose output is as large as the activation."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  out = [v.aval.shape for v in jaxpr.jaxpr.outvars][0]

  def walk(j):
    for e in j.eqns:
      if e.primitive.name == "mul" and e.outvars[0].aval.shape == out:
        yield e
      for sub in jax_core.jaxprs_in_params(e.params):
        yield from walk(sub)
  return list(walk(jaxpr.jaxpr))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_apply_conv_norm_folds_batchnorm(norm):
  conv = layers.conv(6, 5, 3, 2, padding=1, dtype=jnp.float32,
                     param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  bn = _frozen_bn()
  if norm == "bn":  # torchvision v2's BatchNorm: scale and bias trainable
    tv = fpn.BatchNorm(5)
    for name in ("scale", "bias", "mean", "var"):
      getattr(tv, name)[...] = getattr(bn, name)[...]
    bn = tv
  x = jax.random.normal(jax.random.key(9), (2, 9, 11, 6))
  np.testing.assert_allclose(layers.apply_conv_norm(conv, bn, x),
                             bn(conv(x)), rtol=1e-5, atol=1e-5)
  # The fold leaves no element-wise product over the output.
  assert not _activation_sized_muls(
      lambda x: layers.apply_conv_norm(conv, bn, x), x)
  assert _activation_sized_muls(lambda x: bn(conv(x)), x)

  def loss(modules, folded):
    c, n = modules
    y = layers.apply_conv_norm(c, n, x) if folded else n(c(x))
    return jnp.sum(jnp.sin(y))

  g = nnx.grad(loss)((conv, bn), True)
  g_ref = nnx.grad(loss)((conv, bn), False)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  if norm == "bn":  # the norm's own parameters get their gradient
    assert float(jnp.abs(g[1].scale[...]).sum()) > 0


def test_apply_conv_norm_keeps_groupnorm_after_the_conv():
  conv = layers.conv(6, 8, 3, 1, padding=1, dtype=jnp.float32,
                     param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  gn = layers.make_norm("group", 8, gn_groups=4, dtype=jnp.float32,
                        param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(10), (2, 7, 9, 6))
  extent = jnp.array([[5, 6], [7, 9]], jnp.int32)
  y = conv(x)
  np.testing.assert_array_equal(
      layers.apply_conv_norm(conv, gn, x, extent),
      gn(y, mask=layers.extent_mask(extent, 7, 9)))


def test_apply_conv_norm_with_another_conv_layer():
  # A conv layer that cannot take affine= (flax's own) gets the norm after.
  ref = nnx.Conv(6, 5, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
  for bn in (_frozen_bn(), fpn.BatchNorm(5)):
    x = jax.random.normal(jax.random.key(11), (1, 6, 7, 6))
    np.testing.assert_array_equal(layers.apply_conv_norm(ref, bn, x),
                                  bn(ref(x)))
