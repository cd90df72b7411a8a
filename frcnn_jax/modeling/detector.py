"""Faster R-CNN: the stages wired together, for training and for inference.

Shapes::

  B  images;  Hi, Wi  canvas (network input);  H, W = Hi/16, Wi/16 features
  A  anchors per cell;  N = H * W * A anchors;  M  gt slots (max_num_box)
  P  proposals per image;  R  sampled RoIs per image (training)
  K  classes including background;  Dt  detections per image (100)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, inclusive
convention (w = x2 - x1 + 1); only :meth:`FasterRCNN.predict` returns boxes
in original image pixels.

The batch is the data pipeline's dict (``image uint8 [B, Hi, Wi, 3]`` RGB,
``im_info [B, 3]``, ``gt_boxes [B, M, 4]``, ``gt_classes [B, M]``,
``gt_valid [B, M]``). Normalisation happens here, so the same data feeds
caffe-style (BGR, means only) and torchvision-style (RGB, mean/std) nets.
Per-image stages (proposals, targets, post-processing) are ``jax.vmap``-ped.
Everything is float32 except the network's convolutions and matmuls, which
run in ``settings.dtype`` (bfloat16 for mixed precision).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import detector_fpn
from frcnn_jax.modeling import losses
from frcnn_jax.modeling import preprocessing
from frcnn_jax.modeling import roi_heads
from frcnn_jax.modeling import rpn as rpn_lib
from frcnn_jax.modeling import targets
from ops import anchors as anchor_ops
from ops import pallas_nms

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box",
              "loss_total")


@dataclasses.dataclass(frozen=True)
class RPNSettings:
  """The seed's ``TRAIN.RPN_*`` (training) and ``TEST.RPN_*`` values."""
  conv_channels: int = 512
  pre_nms_top_n: int = 12000
  post_nms_top_n: int = 2000
  nms_thresh: float = 0.7
  min_size: float = 0.0
  test_pre_nms_top_n: int = 6000
  test_post_nms_top_n: int = 300
  test_nms_thresh: float = 0.7
  test_min_size: float = 0.0
  positive_overlap: float = 0.7
  negative_overlap: float = 0.3
  clobber_positives: bool = False
  batch_size: int = 256
  fg_fraction: float = 0.5
  positive_weight: float = -1.0
  allowed_border: float = 0.0
  sigma: float = 3.0


@dataclasses.dataclass(frozen=True)
class RoISettings:
  """The seed's ``TRAIN.*`` RoI sampling and ``POOLING_*`` values."""
  pooling_mode: str = "align"
  pooling_size: int = 7
  sampling_ratio: int = 0
  aligned: bool = False
  batch_size: int = 128
  fg_fraction: float = 0.25
  fg_thresh: float = 0.5
  bg_thresh_hi: float = 0.5
  bg_thresh_lo: float = 0.0
  stds: tuple = (0.1, 0.1, 0.2, 0.2)
  means: tuple = (0.0, 0.0, 0.0, 0.0)
  class_agnostic: bool = False
  sigma: float = 1.0


@dataclasses.dataclass(frozen=True)
class TestSettings:
  """The seed's ``TEST.NMS``, score threshold and ``max_per_image``."""
  nms_thresh: float = 0.3
  score_thresh: float = 0.0
  max_detections: int = 100


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  num_classes: int
  anchor_scales: tuple = (8, 16, 32)
  anchor_ratios: tuple = (0.5, 1, 2)
  feat_stride: int = 16
  pixel_mean: tuple = preprocessing.CAFFE_BGR_MEANS
  pixel_std: tuple = preprocessing.CAFFE_BGR_STDS
  bgr: bool = True
  dtype: Any = jnp.float32
  # How regression deltas become boxes: 'exact' (the inverse of the
  # encoding) or 'seed' (faster-rcnn.pytorch's bbox_transform_inv, one pixel
  # larger on x2, y2): see ops.boxes.decode.
  box_decode: str = "exact"
  # Zero everything outside each image's extent before layers that read
  # neighbours, so that detections do not depend on the canvas or the batch
  # (modeling/layers.py). Off only to measure what it costs.
  canvas_masks: bool = True
  # RPN NMS: 'jnp', 'auto' (the Pallas kernel on GPU/TPU, jnp on CPU) or
  # 'pallas' (see ops/pallas_nms.py).
  nms_impl: str = "jnp"
  rpn: RPNSettings = RPNSettings()
  roi: RoISettings = RoISettings()
  test: TestSettings = TestSettings()

  @property
  def num_anchors(self) -> int:
    return len(self.anchor_scales) * len(self.anchor_ratios)


