"""ResNet + Feature Pyramid Network, as torchvision's Faster R-CNN FPN models.

Shapes::

  B  images;  Hc, Wc  canvas (network input), multiples of 32
  C2..C5  ResNet stage outputs at strides 4, 8, 16, 32 (layer1..layer4)
  P2..P6  FPN outputs, F channels (256) each; P6 = P5[::2, ::2]

What torchvision builds (``backbone_utils._resnet_fpn_extractor`` with
``returned_layers=[1, 2, 3, 4]`` and ``LastLevelMaxPool``), reproduced here:

* The body is a torchvision ResNet (stride on the 3x3 conv, 3x3/2 max pool
  with padding 1): :class:`frcnn_jax.modeling.backbones.ResNet` itself, whose
  blocks are run here stage by stage so that all four stage outputs come out
  (its ``trunk``/``head`` split is the C4 one). ``trainable_layers=3``, the
  torchvision default, is ``fixed_blocks=1``: conv1 and layer1 frozen, no
  gradient computed below layer2.
* The FPN (``ops.FeaturePyramidNetwork``): for each C_l a 1x1 "inner" conv
  to F channels, top-down ``inner_l + nearest_upsample(inner_{l+1})``, then
  a 3x3 "layer" conv; P6 is ``max_pool2d(P5, 1, 2)``, i.e. every other pixel.
  v1: convs with bias, no norm. v2 (``norm=True``): convs without bias, each
  followed by BatchNorm (:class:`BatchNorm` here).
* Parameter names follow torchvision's state dict: ``inner_blocks.{i}.0``
  (conv), ``inner_blocks.{i}.1`` (v2 BatchNorm), ``layer_blocks.{i}.*``.

Canvas invariance (``mask_canvas``). torchvision pads a single image to its
size rounded up to 32 (its "extent" ``E = 32 * ceil(h / 32)``) and every
convolution sees zeros beyond it. Our canvas (a data bucket) can be larger,
and what the network computes over the extra canvas would leak into the
extent through the 3x3 convolutions and the max pool. With ``mask_canvas``
the input of every convolution wider than 1x1 (and of the stem's max pool,
which follows a ReLU, so 0 works as its -inf padding) is set to zero outside
the extent at its resolution (``E / stride``; ``ceil(E5 / 2)`` for P6), so
everything inside the extent is what torchvision computes for that image
alone, on any canvas. 1x1 convolutions and element-wise ops never carry the
outside in. When the canvas equals the extent the masks change nothing.

Dtypes: parameters float32; convolutions in the compute dtype; BatchNorm
factors in float32.
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

from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import layers
from frcnn_jax.modeling.layers import FrozenStat
from frcnn_jax.modeling.layers import max_pool

Array = jax.Array
Dtype = Any

FPN_STRIDES = (4, 8, 16, 32, 64)   # P2..P6
SIZE_DIVISIBLE = 32                 # torchvision's batch padding


# ----------------------------------------------------------------------------
# Initialisers (torchvision's, drawn as power-of-two-long vectors: see
# layers._flat_normal for why)
# ----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(1,))
def _uniform_bucket(key: Array, size: int, bound: Array) -> Array:
  return jax.random.uniform(key, (size,), jnp.float32, -1.0, 1.0) * bound


@functools.partial(jax.jit, static_argnums=(1,))
def _normal_bucket(key: Array, size: int, std: Array) -> Array:
  return jax.random.normal(key, (size,), jnp.float32) * std


def _flat(sample, key, shape, dtype, scale):
  shape = tuple(int(d) for d in shape)
  n = max(1, math.prod(shape))
  size = max(1024, 1 << (n - 1).bit_length())
  return sample(key, size, jnp.float32(scale))[:n].reshape(shape).astype(dtype)


def _fan_in(shape) -> int:
  return max(1, math.prod(shape[:-1]))


def kaiming_uniform_a1(key, shape, dtype=jnp.float32):
  """torchvision FPN's ``kaiming_uniform_(w, a=1)``: U(+-sqrt(3 / fan_in))."""
  return _flat(_uniform_bucket, key, shape, dtype, math.sqrt(3.0 / _fan_in(shape)))


