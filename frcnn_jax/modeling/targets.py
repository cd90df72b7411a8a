"""Training targets: the seed's anchor target and proposal target layers.

Both are written for ONE image with fixed shapes and masks, and
``jax.vmap``-ped over the batch by the detector.

Shapes::

  N  anchors over the feature grid (H * W * A), all of them, inside or not
  M  ground-truth slots (max_num_box); `gt_valid` marks the real ones
  P  proposals from the RPN (post_nms_top_n); `valid` marks the real ones
  R  sampled RoIs per image (roi batch_size, 128)
  K  classes including background (0)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, inclusive
convention (w = x2 - x1 + 1). Labels use :class:`Label`.

Differences from the seed, on purpose:

* Padded ground-truth rows never match anything (the seed's zero rows can be
  sampled as background RoIs): invalid gt columns have overlap 0 and are
  excluded from the "best anchor of each gt" rule, and only valid gt boxes
  are appended to the proposals.
* The "inside" test uses ``im_info``'s real content size, so anchors over the
  canvas padding are ignored rather than trained as background.
* ``RPN_POSITIVE_WEIGHT < 0`` normalises by each image's own number of
  sampled anchors (the seed uses the last image's count for the whole batch).
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

from ops import boxes as box_ops
from ops import sampling


class Label(enum.IntEnum):
  IGNORE = -1
  NEGATIVE = 0
  POSITIVE = 1


def _masked_overlaps(boxes, gt_boxes, gt_valid):
  """IoU ``[len(boxes), M]`` with invalid gt columns set to 0."""
  return jnp.where(gt_valid[None, :], box_ops.iou(boxes, gt_boxes), 0.0)


def inside_anchors(anchors, im_info, allowed_border: float = 0.0):
  """Anchors lying inside the image (the seed's ``inds_inside``).

  Args:
    anchors: ``[N, 4]``.
    im_info: ``[3]`` (height, width, scale).
    allowed_border: how far (pixels) an anchor may stick out.

  Returns:
    ``[N]`` bool.
  """
  h, w = im_info[0], im_info[1]
  return ((anchors[:, 0] >= -allowed_border) &
          (anchors[:, 1] >= -allowed_border) &
          (anchors[:, 2] < w + allowed_border) &
          (anchors[:, 3] < h + allowed_border))


def anchor_labels(anchors, gt_boxes, gt_valid, im_info, *,
                  positive_overlap: float = 0.7,
                  negative_overlap: float = 0.3,
                  clobber_positives: bool = False,
                  allowed_border: float = 0.0):
  """Anchor labels before sampling, as ``_AnchorTargetLayer``.

  Inside anchors start as IGNORE; those whose best IoU with any gt is below
  ``negative_overlap`` become NEGATIVE; for every gt, the inside anchors that
  reach that gt's best IoU (ties included; a gt whose best IoU is 0 has none)
  become POSITIVE, as do anchors with IoU >= ``positive_overlap``.
  ``clobber_positives`` applies the negative rule last (the seed's
  ``RPN_CLOBBER_POSITIVES``), otherwise first. Outside anchors are IGNORE.

  Args:
    anchors: ``[N, 4]``.
    gt_boxes: ``[M, 4]``.
    gt_valid: ``[M]`` bool.
    im_info: ``[3]``.

  Returns:
    ``(labels [N] int32, argmax_gt [N] int32)``: the labels and each anchor's
    best-matching gt slot.
  """
  anchors, gt_boxes = jnp.asarray(anchors), jnp.asarray(gt_boxes)
  inside = inside_anchors(anchors, im_info, allowed_border)
  ov = _masked_overlaps(anchors, gt_boxes, gt_valid)          # [N, M]
  max_ov = jnp.max(ov, axis=1)
  argmax_gt = jnp.argmax(ov, axis=1).astype(jnp.int32)
  gt_max = jnp.max(jnp.where(inside[:, None], ov, 0.0), axis=0)  # [M]
  gt_max = jnp.where(gt_max == 0, 1e-5, gt_max)
  best_of_gt = jnp.any((ov == gt_max[None, :]) & gt_valid[None, :], axis=1)

  labels = jnp.full(max_ov.shape, Label.IGNORE, jnp.int32)
  if not clobber_positives:
    labels = jnp.where(max_ov < negative_overlap, Label.NEGATIVE, labels)
  labels = jnp.where(best_of_gt, Label.POSITIVE, labels)
  labels = jnp.where(max_ov >= positive_overlap, Label.POSITIVE, labels)
  if clobber_positives:
    labels = jnp.where(max_ov < negative_overlap, Label.NEGATIVE, labels)
  labels = jnp.where(inside, labels, Label.IGNORE)
  return labels, argmax_gt


def anchor_targets(key, anchors, gt_boxes, gt_valid, im_info, *,
                   batch_size: int = 256,
                   fg_fraction: float = 0.5,
                   positive_overlap: float = 0.7,
                   negative_overlap: float = 0.3,
                   clobber_positives: bool = False,
                   allowed_border: float = 0.0,
                   positive_weight: float = -1.0,
                   inside_weights=(1.0, 1.0, 1.0, 1.0)):
  """RPN training targets for one image.

  Labels from :func:`anchor_labels`, subsampled to at most ``batch_size``
  anchors with at most ``fg_fraction`` positives; regression targets of every
  anchor to its best gt (``encode``, no normalisation, as the seed).

  Args:
    key: ``jax.random`` key for the sampling.
    anchors: ``[N, 4]``; gt_boxes ``[M, 4]``; gt_valid ``[M]``; im_info ``[3]``.
    positive_weight: the seed's ``RPN_POSITIVE_WEIGHT``: < 0 weights every
      sampled anchor ``1 / num_sampled``; in (0, 1) weights positives
      ``p / num_pos`` and negatives ``(1 - p) / num_neg``.

  Returns:
    dict with ``labels [N] int32``, ``bbox_targets [N, 4]``,
    ``inside_weights [N, 4]`` (``inside_weights`` on positives, else 0) and
    ``outside_weights [N, 4]`` (the per-anchor normalisation).
  """
  labels, argmax_gt = anchor_labels(
      anchors, gt_boxes, gt_valid, im_info,
      positive_overlap=positive_overlap, negative_overlap=negative_overlap,
      clobber_positives=clobber_positives, allowed_border=allowed_border)
  labels = sampling.subsample_labels(key, labels, batch_size, fg_fraction)
  targets = box_ops.encode(gt_boxes[argmax_gt], anchors)
  pos = labels == Label.POSITIVE
  neg = labels == Label.NEGATIVE
  targets = jnp.where(pos[:, None], targets, 0.0)
  inside_w = jnp.where(pos[:, None], jnp.asarray(inside_weights, jnp.float32),
                       0.0)
  if positive_weight < 0:
    n = jnp.maximum(jnp.sum(labels >= 0), 1).astype(jnp.float32)
    pos_w = neg_w = 1.0 / n
  else:
    if not 0.0 < positive_weight < 1.0:
      raise ValueError(f"positive_weight must be < 0 or in (0, 1), got "
                       f"{positive_weight}")
    pos_w = positive_weight / jnp.maximum(jnp.sum(pos), 1)
    neg_w = (1.0 - positive_weight) / jnp.maximum(jnp.sum(neg), 1)
  outside = jnp.where(pos, pos_w, jnp.where(neg, neg_w, 0.0))
  outside_w = jnp.broadcast_to(outside[:, None], targets.shape)
  return dict(labels=labels, bbox_targets=targets, inside_weights=inside_w,
              outside_weights=outside_w.astype(jnp.float32))


def proposal_targets(key, proposals, proposal_valid, gt_boxes, gt_classes,
                     gt_valid, *,
                     batch_size: int = 128,
                     fg_fraction: float = 0.25,
                     fg_thresh: float = 0.5,
                     bg_thresh_hi: float = 0.5,
                     bg_thresh_lo: float = 0.0,
                     stds=(0.1, 0.1, 0.2, 0.2),
                     means=(0.0, 0.0, 0.0, 0.0),
                     inside_weights=(1.0, 1.0, 1.0, 1.0)):
  """RoI sampling for the box head, as ``_ProposalTargetLayer``.

  The valid gt boxes are appended to the proposals. A candidate is
  foreground when its best IoU with a gt is >= ``fg_thresh``, background when
  it is in ``[bg_thresh_lo, bg_thresh_hi)``. As the seed:

  * fg and bg exist: ``min(round(fg_fraction * R), #fg)`` distinct fg, the
    rest bg drawn with replacement;
  * only fg: R fg drawn with replacement; only bg: R bg with replacement;
  * neither (the seed raises): every output row is invalid.

  Regression targets are ``(encode(gt, roi) - means) / stds`` on fg rows.

  Args:
    key: ``jax.random`` key.
    proposals: ``[P, 4]``; proposal_valid ``[P]`` bool.
    gt_boxes: ``[M, 4]``; gt_classes ``[M]`` int32; gt_valid ``[M]`` bool.

  Returns:
    dict with ``rois [R, 4]``, ``labels [R] int32`` (0 = background),
    ``bbox_targets [R, 4]``, ``inside_weights [R, 4]``,
    ``outside_weights [R, 4]`` (1 where inside weight > 0), ``valid [R]``
    bool, and ``fg [R]`` bool. Fg rows come first.
  """
  gt_boxes, gt_classes = jnp.asarray(gt_boxes), jnp.asarray(gt_classes)
  rois = jnp.concatenate([proposals, gt_boxes], axis=0)       # [P + M, 4]
  valid = jnp.concatenate([proposal_valid, gt_valid], axis=0)
  ov = _masked_overlaps(rois, gt_boxes, gt_valid)
  max_ov = jnp.max(ov, axis=1)
  assign = jnp.argmax(ov, axis=1)
  fg = valid & (max_ov >= fg_thresh)
  bg = valid & (max_ov < bg_thresh_hi) & (max_ov >= bg_thresh_lo)
  num_fg = jnp.sum(fg)
  num_bg = jnp.sum(bg)

  k_fg, k_fg_r, k_bg_r = jax.random.split(key, 3)
  fg_idx, _ = sampling.choose_without_replacement(k_fg, fg, batch_size)
  fg_idx_r, _ = sampling.choose_with_replacement(k_fg_r, fg, batch_size)
  bg_idx_r, _ = sampling.choose_with_replacement(k_bg_r, bg, batch_size)
  fg_per_image = int(round(fg_fraction * batch_size))
  n_fg_rows = jnp.where(num_bg > 0, jnp.minimum(fg_per_image, num_fg),
                        jnp.where(num_fg > 0, batch_size, 0))
  slot = jnp.arange(batch_size)
  is_fg = slot < n_fg_rows
  idx = jnp.where(is_fg, jnp.where(num_bg > 0, fg_idx, fg_idx_r), bg_idx_r)
  out_valid = jnp.broadcast_to((num_fg + num_bg) > 0, (batch_size,))
  idx = jnp.where(out_valid, idx, 0)

  sel_rois = rois[idx]
  sel_gt = assign[idx]
  labels = jnp.where(is_fg & out_valid, gt_classes[sel_gt], 0).astype(
      jnp.int32)
  fg_rows = labels > 0
  targets = box_ops.encode(gt_boxes[sel_gt], sel_rois)
  targets = (targets - jnp.asarray(means, jnp.float32)) / jnp.asarray(
      stds, jnp.float32)
  targets = jnp.where(fg_rows[:, None], targets, 0.0)
  inside_w = jnp.where(fg_rows[:, None],
                       jnp.asarray(inside_weights, jnp.float32), 0.0)
  outside_w = (inside_w > 0).astype(jnp.float32)
  return dict(rois=sel_rois, labels=labels, bbox_targets=targets,
              inside_weights=inside_w, outside_weights=outside_w,
              valid=out_valid, fg=fg_rows)
