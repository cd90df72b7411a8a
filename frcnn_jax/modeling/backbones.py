"""Backbones split C4-style, as faster-rcnn.pytorch builds them.

Shape shorthand:
  B  images in the batch
  H, W  image height and width (network input, NHWC)
  h, w  feature map height and width (about H/16, W/16; exact sizes below)
  R  RoIs (pooled regions) fed to the head
  P  pooled size of one RoI (7)
  C  channels

Every backbone has two halves, as the seed's `RCNN_base` / `RCNN_top`:

  trunk(images [B,H,W,3]) -> features [B,h,w,trunk_channels]       (stride 16)
  head(pooled [R,P,P,trunk_channels], *, train, key) -> [R,head_channels]

Networks:
  * `ResNet` with bottleneck blocks (ResNet-50/101/152): trunk = conv1, bn1,
    relu, maxpool, layer1..layer3 (1024 channels); head = layer4, then the
    mean over H and W (2048 channels), the seed's `_head_to_tail`.
  * `ResNet` with basic blocks and a few channels: the tiny network for CPU
    tests and the synthetic default (same split, configurable widths/blocks).
  * `VGG16`: trunk = conv1_1..conv5_3 with ReLU and four max pools (no pool5,
    512 channels); head = flatten -> fc6 (4096) ReLU dropout -> fc7 (4096) ReLU
    dropout, torchvision's classifier without its last layer, as the seed.

Exact output sizes (identical to PyTorch for any input size, odd included):
  conv k, stride s, pad p:  out = floor((n + 2p - k) / s) + 1
  max pool, torchvision style (3x3, stride 2, pad 1, floor mode):
                            out = floor((n - 1) / 2) + 1
  max pool, caffe style (3x3, stride 2, pad 0, ceil mode):
                            out = ceil((n - 3) / 2) + 1
  ResNet trunk: conv1 (7x7/2 pad 3), maxpool, layer2 and layer3 (stride 2,
  1x1 or 3x3 conv; both give floor((n - 1) / 2) + 1); VGG trunk: four 2x2/2
  floor max pools. The caffe pool needs n >= 3 after conv1, i.e. H, W >= 5.

Stride placement (`stride_in_1x1`):
  True   faster-rcnn.pytorch's resnet.py, for the caffe-converted weights
         (resnet101_caffe.pth): the stride of the first bottleneck of layer2..4
         is on its 1x1 conv1; stem max pool 3x3/2, padding 0, ceil mode.
  False  torchvision: the stride is on the 3x3 conv2; max pool 3x3/2,
         padding 1, floor mode.
  Basic blocks have no 1x1 conv: there the flag only picks the max pool.

Normalization (`norm`):
  'frozen_bn'  affine BatchNorm with running statistics,
               y = (x - mean) / sqrt(var + eps) * scale + bias, never updated
               and never trained (the seed's set_bn_fix). The four arrays are
               `FrozenStat` variables (not `nnx.Param`), so an optimizer over
               `nnx.Param` never sees them, and they are wrapped in
               `jax.lax.stop_gradient`, so no gradient reaches them either.
  'group'      trainable GroupNorm (nnx.GroupNorm, epsilon 1e-5), for training
               from scratch.

Freezing (`fixed_blocks`, the seed's RESNET.FIXED_BLOCKS, default 1):
  conv1/bn1 are always frozen, plus layer1..layer{fixed_blocks}
  (fixed_blocks in 0..3). -1 is an extension for training from scratch:
  nothing is frozen. The parameters of frozen layers are `FrozenParam`s, a
  subclass of `nnx.Param` (so they are imported, saved and restored like any
  parameter), and the trunk applies `jax.lax.stop_gradient` right after the
  last frozen stage, so no backward pass is computed through the frozen
  part. `frozen_filter()` (the `FrozenParam` type: it matches at any depth
  of the model holding the backbone) keeps them out of the optimizer:

    trainable = nnx.All(nnx.Param, nnx.Not(backbone.frozen_filter()))

  VGG16 freezes conv1_x and conv2_x, the seed's first 10 layers of
  `features` (fixed_blocks does not apply to it).

Dtypes: parameters are stored in `param_dtype` (float32); `dtype` is the
compute dtype (float32 or bfloat16) of convolutions, matmuls and
normalization outputs; GroupNorm statistics are reduced in float32. Outputs
have the compute dtype.

Initialization for training from scratch follows torchvision: convolutions
kaiming normal (fan_out, ReLU gain, untruncated), BatchNorm/GroupNorm scale 1
and bias 0, BatchNorm running mean 0 and variance 1, VGG linear layers normal
(0, 0.01) with zero bias.

Parameter names follow the torch module trees (conv1, bn1, layer1.0.conv1,
layer1.0.downsample.0, ...; VGG uses caffe names conv1_1 .. conv5_3, fc6,
fc7), so `frcnn_jax.weights` maps a torch state dict one to one. Normalization
layers are called bn* whichever `norm` is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from frcnn_jax.modeling.layers import apply_conv_norm
from frcnn_jax.modeling.layers import conv
from frcnn_jax.modeling.layers import conv_extent
from frcnn_jax.modeling.layers import freeze_params
from frcnn_jax.modeling.layers import FrozenBatchNorm
from frcnn_jax.modeling.layers import FrozenParam
from frcnn_jax.modeling.layers import FrozenStat
from frcnn_jax.modeling.layers import linear_kernel_init
from frcnn_jax.modeling.layers import make_norm
from frcnn_jax.modeling.layers import max_pool
from frcnn_jax.modeling.layers import NORMS
from frcnn_jax.modeling.layers import pool_output_size
from frcnn_jax.modeling.layers import zero_outside

Array = jax.Array
Dtype = Any

RESNET_STAGE_BLOCKS = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
RESNET_WIDTHS = (64, 128, 256, 512)  # bottleneck planes; outputs are 4x.
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_STAGE_CONVS = (2, 2, 3, 3, 3)
BACKBONE_NAMES = ("resnet50", "resnet101", "resnet152", "vgg16", "tiny_resnet")


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 -> 1x1 residual block, output channels 4 * planes."""
  expansion = 4

  def __init__(self, in_features: int, planes: int, stride: int, *,
               stride_in_1x1: bool, norm: str, gn_groups: int, dtype: Dtype,
               param_dtype: Dtype, rngs: nnx.Rngs):
    out_features = planes * self.expansion
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.strides = (s1, s3)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(gn_groups=gn_groups, **kw)
    self.conv1 = conv(in_features, planes, 1, s1, padding=0, **kw)
    self.bn1 = make_norm(norm, planes, **nkw)
    self.conv2 = conv(planes, planes, 3, s3, padding=1, **kw)
    self.bn2 = make_norm(norm, planes, **nkw)
    self.conv3 = conv(planes, out_features, 1, 1, padding=0, **kw)
    self.bn3 = make_norm(norm, out_features, **nkw)
    if stride != 1 or in_features != out_features:
      self.downsample = nnx.List([
          conv(in_features, out_features, 1, stride, padding=0, **kw),
          make_norm(norm, out_features, **nkw)])
    else:
      self.downsample = None

  def __call__(self, x: Array, extent: Array | None = None
               ) -> tuple[Array, Array | None]:
    """``(x [B,H,W,C], extent [B,2] or None) -> (y, extent of y)``.

    With an extent, the 3x3 conv's input is zeroed outside it (1x1 convs
    and the pointwise rest need nothing) and GroupNorm takes its statistics
    inside it (see ``layers.zero_outside``).
    """
    s1, s3 = self.strides
    e1 = None if extent is None else conv_extent(extent, 1, s1, 0)
    out = jax.nn.relu(apply_conv_norm(self.conv1, self.bn1, x, e1))
    out = zero_outside(out, e1)
    e2 = None if extent is None else conv_extent(e1, 3, s3, 1)
    out = jax.nn.relu(apply_conv_norm(self.conv2, self.bn2, out, e2))
    out = apply_conv_norm(self.conv3, self.bn3, out, e2)
    shortcut = x if self.downsample is None else apply_conv_norm(
        *self.downsample, x, e2)
    return jax.nn.relu(out + shortcut.astype(out.dtype)), e2