class FasterRCNN(nnx.Module):
  """Backbone trunk -> RPN -> RoI pooling -> backbone head -> box predictor."""

  def __init__(self, settings: DetectorSettings, backbone_config, *,
               rngs: nnx.Rngs):
    self.settings = settings
    self.backbone = backbones.build_backbone(backbone_config,
                                             dtype=settings.dtype, rngs=rngs)
    self.rpn = rpn_lib.RPNHead(self.backbone.trunk_channels,
                               settings.num_anchors,
                               settings.rpn.conv_channels,
                               dtype=settings.dtype, rngs=rngs)
    self.box_predictor = roi_heads.BoxPredictor(
        self.backbone.head_channels, settings.num_classes,
        settings.roi.class_agnostic, dtype=settings.dtype, rngs=rngs)

  # -- shared pieces ---------------------------------------------------------

  def preprocess(self, images, im_info):
    """Normalised network input (see :func:`preprocessing.normalize`)."""
    s = self.settings
    return preprocessing.normalize(images, im_info, bgr=s.bgr,
                                   pixel_mean=s.pixel_mean,
                                   pixel_std=s.pixel_std, dtype=s.dtype)

  def anchors(self, feat_h: int, feat_w: int):
    """``[N, 4]`` anchors of a ``feat_h x feat_w`` map (a constant)."""
    s = self.settings
    base = anchor_ops.generate_anchors(s.feat_stride, s.anchor_ratios,
                                       s.anchor_scales)
    return jnp.asarray(anchor_ops.grid_anchors(feat_h, feat_w, s.feat_stride,
                                               base))

  def _features_and_rpn(self, images, im_info):
    """Trunk features, RPN outputs, anchors and each image's feature extent.

    The extent ``[B, 2]`` int32 is the size of the feature map the image
    alone would give (the seed runs one unpadded image at a time): anchors of
    cells outside it make no proposals and RoIs are pooled as from a map of
    that size.
    """
    extent = jnp.round(im_info[:, :2]).astype(jnp.int32)
    feats = self.backbone.trunk(
        self.preprocess(images, im_info),
        extent if self.settings.canvas_masks else None)
    feat_extent = jnp.stack(backbones.trunk_output_size(
        self.backbone, extent[:, 0], extent[:, 1]), axis=-1)
    logits, deltas = self.rpn(feats)
    anchors = self.anchors(feats.shape[1], feats.shape[2])
    return feats, logits, deltas, anchors, feat_extent

  def _proposals(self, logits, deltas, anchors, im_info, feat_extent,
                 feat_hw: tuple[int, int], train: bool):
    r = self.settings.rpn
    fg = jax.nn.softmax(logits, axis=-1)[..., 1]
    num_anchors = self.settings.num_anchors
    fh, fw = feat_hw
    gen = lambda s, d, i, e: rpn_lib.generate_proposals(
        s, d, anchors, i,
        pre_nms_top_n=r.pre_nms_top_n if train else r.test_pre_nms_top_n,
        post_nms_top_n=r.post_nms_top_n if train else r.test_post_nms_top_n,
        nms_thresh=r.nms_thresh if train else r.test_nms_thresh,
        min_size=r.min_size if train else r.test_min_size,
        nms_fn=pallas_nms.select_nms(self.settings.nms_impl),
        anchor_valid=rpn_lib.anchors_in_extent(fh, fw, num_anchors, e),
        decode_style=self.settings.box_decode)
    return jax.vmap(gen)(jax.lax.stop_gradient(fg),
                         jax.lax.stop_gradient(deltas), im_info, feat_extent)

  def _box_head(self, feats, rois, feat_extent, *, train: bool, key=None):
    r = self.settings.roi
    b, n = rois.shape[:2]
    pooled = roi_heads.pool_rois(
        feats, rois, mode=r.pooling_mode, output_size=r.pooling_size,
        spatial_scale=1.0 / self.settings.feat_stride,
        sampling_ratio=r.sampling_ratio, aligned=r.aligned,
        extent=feat_extent)
    pooled = pooled.reshape((b * n,) + pooled.shape[2:])
    x = self.backbone.head(pooled, train=train, key=key)
    scores, deltas = self.box_predictor(x)
    return scores.reshape(b, n, -1), deltas.reshape(b, n, -1, 4)

  # -- training --------------------------------------------------------------

  def loss(self, batch, key):
    """Losses of one training batch (the seed's forward in training mode).

    Args:
      batch: dict with ``image``, ``im_info``, ``gt_boxes``, ``gt_classes``,
        ``gt_valid`` (see the module docstring).
      key: ``jax.random`` key for anchor/RoI sampling and dropout.

    Returns:
      ``(loss_total, aux)`` with ``aux`` holding every entry of
      :data:`LOSS_NAMES` plus a few counts for logging.
    """
    s = self.settings
    im_info = batch["im_info"].astype(jnp.float32)
    gt_boxes = batch["gt_boxes"].astype(jnp.float32)
    gt_valid = batch["gt_valid"].astype(bool)
    gt_classes = batch["gt_classes"].astype(jnp.int32)
    b = im_info.shape[0]
    k_anchor, k_roi, k_head = jax.random.split(key, 3)

    feats, logits, deltas, anchors, feat_extent = self._features_and_rpn(
        batch["image"], im_info)
    proposals, _, proposal_valid = self._proposals(
        logits, deltas, anchors, im_info, feat_extent, feats.shape[1:3],
        train=True)
    r = s.rpn
    rpn_t = jax.vmap(lambda k, g, v, i: targets.anchor_targets(
        k, anchors, g, v, i, batch_size=r.batch_size,
        fg_fraction=r.fg_fraction, positive_overlap=r.positive_overlap,
        negative_overlap=r.negative_overlap,
        clobber_positives=r.clobber_positives,
        allowed_border=r.allowed_border,
        positive_weight=r.positive_weight))(
            jax.random.split(k_anchor, b), gt_boxes, gt_valid, im_info)
    loss_rpn_cls, loss_rpn_box = losses.rpn_losses(logits, deltas, rpn_t,
                                                   r.sigma)
    q = s.roi
    roi_t = jax.vmap(lambda k, p, pv, g, c, v: targets.proposal_targets(
        k, p, pv, g, c, v, batch_size=q.batch_size, fg_fraction=q.fg_fraction,
        fg_thresh=q.fg_thresh, bg_thresh_hi=q.bg_thresh_hi,
        bg_thresh_lo=q.bg_thresh_lo, stds=q.stds, means=q.means))(
            jax.random.split(k_roi, b), proposals, proposal_valid, gt_boxes,
            gt_classes, gt_valid)
    scores, box_deltas = self._box_head(feats, roi_t["rois"], feat_extent,
                                        train=True,
                                        key=k_head)
    box_deltas = roi_heads.select_class_deltas(box_deltas, roi_t["labels"])
    loss_cls, loss_box = losses.rcnn_losses(scores, box_deltas, roi_t,
                                            q.sigma)
    total = loss_rpn_cls + loss_rpn_box + loss_cls + loss_box
    aux = dict(loss_rpn_cls=loss_rpn_cls, loss_rpn_box=loss_rpn_box,
               loss_cls=loss_cls, loss_box=loss_box, loss_total=total,
               num_fg_rois=jnp.sum(roi_t["fg"]) / b,
               num_rpn_fg=jnp.sum(rpn_t["labels"] == 1) / b,
               num_proposals=jnp.sum(proposal_valid) / b)
    return total, aux

  # -- inference -------------------------------------------------------------

  def predict(self, images, im_info):
    """Batched detections (B > 1 works; the seed tests one image at a time).

    Args:
      images: ``[B, Hi, Wi, 3]`` RGB, uint8 or float 0..255.
      im_info: ``[B, 3]`` (height, width, scale) of the real content.

    Returns:
      dict with ``boxes [B, Dt, 4]`` in ORIGINAL image pixels (inclusive
      convention), ``scores [B, Dt]``, ``classes [B, Dt] int32`` (1..K-1),
      ``valid [B, Dt] bool``.
    """
    s = self.settings
    im_info = im_info.astype(jnp.float32)
    feats, logits, deltas, anchors, feat_extent = self._features_and_rpn(
        images, im_info)
    rois, _, rois_valid = self._proposals(logits, deltas, anchors, im_info,
                                          feat_extent, feats.shape[1:3],
                                          train=False)
    scores, box_deltas = self._box_head(feats, rois, feat_extent, train=False)
    probs = jax.nn.softmax(scores, axis=-1)
    t = s.test
    post = lambda r, v, p, d, i: roi_heads.postprocess_detections(
        r, v, p, d, i, stds=s.roi.stds, means=s.roi.means,
        nms_thresh=t.nms_thresh, score_thresh=t.score_thresh,
        max_detections=t.max_detections, decode_style=s.box_decode)
    return jax.vmap(post)(rois, rois_valid, probs, box_deltas, im_info)