def torch_linear_init(key, shape, dtype=jnp.float32):
  """``nn.Linear``'s default weight init: U(+-1 / sqrt(fan_in))."""
  return _flat(_uniform_bucket, key, shape, dtype, 1.0 / math.sqrt(_fan_in(shape)))


def normal_init(std: float):
  """N(0, std^2) (the RPN head's ``normal_(std=0.01)``)."""
  return lambda key, shape, dtype=jnp.float32: _flat(_normal_bucket, key,
                                                      shape, dtype, std)


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
  """``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (v2 box head)."""
  fan_out = math.prod(shape[:-2]) * shape[-1]
  return _flat(_normal_bucket, key, shape, dtype, math.sqrt(2.0 / fan_out))


def conv2d(in_features: int, out_features: int, kernel: int, *,
           use_bias: bool, kernel_init, dtype: Dtype, rngs: nnx.Rngs,
           stride: int = 1) -> layers.Conv:
  """A square conv with PyTorch's symmetric padding ``kernel // 2``."""
  p = kernel // 2
  return layers.Conv(in_features, out_features, (kernel, kernel),
                     (stride, stride), padding=((p, p), (p, p)),
                     use_bias=use_bias, kernel_init=kernel_init,
                     bias_init=nnx.initializers.zeros, dtype=dtype,
                     param_dtype=jnp.float32, rngs=rngs)