class BasicBlock(nnx.Module):
  """3x3 -> 3x3 residual block (stride on the first conv)."""
  expansion = 1

  def __init__(self, in_features: int, planes: int, stride: int, *,
               stride_in_1x1: bool, norm: str, gn_groups: int, dtype: Dtype,
               param_dtype: Dtype, rngs: nnx.Rngs):
    del stride_in_1x1  # No 1x1 conv in a basic block.
    self.stride = stride
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(gn_groups=gn_groups, **kw)
    self.conv1 = conv(in_features, planes, 3, stride, padding=1, **kw)
    self.bn1 = make_norm(norm, planes, **nkw)
    self.conv2 = conv(planes, planes, 3, 1, padding=1, **kw)
    self.bn2 = make_norm(norm, planes, **nkw)
    if stride != 1 or in_features != planes:
      self.downsample = nnx.List([
          conv(in_features, planes, 1, stride, padding=0, **kw),
          make_norm(norm, planes, **nkw)])
    else:
      self.downsample = None

  def __call__(self, x: Array, extent: Array | None = None
               ) -> tuple[Array, Array | None]:
    """As :meth:`Bottleneck.__call__` (both convs are 3x3)."""
    e1 = None if extent is None else conv_extent(extent, 3, self.stride, 1)
    out = jax.nn.relu(apply_conv_norm(self.conv1, self.bn1,
                                      zero_outside(x, extent), e1))
    out = apply_conv_norm(self.conv2, self.bn2, zero_outside(out, e1), e1)
    shortcut = x if self.downsample is None else apply_conv_norm(
        *self.downsample, x, e1)
    return jax.nn.relu(out + shortcut.astype(out.dtype)), e1


BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}


class ResNet(nnx.Module):
  """A ResNet split C4-style into `trunk` (stride 16) and `head` (stage 4).

  Attributes:
    trunk_channels: channels of the trunk output (1024 for ResNet-50/101/152).
    head_channels: channels of the head output (2048).
    stride: 16, the trunk's feature stride.
    frozen_names: top-level module names whose parameters are frozen.
  """

  def __init__(self, *, block: str = "bottleneck",
               stage_blocks: Sequence[int] = (3, 4, 6, 3),
               widths: Sequence[int] = RESNET_WIDTHS,
               stride_in_1x1: bool = False, norm: str = "frozen_bn",
               fixed_blocks: int = 1, gn_groups: int = 32,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the network.

    Args:
      block: 'bottleneck' (ResNet-50/101/152) or 'basic' (tiny network).
      stage_blocks: blocks in layer1..layer4.
      widths: planes of layer1..layer4 (bottleneck outputs are 4x); the stem
        conv has widths[0] channels.
      stride_in_1x1: caffe-style (True) or torchvision-style (False) stride
        placement and stem max pool; see the module docstring.
      norm: 'frozen_bn' or 'group'.
      fixed_blocks: -1..3; conv1/bn1 plus layer1..layer{fixed_blocks} are
        frozen (-1: nothing frozen).
      gn_groups: GroupNorm groups (at most).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: initialization keys.
    """
    if block not in BLOCKS:
      raise ValueError(f"block must be one of {tuple(BLOCKS)}, got {block!r}")
    if len(stage_blocks) != 4 or len(widths) != 4:
      raise ValueError("stage_blocks and widths need 4 entries (layer1..4), got "
                       f"{tuple(stage_blocks)} and {tuple(widths)}")
    if not -1 <= fixed_blocks <= 3:
      raise ValueError(f"fixed_blocks must be in -1..3, got {fixed_blocks}")
    if norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    block_cls = BLOCKS[block]
    self.block = block
    self.stage_blocks = tuple(int(b) for b in stage_blocks)
    self.widths = tuple(int(w) for w in widths)
    self.stride_in_1x1 = bool(stride_in_1x1)
    self.norm = norm
    self.fixed_blocks = int(fixed_blocks)
    self.dtype = dtype
    self.stride = 16
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.conv1 = conv(3, self.widths[0], 7, 2, padding=3, **kw)
    self.bn1 = make_norm(norm, self.widths[0], gn_groups=gn_groups, **kw)
    in_features = self.widths[0]
    for i, (n, planes) in enumerate(zip(self.stage_blocks, self.widths)):
      stage = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        stage.append(block_cls(in_features, planes, stride,
                               stride_in_1x1=self.stride_in_1x1, norm=norm,
                               gn_groups=gn_groups, **kw))
        in_features = planes * block_cls.expansion
      setattr(self, f"layer{i + 1}", nnx.List(stage))
    self.trunk_channels = self.widths[2] * block_cls.expansion
    self.head_channels = self.widths[3] * block_cls.expansion
    if self.fixed_blocks < 0:
      self.frozen_names = ()
    else:
      self.frozen_names = ("conv1", "bn1") + tuple(
          f"layer{i}" for i in range(1, self.fixed_blocks + 1))
    for name in self.frozen_names:
      freeze_params(getattr(self, name))

  def frozen_filter(self) -> Any:
    """nnx filter matching exactly the frozen parameters (`FrozenParam`).

    Matches at any depth, e.g. on a detector holding the backbone:
    `nnx.All(nnx.Param, nnx.Not(model.backbone.frozen_filter()))`.
    """
    return FrozenParam

  def _stem(self, x: Array, extent: Array | None):
    e = None if extent is None else conv_extent(extent, 7, 2, 3)
    x = jax.nn.relu(apply_conv_norm(self.conv1, self.bn1,
                                    x.astype(self.dtype), e))
    x = zero_outside(x, e)
    pool = (0, True) if self.stride_in_1x1 else (1, False)
    x = max_pool(x, 3, 2, padding=pool[0], ceil_mode=pool[1])
    if e is not None:
      e = pool_output_size(e, 3, 2, pool[0], pool[1])
    return x, e

  def trunk(self, x: Array, extent: Array | None = None) -> Array:
    """images [B,H,W,3] -> features [B,h,w,trunk_channels] (stride 16).

    ``extent`` [B, 2] int32: each image's size on the canvas (None: no
    masking, the features depend on the canvas). With it, every activation
    inside each image's own feature map (``trunk_output_size``) is what the
    image alone gives, and the features outside are 0. Gradients stop after
    the last frozen stage (stem + layer1..fixed_blocks).
    """
    stages = [self._stem, self.layer1, self.layer2, self.layer3]
    num_frozen = self.fixed_blocks + 1  # The stem counts as one stage.
    for k, stage in enumerate(stages):
      if isinstance(stage, nnx.List):
        for blk in stage:
          x, extent = blk(x, extent)
      else:
        x, extent = stage(x, extent)
      if k + 1 == num_frozen:
        x = jax.lax.stop_gradient(x)
    return zero_outside(x, extent)

  def head(self, x: Array, *, train: bool = False,
           key: Array | None = None) -> Array:
    """pooled [R,P,P,trunk_channels] -> [R,head_channels]: layer4, mean H, W.

    `train` and `key` are accepted for interface symmetry with VGG16 and are
    unused (no dropout; frozen BN is the same in training and inference).
    """
    del train, key
    x = x.astype(self.dtype)
    for blk in self.layer4:
      x, _ = blk(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------
# VGG16
# ----------------------------------------------------------------------------


class VGG16(nnx.Module):
  """VGG16 split as the seed: trunk conv1_1..conv5_3, head fc6/fc7.

  The head flattens the pooled [R,P,P,C] features in (h, w, c) order, so
  fc6's kernel rows are in that order; torch's fc6 (classifier.0) flattens
  (c, h, w), and `frcnn_jax.weights` permutes its rows at import. The head
  output equals torch's for the same pooled features.

  Attributes:
    trunk_channels: widths[-1] (512).
    head_channels: fc_dim (4096).
    stride: 16.
    frozen_names: conv1_1, conv1_2, conv2_1, conv2_2 (with frozen_stages=2).
  """

  def __init__(self, *, widths: Sequence[int] = VGG16_WIDTHS,
               fc_dim: int = 4096, pool_size: int = 7,
               dropout_rate: float = 0.5, frozen_stages: int = 2,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the network.

    Args:
      widths: channels of the five conv stages.
      fc_dim: width of fc6 and fc7.
      pool_size: P, the RoI pooling size the head expects (fc6 has
        P * P * widths[-1] inputs).
      dropout_rate: dropout after fc6 and fc7 when training (torchvision 0.5).
      frozen_stages: conv stages frozen (the seed: 2, i.e. conv1_x, conv2_x).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: initialization keys.
    """
    if len(widths) != 5:
      raise ValueError(f"VGG16 needs 5 stage widths, got {tuple(widths)}")
    if not 0 <= frozen_stages <= 5:
      raise ValueError(f"frozen_stages must be in 0..5, got {frozen_stages}")
    self.widths = tuple(int(w) for w in widths)
    self.fc_dim = int(fc_dim)
    self.pool_size = int(pool_size)
    self.dropout_rate = float(dropout_rate)
    self.frozen_stages = int(frozen_stages)
    self.dtype = dtype
    self.stride = 16
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv_names = []
    in_features = 3
    for s, (n, width) in enumerate(zip(VGG16_STAGE_CONVS, self.widths)):
      for i in range(n):
        name = f"conv{s + 1}_{i + 1}"
        setattr(self, name, conv(in_features, width, 3, 1, padding=1,
                                 use_bias=True, **kw))
        self.conv_names.append(name)
        in_features = width
    self.conv_names = tuple(self.conv_names)
    lin = dict(kernel_init=linear_kernel_init,
               bias_init=jax.nn.initializers.zeros, **kw)
    self.fc6 = nnx.Linear(self.pool_size * self.pool_size * self.widths[-1],
                          self.fc_dim, **lin)
    self.fc7 = nnx.Linear(self.fc_dim, self.fc_dim, **lin)
    self.dropout = nnx.Dropout(self.dropout_rate)  # Key given at call time.
    self.trunk_channels = self.widths[-1]
    self.head_channels = self.fc_dim
    self.frozen_names = tuple(
        n for n in self.conv_names if int(n[4]) <= self.frozen_stages)
    for name in self.frozen_names:
      freeze_params(getattr(self, name))

  def frozen_filter(self) -> Any:
    """nnx filter matching exactly the frozen parameters (see ResNet)."""
    return FrozenParam

  def trunk(self, x: Array, extent: Array | None = None) -> Array:
    """images [B,H,W,3] -> features [B,h,w,widths[-1]], h = floor^4(H/2);
    every conv's input is zeroed outside the extent (see ResNet.trunk)."""
    x = x.astype(self.dtype)
    for s, n in enumerate(VGG16_STAGE_CONVS):
      for i in range(n):
        conv_ = getattr(self, f"conv{s + 1}_{i + 1}")
        x = jax.nn.relu(conv_(zero_outside(x, extent)))
      if s < 4:
        x = max_pool(zero_outside(x, extent), 2, 2, padding=0,
                     ceil_mode=False)
        if extent is not None:
          extent = extent // 2
      if s + 1 == self.frozen_stages:
        x = jax.lax.stop_gradient(x)
    return zero_outside(x, extent)

  def head(self, x: Array, *, train: bool = False,
           key: Array | None = None) -> Array:
    """pooled [R,P,P,C] -> [R,fc_dim]: fc6, ReLU, dropout, fc7, ReLU, dropout.

    Args:
      x: pooled RoI features.
      train: apply dropout (inverted: kept units scaled by 1 / (1 - rate)).
      key: PRNG key for the two dropout masks; required when train and the
        rate is > 0. The masks are a pure function of the key, so the jitted
        train step is deterministic given its key. No RNG state is stored in
        the module.
    """
    if x.shape[1:] != (self.pool_size, self.pool_size, self.widths[-1]):
      raise ValueError(f"VGG16 head expects [R,{self.pool_size},"
                       f"{self.pool_size},{self.widths[-1]}], got {x.shape}")
    use_dropout = train and self.dropout_rate > 0
    if use_dropout and key is None:
      raise ValueError("VGG16.head(train=True) needs a dropout `key`")
    k6, k7 = jax.random.split(key) if use_dropout else (None, None)
    x = x.astype(self.dtype).reshape(x.shape[0], -1)
    x = jax.nn.relu(self.fc6(x))
    x = self.dropout(x, deterministic=not use_dropout, rngs=k6)
    x = jax.nn.relu(self.fc7(x))
    x = self.dropout(x, deterministic=not use_dropout, rngs=k7)
    return x


