"""Faster R-CNN with a Feature Pyramid Network: torchvision's
``fasterrcnn_resnet50_fpn`` (v1) and ``fasterrcnn_resnet50_fpn_v2`` (v2).

Shapes::

  B  images;  Hc, Wc  canvas (multiples of 32);  L = 5 levels P2..P6
  N  anchors of all levels;  M  gt slots;  P  proposals per image
  R  sampled RoIs per image (training);  K  classes incl. background
  Dt  detections per image

The interface is :class:`frcnn_jax.modeling.detector.FasterRCNN`'s:
``loss(batch, key) -> (total, aux)`` with the same loss names and
``predict(images, im_info) -> dict`` with boxes in ORIGINAL image pixels in
the inclusive convention (``w = x2 - x1 + 1``), so train_lib and eval_lib run
it unchanged, and ``model.backbone`` is a ResNet whose ``frozen_filter``
picks the frozen parameters (``detector.split_model``).

Boxes inside the model are torchvision's (no +1): the batch's inclusive gt
boxes become ``x2 + 1, y2 + 1`` on entry; detections leave as torchvision's
divided by ``im_info``'s scale with ``x2 - 1, y2 - 1`` (the same box in our
convention; COCO's ``[x, y, w, h]`` of it is torchvision's).

What matches torchvision: for one image, given the same resized image (see
``data.resize='torchvision'``) and the same weights, the RPN proposals, box
head outputs and the final detections are torchvision's (its float32
arithmetic, its anchor strides, per-level top-n, NMS that never crosses
levels, small-box removal, MultiScaleRoIAlign and post-processing), on any
canvas (``fpn.mask_canvas``, see :mod:`frcnn_jax.modeling.fpn`). Training
follows torchvision's targets, sampling and loss normalisation
(:mod:`frcnn_jax.modeling.targets_fpn`) with frozen BatchNorm statistics
everywhere (v2's BatchNorm layers keep their statistics; their scale and bias
train). Differences are listed in README "FPN and torchvision models".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import fpn as fpn_lib
from frcnn_jax.modeling import preprocessing
from frcnn_jax.modeling import roi_heads_fpn
from frcnn_jax.modeling import rpn_fpn
from frcnn_jax.modeling import targets_fpn
from ops import boxes as box_ops
from ops import multiscale_roi_align as msra
from ops import pallas_nms

VARIANTS = ("v1", "v2")
ROI_SCALES = (0.25, 0.125, 0.0625, 0.03125)   # P2..P5


@dataclasses.dataclass(frozen=True)
class FPNRPNSettings:
  """torchvision's ``rpn_*`` arguments (pre-NMS top-n is per level)."""
  pre_nms_top_n: int = 2000
  post_nms_top_n: int = 2000
  nms_thresh: float = 0.7
  test_pre_nms_top_n: int = 1000
  test_post_nms_top_n: int = 1000
  test_nms_thresh: float = 0.7
  min_size: float = 1e-3
  score_thresh: float = 0.0
  fg_iou: float = 0.7
  bg_iou: float = 0.3
  batch_size: int = 256
  fg_fraction: float = 0.5
  beta: float = 1.0 / 9


@dataclasses.dataclass(frozen=True)
class FPNRoISettings:
  """torchvision's ``box_*`` arguments and the RoI pooling."""
  pooling_size: int = 7
  sampling_ratio: int = 2
  batch_size: int = 512
  fg_fraction: float = 0.25
  fg_iou: float = 0.5
  bg_iou: float = 0.5
  weights: tuple = box_ops.BOX_HEAD_WEIGHTS_TV
  beta: float = 1.0 / 9
  score_thresh: float = 0.05
  nms_thresh: float = 0.5
  max_detections: int = 100
  min_size: float = 1e-2


@dataclasses.dataclass(frozen=True)
class FPNSettings:
  num_classes: int
  variant: str = "v1"
  out_channels: int = 256
  anchor_sizes: tuple = (32, 64, 128, 256, 512)
  anchor_ratios: tuple = (0.5, 1.0, 2.0)
  representation_size: int = 1024
  head_convs: tuple = (256, 256, 256, 256)   # v2 only
  rpn_conv_depth: int = 1
  mask_canvas: bool = True
  pixel_mean: tuple = preprocessing.TORCHVISION_RGB_MEANS
  pixel_std: tuple = preprocessing.TORCHVISION_RGB_STDS
  bgr: bool = False
  dtype: Any = jnp.float32
  nms_impl: str = "jnp"   # The RPN's: 'jnp', 'auto', 'pallas' (same results).
  rpn: FPNRPNSettings = FPNRPNSettings()
  roi: FPNRoISettings = FPNRoISettings()