class BatchNorm(nnx.Module):
  """torchvision v2's ``nn.BatchNorm2d`` in eval mode, statistics frozen.

  ``y = (x - mean) / sqrt(var + eps) * scale + bias`` over the last axis.
  ``scale`` and ``bias`` are trainable ``nnx.Param``s; ``mean`` and ``var``
  are ``FrozenStat``s (running statistics are never updated: the jitted
  step keeps everything but the trainable parameters fixed).
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-5,
               dtype: Dtype = jnp.float32):
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = FrozenStat(jnp.zeros((num_features,), jnp.float32))
    self.var = FrozenStat(jnp.ones((num_features,), jnp.float32))

  def affine(self) -> tuple[Array, Array]:
    """``(factor, offset)`` float32 [C]: the layer is ``x * factor +
    offset``; gradients reach ``scale`` and ``bias`` through them."""
    stat = lambda v: jax.lax.stop_gradient(v[...].astype(jnp.float32))
    factor = self.scale[...] * jax.lax.rsqrt(stat(self.var) + self.epsilon)
    return factor, self.bias[...] - stat(self.mean) * factor

  def __call__(self, x: Array) -> Array:
    factor, offset = self.affine()
    return (x.astype(self.dtype) * factor.astype(self.dtype)
            + offset.astype(self.dtype))


def conv_norm(in_features: int, out_features: int, kernel: int, *,
              norm: bool, kernel_init, dtype: Dtype,
              rngs: nnx.Rngs) -> nnx.List:
  """torchvision's ``Conv2dNormActivation`` without activation: ``[conv]``
  (with bias) or ``[conv (no bias), BatchNorm]``; names ``0`` and ``1``."""
  layers = [conv2d(in_features, out_features, kernel, use_bias=not norm,
                   kernel_init=kernel_init, dtype=dtype, rngs=rngs)]
  if norm:
    layers.append(BatchNorm(out_features, dtype=dtype))
  return nnx.List(layers)


def apply_seq(seq: nnx.List, x: Array) -> Array:
  """The layers of ``seq`` in turn; a conv followed by a BatchNorm is one
  convolution with the norm folded in (``layers.apply_conv_norm``)."""
  items, i = list(seq), 0
  while i < len(items):
    if (i + 1 < len(items) and isinstance(items[i], layers.Conv) and
        isinstance(items[i + 1], BatchNorm)):
      x = layers.apply_conv_norm(items[i], items[i + 1], x)
      i += 2
    else:
      x = items[i](x)
      i += 1
  return x


# ----------------------------------------------------------------------------
# Extents and masks
# ----------------------------------------------------------------------------

def padded_extent(im_info: Array) -> Array:
  """``[B, 2]`` int32: each image's height/width rounded up to 32 (what
  torchvision pads one image to)."""
  hw = jnp.ceil(im_info[:, :2].astype(jnp.float32) / SIZE_DIVISIBLE)
  return hw.astype(jnp.int32) * SIZE_DIVISIBLE


def level_extents(extent: Array) -> list[Array]:
  """``[B, 2]`` extents of P2..P6 in cells: ``E / s`` for s = 4..32 and
  ``ceil(E / 64)`` for P6 (torchvision's sizes for the padded image)."""
  out = [extent // s for s in FPN_STRIDES[:-1]]
  out.append((out[-1] + 1) // 2)
  return out


def mask_outside(x: Array, extent: Array | None) -> Array:
  """``x [B, H, W, C]`` with zeros at rows >= extent[:, 0] or columns >=
  extent[:, 1]; ``extent=None`` returns ``x``."""
  if extent is None:
    return x
  rows = jnp.arange(x.shape[1], dtype=jnp.int32)
  cols = jnp.arange(x.shape[2], dtype=jnp.int32)
  inside = ((rows[None, :, None] < extent[:, 0, None, None]) &
            (cols[None, None, :] < extent[:, 1, None, None]))
  return jnp.where(inside[..., None], x, jnp.zeros((), x.dtype))


def _ext(extent: Array | None, stride: int) -> Array | None:
  return None if extent is None else extent // stride


# ----------------------------------------------------------------------------
# The ResNet body, all four stages
# ----------------------------------------------------------------------------

def _bottleneck(blk: backbones.Bottleneck, x: Array, extent,
                stride: int) -> Array:
  """torchvision's Bottleneck with the 3x3 conv's input masked.

  ``stride`` is the input's stride (w.r.t. the image); the block's own
  stride is read from its conv1 (caffe layout) and conv2 (torchvision's).
  """
  fold = layers.apply_conv_norm
  out = jax.nn.relu(fold(blk.conv1, blk.bn1, x))
  s1 = blk.conv1.strides[0]
  out = mask_outside(out, _ext(extent, stride * s1))
  out = jax.nn.relu(fold(blk.conv2, blk.bn2, out))
  out = fold(blk.conv3, blk.bn3, out)
  shortcut = x if blk.downsample is None else fold(*blk.downsample, x)
  return jax.nn.relu(out + shortcut.astype(out.dtype))


def _basic(blk: backbones.BasicBlock, x: Array, extent,
           stride: int) -> Array:
  """BasicBlock (the tiny test network) with both 3x3 inputs masked."""
  x = mask_outside(x, _ext(extent, stride))
  s = blk.conv1.strides[0]
  fold = layers.apply_conv_norm
  out = jax.nn.relu(fold(blk.conv1, blk.bn1, x))
  out = mask_outside(out, _ext(extent, stride * s))
  out = fold(blk.conv2, blk.bn2, out)
  shortcut = x if blk.downsample is None else fold(*blk.downsample, x)
  return jax.nn.relu(out + shortcut.astype(out.dtype))


def resnet_stages(body: backbones.ResNet, x: Array,
                  extent: Array | None = None) -> list[Array]:
  """``images [B, Hc, Wc, 3]`` -> ``[C2, C3, C4, C5]`` (strides 4..32).

  Args:
    body: the ResNet (its conv1, bn1, layer1..layer4).
    x: the normalised input (zero outside the real image).
    extent: ``[B, 2]`` padded extents (:func:`padded_extent`) to mask with,
      or None (no masks).

  Gradients stop after the last frozen stage (stem + layer1..fixed_blocks),
  as ``ResNet.trunk`` does.
  """
  block_fn = _bottleneck if body.block == "bottleneck" else _basic
  x = jax.nn.relu(layers.apply_conv_norm(body.conv1, body.bn1,
                                          x.astype(body.dtype)))
  x = mask_outside(x, _ext(extent, 2))
  if body.stride_in_1x1:
    x = max_pool(x, 3, 2, padding=0, ceil_mode=True)
  else:
    x = max_pool(x, 3, 2, padding=1, ceil_mode=False)
  num_frozen = body.fixed_blocks + 1  # The stem counts as one stage.
  if num_frozen == 1:
    x = jax.lax.stop_gradient(x)
  feats, stride = [], 4
  for k, stage in enumerate((body.layer1, body.layer2, body.layer3,
                             body.layer4)):
    for blk in stage:
      x = block_fn(blk, x, extent, stride)
      stride *= (blk.conv2.strides[0] * blk.conv1.strides[0])
    if k + 2 == num_frozen:
      x = jax.lax.stop_gradient(x)
    feats.append(x)
  return feats


def resnet_stage_channels(body: backbones.ResNet) -> tuple[int, ...]:
  """Output channels of layer1..layer4."""
  expansion = backbones.BLOCKS[body.block].expansion
  return tuple(w * expansion for w in body.widths)


# ----------------------------------------------------------------------------
# The FPN
# ----------------------------------------------------------------------------

def upsample_nearest(x: Array, size: Sequence[int]) -> Array:
  """``F.interpolate(x, size, mode='nearest')`` on NHWC: source index
  ``floor(dst * in / out)`` (a repeat when the size exactly doubles)."""
  h, w = x.shape[1:3]
  oh, ow = int(size[0]), int(size[1])
  if (oh, ow) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rows = np.minimum(np.floor(np.arange(oh) * np.float32(h / oh)), h - 1)
  cols = np.minimum(np.floor(np.arange(ow) * np.float32(w / ow)), w - 1)
  return x[:, rows.astype(np.int32)][:, :, cols.astype(np.int32)]


class FPN(nnx.Module):
  """torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``."""

  def __init__(self, in_channels: Sequence[int], out_channels: int = 256, *,
               norm: bool = False, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(norm=norm, kernel_init=kaiming_uniform_a1, dtype=dtype,
              rngs=rngs)
    self.out_channels = int(out_channels)
    self.inner_blocks = nnx.List([conv_norm(c, out_channels, 1, **kw)
                                  for c in in_channels])
    self.layer_blocks = nnx.List([conv_norm(out_channels, out_channels, 3,
                                            **kw) for _ in in_channels])

  def __call__(self, feats: Sequence[Array],
               extents: Sequence[Array] | None = None) -> list[Array]:
    """``[C2..C5]`` -> ``[P2, P3, P4, P5, P6]``.

    Args:
      feats: the stage outputs, finest first.
      extents: per level ``[B, 2]`` extents (:func:`level_extents`, P2..P6)
        or None. With extents, every P_l is zero outside its extent (what
        the RPN's 3x3 conv must see).
    """
    ext = (lambda i: None) if extents is None else (lambda i: extents[i])
    last = apply_seq(self.inner_blocks[-1], feats[-1])
    n = len(feats)
    results = [apply_seq(self.layer_blocks[-1], mask_outside(last,
                                                             ext(n - 1)))]
    for i in range(n - 2, -1, -1):
      lateral = apply_seq(self.inner_blocks[i], feats[i])
      last = lateral + upsample_nearest(last, lateral.shape[1:3]).astype(
          lateral.dtype)
      results.insert(0, apply_seq(self.layer_blocks[i],
                                  mask_outside(last, ext(i))))
    results = [mask_outside(p, ext(i)) for i, p in enumerate(results)]
    results.append(results[-1][:, ::2, ::2])   # max_pool2d(k=1, s=2)
    return results


def replicate_edges(features: Array, extent: Array) -> Array:
  """One image's level ``[H, W, C]`` with row ``extent[0]`` and column
  ``extent[1]`` replaced by the last row / column inside the extent.

  torchvision's RoIAlign uses the last row alone for samples in
  ``(H - 1, H]`` of a map of height ``H``; on a larger canvas our RoIAlign
  interpolates towards row ``H``, which this makes a copy of row ``H - 1``
  (so the result is torchvision's). Nothing beyond is ever sampled: RoIs are
  clipped to the image. With ``extent == (H, W)`` the writes clamp onto the
  last row / column, rewriting them unchanged.
  """
  h, w = features.shape[:2]
  r = jnp.clip(extent[0] - 1, 0, h - 1)
  c = jnp.clip(extent[1] - 1, 0, w - 1)
  row = jax.lax.dynamic_slice_in_dim(features, r, 1, axis=0)
  features = jax.lax.dynamic_update_slice_in_dim(
      features, row, jnp.where(r + 1 < h, r + 1, r), axis=0)
  col = jax.lax.dynamic_slice_in_dim(features, c, 1, axis=1)
  return jax.lax.dynamic_update_slice_in_dim(
      features, col, jnp.where(c + 1 < w, c + 1, c), axis=1)