Backbone = ResNet | VGG16


# ----------------------------------------------------------------------------
# Config and builder
# ----------------------------------------------------------------------------


def default_backbone_config(name: str = "resnet101") -> ml_collections.ConfigDict:
  """The `backbone` config sub-dict, with defaults suited to `name`.

  Fields:
    name: 'resnet50' | 'resnet101' | 'resnet152' | 'vgg16' | 'tiny_resnet'.
    stride_in_1x1: stride on the bottleneck 1x1 conv + caffe max pool (True)
      or torchvision layout (False). Default: True for resnet101 (the seed's
      caffe-converted resnet101_caffe.pth), False otherwise (only torchvision
      weights exist for ResNet-50/152).
    norm: 'frozen_bn' (default; pretrained nets) or 'group' (default for
      tiny_resnet, which trains from scratch). Ignored by vgg16.
    fixed_blocks: the seed's RESNET.FIXED_BLOCKS: 1 (default) freezes
      conv1/bn1 and layer1; 0..3; -1 freezes nothing (default for
      tiny_resnet). Ignored by vgg16 (conv1_x, conv2_x always frozen).
    gn_groups: GroupNorm groups (at most; 32).
    dropout_rate: VGG16 fc6/fc7 dropout (0.5, torchvision's).
    tiny_widths: tiny_resnet planes per stage (16, 32, 64, 128).
    tiny_blocks: tiny_resnet basic blocks per stage (1, 1, 1, 1).

  Pretrained weights are chosen with the top-level `config.init_from` /
  `config.init_from_kind` (see frcnn_jax.weights.initialize_model), not here.
  """
  if name not in BACKBONE_NAMES:
    raise ValueError(f"backbone name must be one of {BACKBONE_NAMES}, got {name!r}")
  cfg = ml_collections.ConfigDict()
  cfg.name = name
  cfg.stride_in_1x1 = name == "resnet101"
  cfg.norm = "group" if name == "tiny_resnet" else "frozen_bn"
  cfg.fixed_blocks = -1 if name == "tiny_resnet" else 1
  cfg.gn_groups = 32
  cfg.dropout_rate = 0.5
  cfg.tiny_widths = (16, 32, 64, 128)
  cfg.tiny_blocks = (1, 1, 1, 1)
  return cfg


