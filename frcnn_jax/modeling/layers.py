"""Layers shared by the backbones and heads: initialisers, frozen BatchNorm,
normalisation choice, convolutions and the ceil-mode max pool.

Conventions: NHWC activations, HWIO kernels; frozen statistics and
parameters are their own nnx variable types (``FrozenStat``,
``FrozenParam``) so that the train step can leave them out of the gradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
Dtype = Any

NORMS = ("frozen_bn", "group")


BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, used by both weight sets.


GN_EPSILON = 1e-5  # torch.nn.GroupNorm's default.


@functools.partial(jax.jit, static_argnums=(1,))
def _normal_bucket(key: Array, size: int, std: Array) -> Array:
  return jax.random.normal(key, (size,), jnp.float32) * std


@functools.partial(jax.jit, static_argnums=(1, 2))
def _take_reshape(x: Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
  return x[:math.prod(shape)].reshape(shape).astype(dtype)


def _flat_normal(key: Array, shape: Sequence[int], dtype: Dtype,
                 std: float) -> Array:
  """N(0, std^2) samples of `shape`, drawn as a power-of-two-long vector.

  Same distribution as jax.random.normal(key, shape) * std (other values).
  Compiling XLA:CPU's normal sampler costs ~0.3 s per distinct shape and
  dominated the eager construction of the networks; drawing a flat vector
  whose length is rounded up to a power of two leaves a handful of distinct
  sampler programs per process (and the waste is < 2x of a cheap op).
  """
  shape = tuple(int(d) for d in shape)
  n = max(1, math.prod(shape))
  size = max(1024, 1 << (n - 1).bit_length())
  flat = _normal_bucket(key, size, jnp.float32(std))
  return _take_reshape(flat, shape, jnp.dtype(dtype))


def conv_kernel_init(key: Array, shape: Sequence[int],
                     dtype: Dtype = jnp.float32) -> Array:
  """torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').

  HWIO kernel [kh,kw,I,O]: std = sqrt(2 / (kh * kw * O)), untruncated normal.
  """
  fan_out = math.prod(shape[:-2]) * shape[-1]
  return _flat_normal(key, shape, dtype, math.sqrt(2.0 / fan_out))


def linear_kernel_init(key: Array, shape: Sequence[int],
                       dtype: Dtype = jnp.float32) -> Array:
  """torchvision VGG's nn.init.normal_(weight, 0, 0.01)."""
  return _flat_normal(key, shape, dtype, 0.01)


class FrozenStat(nnx.Variable):
  """An array that is loaded (or initialized) once and never changes.

  Used for the four arrays of frozen BatchNorm. Not an `nnx.Param`: optimizers
  built with `wrt=nnx.Param` skip it, and the layers that read it wrap it in
  `jax.lax.stop_gradient`.
  """


class FrozenParam(nnx.Param):
  """A parameter of a layer frozen by `fixed_blocks` (or VGG's conv1_x/2_x).

  Still an `nnx.Param`; exclude it from training with
  `nnx.All(nnx.Param, nnx.Not(FrozenParam))` (= `backbone.frozen_filter()`).
  No gradient reaches it: the trunk stops gradients after the frozen stages.
  """


def freeze_params(module: nnx.Module) -> None:
  """Turns every `nnx.Param` inside `module` into a `FrozenParam`, in place."""
  for _, sub in nnx.iter_modules(module):
    for name, value in list(vars(sub).items()):
      if isinstance(value, nnx.Param) and not isinstance(value, FrozenParam):
        setattr(sub, name, FrozenParam(value.get_value()))