def tv_from_inclusive(boxes):
  """Our inclusive boxes -> torchvision's: ``x2 + 1, y2 + 1``."""
  return boxes + jnp.asarray([0.0, 0.0, 1.0, 1.0], boxes.dtype)


class FasterRCNNFPN(nnx.Module):
  """ResNet body -> FPN -> multi-level RPN -> MultiScaleRoIAlign -> box head."""

  def __init__(self, settings: FPNSettings, backbone_config, *,
               rngs: nnx.Rngs):
    s = settings
    if s.variant not in VARIANTS:
      raise ValueError(f"fpn variant must be one of {VARIANTS}, got "
                       f"{s.variant!r}")
    self.settings = s
    self.backbone = backbones.build_backbone(backbone_config, dtype=s.dtype,
                                             rngs=rngs)
    if not isinstance(self.backbone, backbones.ResNet):
      raise ValueError("the FPN models need a ResNet backbone, got "
                       f"{backbone_config.name!r}")
    v2 = s.variant == "v2"
    self.fpn = fpn_lib.FPN(fpn_lib.resnet_stage_channels(self.backbone),
                           s.out_channels, norm=v2, dtype=s.dtype, rngs=rngs)
    self.rpn = rpn_fpn.RPNHeadFPN(s.out_channels, len(s.anchor_ratios),
                                  s.rpn_conv_depth, dtype=s.dtype, rngs=rngs)
    p = s.roi.pooling_size
    if v2:
      self.box_head = roi_heads_fpn.ConvFCHead(
          s.out_channels, p, s.head_convs, s.representation_size,
          dtype=s.dtype, rngs=rngs)
    else:
      self.box_head = roi_heads_fpn.TwoMLPHead(
          s.out_channels, p, s.representation_size, dtype=s.dtype, rngs=rngs)
    self.box_predictor = roi_heads_fpn.FastRCNNPredictor(
        s.representation_size, s.num_classes, dtype=s.dtype, rngs=rngs)

  # -- shared pieces ---------------------------------------------------------

  def features(self, images, im_info):
    """``(levels [P2..P6], extents)``: the FPN outputs and per-image level
    extents (``[B, 2]`` each; the whole canvas without ``mask_canvas``)."""
    s = self.settings
    x = preprocessing.normalize(images, im_info, bgr=s.bgr,
                                pixel_mean=s.pixel_mean,
                                pixel_std=s.pixel_std, dtype=s.dtype)
    b, hc, wc = x.shape[:3]
    if s.mask_canvas:
      extent = fpn_lib.padded_extent(im_info)
    else:
      extent = jnp.broadcast_to(jnp.asarray([hc, wc], jnp.int32), (b, 2))
    lvl = fpn_lib.level_extents(extent)
    mask = s.mask_canvas
    feats = fpn_lib.resnet_stages(self.backbone, x, extent if mask else None)
    levels = self.fpn(feats, lvl if mask else None)
    return levels, extent, lvl

  def _rpn(self, levels, extent, lvl, im_info, train: bool):
    s = self.settings
    mask = s.mask_canvas
    logits, deltas = self.rpn(levels, lvl if mask else None)
    shapes = [tuple(int(d) for d in f.shape[1:3]) for f in levels]
    cells = rpn_fpn.cell_anchors(s.anchor_sizes, s.anchor_ratios)
    anchors, valid = jax.vmap(
        lambda e, *le: rpn_fpn.image_anchors(shapes, le, e, cells))(
            extent, *lvl)
    r = s.rpn
    sizes = [h * w * c.shape[0] for (h, w), c in zip(shapes, cells)]
    gen = lambda lg, d, a, v, i: rpn_fpn.fpn_proposals(
        lg, d, a, v, i, level_sizes=sizes,
        pre_nms_top_n=r.pre_nms_top_n if train else r.test_pre_nms_top_n,
        post_nms_top_n=r.post_nms_top_n if train else r.test_post_nms_top_n,
        nms_thresh=r.nms_thresh if train else r.test_nms_thresh,
        min_size=r.min_size, score_thresh=r.score_thresh,
        batched_nms_fn=pallas_nms.select_nms(s.nms_impl, batched=True))
    proposals = jax.vmap(gen)(jax.lax.stop_gradient(logits),
                              jax.lax.stop_gradient(deltas), anchors, valid,
                              im_info)
    return logits, deltas, anchors, valid, proposals

  def _box_head(self, levels, extent, lvl, rois, rois_valid):
    s = self.settings
    feats = levels[:4]
    if s.mask_canvas:
      feats = [jax.vmap(fpn_lib.replicate_edges)(f, e)
               for f, e in zip(feats, lvl[:4])]
    del extent
    pool = lambda r, v, *fs: msra.multiscale_roi_align(
        fs, r, valid=v, output_size=s.roi.pooling_size,
        sampling_ratio=s.roi.sampling_ratio, scales=ROI_SCALES)
    pooled = jax.vmap(pool)(jax.lax.stop_gradient(rois), rois_valid, *feats)
    b, n = rois.shape[:2]
    x = self.box_head(pooled.reshape((b * n,) + pooled.shape[2:]))
    logits, deltas = self.box_predictor(x)
    return logits.reshape(b, n, -1), deltas.reshape(b, n, -1, 4)

  # -- training --------------------------------------------------------------

  def loss(self, batch, key):
    """Losses of one training batch (torchvision's training forward).

    Args:
      batch: dict with ``image``, ``im_info``, ``gt_boxes`` (inclusive
        convention), ``gt_classes``, ``gt_valid``.
      key: ``jax.random`` key for the anchor and RoI sampling.

    Returns:
      ``(loss_total, aux)``: ``loss_rpn_cls`` (torchvision's
      loss_objectness), ``loss_rpn_box`` (loss_rpn_box_reg), ``loss_cls``
      (loss_classifier), ``loss_box`` (loss_box_reg), ``loss_total`` and
      counts for logging.
    """
    s = self.settings
    im_info = batch["im_info"].astype(jnp.float32)
    gt_boxes = tv_from_inclusive(batch["gt_boxes"].astype(jnp.float32))
    gt_valid = batch["gt_valid"].astype(bool)
    gt_classes = batch["gt_classes"].astype(jnp.int32)
    b = im_info.shape[0]
    k_rpn, k_roi = jax.random.split(key)
    levels, extent, lvl = self.features(batch["image"], im_info)
    logits, deltas, anchors, valid, (props, _, pvalid, _) = self._rpn(
        levels, extent, lvl, im_info, train=True)
    r = s.rpn
    rpn_t = jax.vmap(lambda k, a, v, g, gv: targets_fpn.rpn_targets(
        k, a, v, g, gv, batch_size=r.batch_size, fg_fraction=r.fg_fraction,
        fg_iou=r.fg_iou, bg_iou=r.bg_iou))(
            jax.random.split(k_rpn, b), anchors, valid, gt_boxes, gt_valid)
    loss_rpn_cls, loss_rpn_box = targets_fpn.rpn_losses(
        logits, deltas, rpn_t["labels"], rpn_t["bbox_targets"], r.beta)
    q = s.roi
    roi_t = jax.vmap(lambda k, p, pv, g, c, gv: targets_fpn.box_head_targets(
        k, p, pv, g, c, gv, batch_size=q.batch_size,
        fg_fraction=q.fg_fraction, fg_iou=q.fg_iou, bg_iou=q.bg_iou,
        weights=q.weights))(jax.random.split(k_roi, b), props, pvalid,
                            gt_boxes, gt_classes, gt_valid)
    cls_logits, box_deltas = self._box_head(levels, extent, lvl,
                                            roi_t["rois"], roi_t["valid"])
    idx = jnp.clip(roi_t["labels"], 0, box_deltas.shape[2] - 1)
    picked = jnp.take_along_axis(box_deltas, idx[..., None, None], 2)[..., 0, :]
    loss_cls, loss_box = targets_fpn.box_head_losses(cls_logits, picked,
                                                     roi_t, q.beta)
    total = loss_rpn_cls + loss_rpn_box + loss_cls + loss_box
    aux = dict(loss_rpn_cls=loss_rpn_cls, loss_rpn_box=loss_rpn_box,
               loss_cls=loss_cls, loss_box=loss_box, loss_total=total,
               num_fg_rois=jnp.sum(roi_t["labels"] > 0) / b,
               num_rpn_fg=jnp.sum(rpn_t["labels"] == 1) / b,
               num_proposals=jnp.sum(pvalid) / b)
    return total, aux

  # -- inference -------------------------------------------------------------

  def inference(self, images, im_info):
    """Every stage's test-time output (for tests and debugging).

    Returns:
      dict with ``proposals [B, P, 4]`` (torchvision convention,
      network-input pixels), ``proposal_scores``, ``proposal_valid``,
      ``class_logits [B, P, K]``, ``box_deltas [B, P, K, 4]``, ``levels``
      (P2..P6, ``[B, H_l, W_l, F]``) and the detections of
      :func:`roi_heads_fpn.postprocess_detections` (``boxes``, ``scores``,
      ``classes``, ``valid``, ``boxes_tv``). Under jit, what the caller
      drops is never computed (:meth:`predict`).
    """
    s = self.settings
    im_info = im_info.astype(jnp.float32)
    levels, extent, lvl = self.features(images, im_info)
    _, _, _, _, (props, pscores, pvalid, _) = self._rpn(
        levels, extent, lvl, im_info, train=False)
    cls_logits, box_deltas = self._box_head(levels, extent, lvl, props,
                                            pvalid)
    q = s.roi
    post = lambda p, v, c, d, i: roi_heads_fpn.postprocess_detections(
        p, v, c, d, i, weights=q.weights, score_thresh=q.score_thresh,
        nms_thresh=q.nms_thresh, max_detections=q.max_detections,
        min_size=q.min_size)
    dets = jax.vmap(post)(props, pvalid, cls_logits, box_deltas, im_info)
    return dict(dets, proposals=props, proposal_scores=pscores,
                proposal_valid=pvalid, class_logits=cls_logits,
                box_deltas=box_deltas, levels=levels)

  def predict(self, images, im_info):
    """Batched detections, as :meth:`FasterRCNN.predict`.

    Args:
      images: ``[B, Hc, Wc, 3]`` RGB, uint8 or float 0..255.
      im_info: ``[B, 3]`` (height, width, scale) of the real content.

    Returns:
      dict with ``boxes [B, Dt, 4]`` in ORIGINAL image pixels (inclusive
      convention), ``scores [B, Dt]``, ``classes [B, Dt] int32`` (1..K-1),
      ``valid [B, Dt] bool``.
    """
    out = self.inference(images, im_info)
    return {k: out[k] for k in ("boxes", "scores", "classes", "valid")}