def build_backbone(backbone_config: ml_collections.ConfigDict, *,
                   dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
                   param_dtype: Dtype = jnp.float32) -> Backbone:
  """Builds the backbone the config names (weights: fresh initialization).

  Args:
    backbone_config: fields as `default_backbone_config`.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16).
    rngs: initialization keys (`params` stream).
    param_dtype: storage dtype of parameters (float32).

  Returns:
    A `ResNet` or `VGG16` with `trunk`, `head`, `trunk_channels`,
    `head_channels`, `stride`, `frozen_filter`.
  """
  c = backbone_config
  name = c.name
  gn_groups = int(c.get("gn_groups", 32))
  if name in RESNET_STAGE_BLOCKS:
    return ResNet(block="bottleneck", stage_blocks=RESNET_STAGE_BLOCKS[name],
                  widths=RESNET_WIDTHS, stride_in_1x1=bool(c.stride_in_1x1),
                  norm=c.norm, fixed_blocks=int(c.fixed_blocks),
                  gn_groups=gn_groups, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)
  if name == "tiny_resnet":
    return ResNet(block="basic", stage_blocks=tuple(c.tiny_blocks),
                  widths=tuple(c.tiny_widths),
                  stride_in_1x1=bool(c.stride_in_1x1), norm=c.norm,
                  fixed_blocks=int(c.fixed_blocks), gn_groups=gn_groups,
                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if name == "vgg16":
    return VGG16(dropout_rate=float(c.get("dropout_rate", 0.5)), dtype=dtype,
                 param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"backbone name must be one of {BACKBONE_NAMES}, got {name!r}")


def trunk_output_size(backbone: Backbone, height, width):
  """(h, w) of `backbone.trunk` for an H x W input, from PyTorch's formulas.

  ``height`` and ``width`` are Python ints (canvas shapes) or integer arrays
  (per-image extents on a canvas, traced): the trunk's masks follow the same
  arithmetic layer by layer.
  """
  def one(n):
    if isinstance(backbone, VGG16):
      for _ in range(4):
        n = n // 2
      return n
    n = conv_extent(n, 7, 2, 3)
    if backbone.stride_in_1x1:
      n = pool_output_size(n, 3, 2, 0, ceil_mode=True)
    else:
      n = pool_output_size(n, 3, 2, 1, ceil_mode=False)
    for _ in range(2):  # layer2, layer3: stride 2 (1x1 pad 0 or 3x3 pad 1).
      n = conv_extent(n, 3, 2, 1)
    return n
  return one(height), one(width)


__all__ = [
    "BACKBONE_NAMES", "Backbone", "BasicBlock", "Bottleneck", "FrozenBatchNorm",
    "FrozenParam", "FrozenStat", "ResNet", "VGG16", "build_backbone",
    "default_backbone_config", "freeze_params", "max_pool", "pool_output_size",
    "trunk_output_size",
]