class FrozenBatchNorm(nnx.Module):
  """BatchNorm in inference mode with frozen affine parameters and statistics.

  y = (x - mean) / sqrt(var + epsilon) * scale + bias, per channel (last axis).
  The per-channel factor and offset are computed in float32, then the
  product is taken in the compute dtype. No gradient flows to the arrays.
  """

  def __init__(self, num_features: int, *, epsilon: float = BN_EPSILON,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    self.num_features = num_features
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = FrozenStat(jnp.ones((num_features,), param_dtype))
    self.bias = FrozenStat(jnp.zeros((num_features,), param_dtype))
    self.mean = FrozenStat(jnp.zeros((num_features,), param_dtype))
    self.var = FrozenStat(jnp.ones((num_features,), param_dtype))

  def affine(self) -> tuple[Array, Array]:
    """``(factor, offset)`` float32 [C]: the layer is ``x * factor + offset``
    (no gradient flows through them)."""
    get = lambda v: jax.lax.stop_gradient(v[...].astype(jnp.float32))
    factor = get(self.scale) * jax.lax.rsqrt(get(self.var) + self.epsilon)
    return factor, get(self.bias) - get(self.mean) * factor

  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    """x [..., C] -> [..., C] in the compute dtype (pointwise: ``mask``,
    accepted for symmetry with :class:`MaskedGroupNorm`, is not needed)."""
    del mask
    factor, offset = self.affine()
    x = x.astype(self.dtype)
    return x * factor.astype(self.dtype) + offset.astype(self.dtype)


class MaskedGroupNorm(nnx.GroupNorm):
  """GroupNorm whose statistics may come from a region only (``mask``).

  ``mask`` [B, H, W, 1] bool (the image's extent on its canvas) broadcasts
  over channels; statistics over the masked-in positions make the output
  there independent of the canvas the image was placed on. Same variables
  (and checkpoints) as ``nnx.GroupNorm``.
  """

  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    if mask is not None:
      mask = jnp.broadcast_to(mask, x.shape)
    return super().__call__(x, mask=mask)


def _largest_divisor_at_most(n: int, limit: int) -> int:
  for g in range(min(n, limit), 0, -1):
    if n % g == 0:
      return g
  return 1


def make_norm(norm: str, num_features: int, *, gn_groups: int, dtype: Dtype,
              param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Module:
  """Builds a normalization layer over the last axis.

  Args:
    norm: 'frozen_bn' or 'group'.
    num_features: channels C.
    gn_groups: GroupNorm groups; the largest divisor of C not above it is
      used (so 16 channels with gn_groups=32 get 16 groups).
    dtype: compute dtype.
    param_dtype: storage dtype.
    rngs: unused by both norms (their inits are constant); kept for symmetry.
  """
  if norm == "frozen_bn":
    return FrozenBatchNorm(num_features, dtype=dtype, param_dtype=param_dtype)
  if norm == "group":
    return MaskedGroupNorm(
        num_features, num_groups=_largest_divisor_at_most(num_features, gn_groups),
        epsilon=GN_EPSILON, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _all_ones(v) -> bool:
  return v is None or all(int(d) == 1 for d in np.atleast_1d(v))


class Conv(nnx.Conv):
  """``nnx.Conv`` (same parameters; the same values up to float rounding)
  whose 1x1 kernels are computed as a matrix product over the channels.

  Why: XLA:CPU hands a 1x1 convolution fused with its element-wise epilogue
  (frozen BN, ReLU, residual add) to a YNNPACK convolution fusion that runs at
  a quarter of the rate of the same product as a ``dot`` (one 1x1 256->64
  conv + BN + ReLU at 200x336: 60 ms as a convolution, 16 ms as a dot), and
  its weight gradient as a convolution needs transposed copies of the
  activations that a dot's does not. A ResNet bottleneck has two or three
  1x1 convolutions per block; the FPN's lateral and head convs are 1x1. A
  strided 1x1 kernel reads every ``stride``-th pixel, exactly the
  convolution's output. Kernels of other sizes are ``nnx.Conv``'s own call.

  ``conv(x, affine=(factor, offset))`` also applies a per-channel affine
  map (a BatchNorm with fixed statistics) by scaling the kernel: see
  :func:`apply_conv_norm`.
  """

  def _pointwise(self) -> bool:
    pad = self.padding
    no_pad = (pad == "VALID" or pad == 0 or
              (not isinstance(pad, str) and
               all(tuple(p) == (0, 0) for p in pad)))
    return (all(k == 1 for k in self.kernel_size) and no_pad and
            _all_ones(self.input_dilation) and
            _all_ones(self.kernel_dilation) and
            self.feature_group_count == 1 and self.mask is None)

  def _per_axis(self, v) -> tuple[int, ...]:
    """A stride/dilation setting (None, int or sequence) per spatial axis."""
    v = 1 if v is None else v
    return (v,) * len(self.kernel_size) if isinstance(v, int) else tuple(v)

  def _foldable(self, inputs: Array) -> bool:
    """Whether :meth:`__call__` can scale the kernel itself: a 2-D conv
    on [B, H, W, C] with zero padding given as 'SAME'/'VALID' or pairs."""
    pad = self.padding
    return (inputs.ndim == 4 and len(self.kernel_size) == 2 and
            self.mask is None and self.preferred_element_type is None and
            (pad in ("SAME", "VALID") or
             (not isinstance(pad, (str, int)) and
              all(len(tuple(p)) == 2 for p in pad))))

  def __call__(self, inputs: Array, out_sharding=None, *,
               affine: tuple[Array, Array] | None = None) -> Array:
    """``inputs [B, H, W, C_in] -> [B, h, w, C_out]``.

    Args:
      inputs: NHWC activations.
      out_sharding: as ``nnx.Conv``'s (the plain convolution is used).
      affine: optional ``(factor, offset)`` [C_out] float32, a per-channel
        affine map applied to the output (a BatchNorm with fixed statistics,
        :meth:`FrozenBatchNorm.affine`): the result is ``conv(x) * factor +
        offset`` computed as one convolution whose kernel (and bias) are
        scaled by ``factor``. Gradients flow to the kernel and, if they
        carry any, to ``factor``/``offset``.
    """
    if affine is not None and (out_sharding is not None or
                               not self._foldable(inputs)):
      factor, offset = affine
      y = self(inputs, out_sharding=out_sharding)
      return y * factor.astype(y.dtype) + offset.astype(y.dtype)
    if affine is None and (out_sharding is not None or
                           not self._pointwise()):
      return super().__call__(inputs, out_sharding=out_sharding)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    if affine is not None:
      factor, offset = (a.astype(jnp.float32) for a in affine)
      kernel = kernel.astype(jnp.float32) * factor
      bias = offset if bias is None else (
          bias.astype(jnp.float32) * factor + offset)
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias),
                                              dtype=self.dtype)
    strides = self._per_axis(self.strides)
    if self._pointwise():
      if any(s != 1 for s in strides):
        spatial = tuple(slice(None, None, s) for s in strides)
        inputs = inputs[(Ellipsis,) + spatial + (slice(None),)]
      kernel = kernel.reshape(self.in_features, self.out_features)
      y = jnp.einsum("...c,cd->...d", inputs, kernel,
                     precision=self.precision)
    else:
      y = jax.lax.conv_general_dilated(
          inputs, kernel, strides,
          self.padding if isinstance(self.padding, str) else
          tuple(tuple(p) for p in self.padding),
          lhs_dilation=self._per_axis(self.input_dilation),
          rhs_dilation=self._per_axis(self.kernel_dilation),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=self.feature_group_count,
          precision=self.precision)
    return y if bias is None else y + bias


def apply_conv_norm(conv: nnx.Module, norm: nnx.Module, x: Array,
                    extent: Array | None = None) -> Array:
  """``norm(conv(x))``; a norm with a fixed per-channel affine map (one
  with an ``affine()`` method: frozen BatchNorm, BatchNorm in eval mode) is
  folded into the convolution's kernel (``Conv(..., affine=)``).

  Why: the train step then has no element-wise pass over the activations
  for the norm, forward or backward. XLA:CPU materialised every frozen BN's
  ``factor`` as a full activation-sized broadcast shared by the forward
  epilogue and the backward product; with the fold, the R50-FPN train step
  (800x1333, batch 1, 2-core CPU) went from 9.7 s to 8.9 s (bench/README.md).
  Same values up to float rounding. Other norms (GroupNorm) get ``mask``,
  the extent's mask of the conv's output (or None without an extent).
  """
  if hasattr(norm, "affine"):
    if isinstance(conv, Conv):
      return conv(x, affine=norm.affine())
    return norm(conv(x))   # Another conv layer: the norm after it.
  y = conv(x)
  return norm(y, mask=mask_of(y, extent))


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, *,
         padding: int, use_bias: bool = False, dtype: Dtype, param_dtype: Dtype,
         rngs: nnx.Rngs) -> Conv:
  """A square conv with symmetric explicit padding (PyTorch's semantics)."""
  return Conv(
      in_features, out_features, (kernel, kernel), (stride, stride),
      padding=((padding, padding), (padding, padding)), use_bias=use_bias,
      dtype=dtype, param_dtype=param_dtype, kernel_init=conv_kernel_init,
      bias_init=jax.nn.initializers.zeros, rngs=rngs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tied(tree: Any, n: int) -> tuple[Any, ...]:
  """``n`` copies of the pytree ``tree``: one set of weights used ``n`` times.

  The values are ``tree`` itself; the gradient is the sum of the copies'
  gradients, each computed on its own. Why not let autodiff sum the uses:
  XLA:CPU fuses the weight-gradient convolutions of all the uses together
  with their sum into one YNNPACK library fusion, which runs at a third of
  the rate of the same convolutions apart. An optimization barrier between
  the gradients and their sum keeps them apart. Measured with the FPN RPN
  head's 3x3 conv over P2-P6 (R50-FPN, 800x1333, batch 1, 2-core CPU): the
  fused weight gradient took 3.3 s of a 12.0 s train step; see
  bench/README.md for the step with this. Elsewhere the barrier only keeps
  XLA from fusing across it.
  """
  return (tree,) * n


def _tied_fwd(tree, n):
  return tied(tree, n), None


def _tied_bwd(n, _, cotangents):
  del n
  cotangents = jax.lax.optimization_barrier(list(cotangents))
  return (jax.tree.map(lambda *g: functools.reduce(jnp.add, g), *cotangents),)


tied.defvjp(_tied_fwd, _tied_bwd)


def apply_shared(module: nnx.Module, inputs: Sequence[Array]) -> list[Array]:
  """``[module(x) for x in inputs]`` with the module's weights :func:`tied`
  across the calls (same values; gradients summed after each is computed)."""
  graphdef, state = nnx.split(module)
  copies = tied(state, len(inputs))
  return [nnx.merge(graphdef, s)(x) for s, x in zip(copies, inputs)]


def pool_output_size(n, kernel: int, stride: int, padding: int,
                     ceil_mode: bool):
  """PyTorch MaxPool2d output size along one axis (incl. its ceil-mode rule).

  ``n`` is a Python int or an integer array (per-image extents, traced).
  """
  if ceil_mode:
    out = -(-(n + 2 * padding - kernel) // stride) + 1
    # PyTorch drops a last window that would start in the right padding.
    return out - ((out - 1) * stride >= n + padding) * 1
  return (n + 2 * padding - kernel) // stride + 1


# -- canvas extents ---------------------------------------------------------
#
# An image sits top-left on a canvas (its batch's bucket). Its *extent* at a
# layer, [B, 2] int32 (rows, cols), is the size that layer's output would
# have for the image alone, by PyTorch's size formulas. Zeroing what lies
# outside the extent before every layer that reads neighbours (convolutions
# wider than 1x1, max pools) and taking normalisation statistics inside it
# makes every activation inside the extent exactly what the image alone,
# zero-padded at its own border, gives: detections do not depend on the
# canvas or on the other images of the batch.

def conv_extent(extent, kernel: int, stride: int, padding: int):
  """Extent after a kernel x kernel / stride conv with symmetric padding."""
  return (extent + 2 * padding - kernel) // stride + 1


def extent_mask(extent: Array, height: int, width: int) -> Array:
  """bool [B, height, width, 1]: True inside each image's extent [B, 2]."""
  rows = jnp.arange(height, dtype=jnp.int32)[None, :, None, None]
  cols = jnp.arange(width, dtype=jnp.int32)[None, None, :, None]
  return ((rows < extent[:, 0, None, None, None]) &
          (cols < extent[:, 1, None, None, None]))


def zero_outside(x: Array, extent: Array | None) -> Array:
  """``x`` [B, H, W, C] with everything outside ``extent`` set to 0."""
  if extent is None:
    return x
  return jnp.where(extent_mask(extent, x.shape[1], x.shape[2]), x,
                   jnp.zeros((), x.dtype))


def mask_of(x: Array, extent: Array | None) -> Array | None:
  """The extent's mask for ``x``'s spatial shape (None without an extent)."""
  if extent is None:
    return None
  return extent_mask(extent, x.shape[1], x.shape[2])


def max_pool(x: Array, kernel: int, stride: int, padding: int,
             ceil_mode: bool) -> Array:
  """PyTorch's MaxPool2d on NHWC: x [B,H,W,C] -> [B,h,w,C] (-inf padding)."""
  pads = [(0, 0)]
  for n in x.shape[1:3]:
    out = pool_output_size(n, kernel, stride, padding, ceil_mode)
    if out < 1:
      raise ValueError(f"input of size {n} is too small for a {kernel}x{kernel}"
                       f"/{stride} max pool with padding {padding}")
    hi = max(0, (out - 1) * stride + kernel - n - padding)
    pads.append((padding, hi))
  pads.append((0, 0))
  # A concrete (numpy) init value: JAX recognizes max with -inf as the
  # differentiable max-pool reduction only when the init is not a tracer.
  init = np.array(-np.inf, dtype=x.dtype)
  return jax.lax.reduce_window(x, init, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1), pads)