# -- builder (reads the config) ------------------------------------------------

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def settings_from_config(config: ml_collections.ConfigDict,
                         num_classes: int) -> FPNSettings:
  """FPN detector settings from a config with ``model.arch='fpn'``.

  Reuses the C4 keys where torchvision has the same knob: ``rpn.*``
  (pre_nms_top_n is per level), ``test.rpn_*``, ``roi.batch_size``,
  ``fg_fraction``, ``fg_thresh`` (= bg_thresh_hi), ``pooling_size``,
  ``sampling_ratio``, ``bbox_normalize_stds`` (torchvision's weights are
  their inverses: (10, 10, 5, 5)), ``rpn.sigma`` / ``roi.sigma`` (beta =
  1 / sigma^2 = 1/9), ``test.*``; FPN-only ones are in ``config.fpn``.
  """
  f, m, r, q, t = (config.fpn, config.model, config.rpn, config.roi,
                   config.test)
  rpn = FPNRPNSettings(
      pre_nms_top_n=r.pre_nms_top_n, post_nms_top_n=r.post_nms_top_n,
      nms_thresh=r.nms_thresh, test_pre_nms_top_n=t.rpn_pre_nms_top_n,
      test_post_nms_top_n=t.rpn_post_nms_top_n,
      test_nms_thresh=t.rpn_nms_thresh, min_size=r.min_size,
      score_thresh=f.rpn_score_thresh, fg_iou=r.positive_overlap,
      bg_iou=r.negative_overlap, batch_size=r.batch_size,
      fg_fraction=r.fg_fraction, beta=1.0 / (r.sigma * r.sigma))
  roi = FPNRoISettings(
      pooling_size=q.pooling_size, sampling_ratio=q.sampling_ratio,
      batch_size=q.batch_size, fg_fraction=q.fg_fraction,
      fg_iou=q.fg_thresh, bg_iou=q.bg_thresh_hi,
      weights=tuple(1.0 / float(v) for v in q.bbox_normalize_stds),
      beta=1.0 / (q.sigma * q.sigma), score_thresh=t.score_thresh,
      nms_thresh=t.nms_thresh, max_detections=t.max_detections,
      min_size=f.box_min_size)
  v2 = f.variant == "v2"
  return FPNSettings(
      num_classes=num_classes, variant=f.variant,
      out_channels=f.out_channels, anchor_sizes=tuple(f.anchor_sizes),
      anchor_ratios=tuple(config.anchors.ratios),
      representation_size=f.representation_size,
      head_convs=tuple(f.head_convs),
      rpn_conv_depth=2 if v2 else 1, mask_canvas=f.mask_canvas,
      pixel_mean=tuple(m.pixel_mean), pixel_std=tuple(m.pixel_std),
      bgr=m.bgr, dtype=_DTYPES[m.dtype], nms_impl=m.nms_impl, rpn=rpn,
      roi=roi)


def build_fpn_detector(config: ml_collections.ConfigDict, num_classes: int,
                       *, rngs: nnx.Rngs | None = None) -> FasterRCNNFPN:
  """A freshly initialised FPN detector for ``config``."""
  if rngs is None:
    rngs = nnx.Rngs(config.seed)
  return FasterRCNNFPN(settings_from_config(config, num_classes),
                       config.backbone, rngs=rngs)