# -- parameters: what training updates -----------------------------------------

def trainable_filter(model: FasterRCNN):
  """``nnx.Param`` minus the backbone's frozen parameters."""
  frozen = model.backbone.frozen_filter()
  return nnx.All(nnx.Param, nnx.Not(frozen))


def split_model(model):
  """``(graphdef, trainable params, rest)``."""
  return nnx.split(model, trainable_filter(model), ...)


# -- builders (the only place that reads the config) ---------------------------

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def settings_from_config(config: ml_collections.ConfigDict,
                         num_classes: int) -> DetectorSettings:
  """Plain, hashable detector settings from a frcnn-jax config."""
  m, a, r, q, t = (config.model, config.anchors, config.rpn, config.roi,
                   config.test)
  if m.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, "
                     f"got {m.dtype!r}")
  rpn = RPNSettings(
      conv_channels=r.conv_channels, pre_nms_top_n=r.pre_nms_top_n,
      post_nms_top_n=r.post_nms_top_n, nms_thresh=r.nms_thresh,
      min_size=r.min_size, test_pre_nms_top_n=t.rpn_pre_nms_top_n,
      test_post_nms_top_n=t.rpn_post_nms_top_n,
      test_nms_thresh=t.rpn_nms_thresh, test_min_size=t.rpn_min_size,
      positive_overlap=r.positive_overlap, negative_overlap=r.negative_overlap,
      clobber_positives=r.clobber_positives, batch_size=r.batch_size,
      fg_fraction=r.fg_fraction, positive_weight=r.positive_weight,
      allowed_border=r.allowed_border, sigma=r.sigma)
  roi = RoISettings(
      pooling_mode=q.pooling_mode, pooling_size=q.pooling_size,
      sampling_ratio=q.sampling_ratio, aligned=q.aligned,
      batch_size=q.batch_size, fg_fraction=q.fg_fraction,
      fg_thresh=q.fg_thresh, bg_thresh_hi=q.bg_thresh_hi,
      bg_thresh_lo=q.bg_thresh_lo, stds=tuple(q.bbox_normalize_stds),
      means=tuple(q.bbox_normalize_means), class_agnostic=q.class_agnostic,
      sigma=q.sigma)
  test = TestSettings(nms_thresh=t.nms_thresh, score_thresh=t.score_thresh,
                      max_detections=t.max_detections)
  return DetectorSettings(
      num_classes=num_classes, anchor_scales=tuple(a.scales),
      anchor_ratios=tuple(a.ratios), feat_stride=a.stride,
      pixel_mean=tuple(m.pixel_mean), pixel_std=tuple(m.pixel_std),
      bgr=m.bgr, dtype=_DTYPES[m.dtype], nms_impl=m.nms_impl,
      box_decode=m.get("box_decode", "exact"),
      canvas_masks=bool(m.get("canvas_masks", True)), rpn=rpn,
      roi=roi, test=test)


def build_detector(config: ml_collections.ConfigDict, num_classes: int, *,
                   rngs: nnx.Rngs | None = None) -> FasterRCNN:
  """A freshly initialised detector for ``config`` (seeded by config.seed).

  ``config.model.arch == 'fpn'`` builds torchvision's FPN model
  (:class:`detector_fpn.FasterRCNNFPN`, same ``loss`` / ``predict``).
  """
  if config.model.get("arch", "c4") == "fpn":
    return detector_fpn.build_fpn_detector(config, num_classes, rngs=rngs)
  if rngs is None:
    rngs = nnx.Rngs(config.seed)
  return FasterRCNN(settings_from_config(config, num_classes),
                    config.backbone, rngs=rngs)
