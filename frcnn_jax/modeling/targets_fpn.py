"""Training targets and losses of torchvision's Faster R-CNN (the FPN models).

Written for ONE image with static shapes and masks (``jax.vmap``-ped by the
detector), except the losses, which take the whole batch because
torchvision normalises them over the batch.

Shapes::

  N  anchors (all levels);  M  gt slots (max_num_box), ``gt_valid`` marks
  real ones;  P  proposals;  R  sampled RoIs per image (512);  K  classes

Boxes are (x1, y1, x2, y2) float32, torchvision's convention (no +1).

torchvision's rules (``det_utils.Matcher``, ``BalancedPositiveNegativeSampler``,
``RegionProposalNetwork.assign_targets_to_anchors`` / ``compute_loss``,
``RoIHeads.select_training_samples``, ``fastrcnn_loss``):

* Matcher: each anchor / proposal takes its best gt; best IoU < low: -1
  (below), in [low, high): -2 (between), >= high: that gt. With
  ``allow_low_quality_matches`` (the RPN), every anchor that reaches some
  gt's best IoU (ties included) keeps its argmax gt even when below high.
* RPN: matched -> 1, below -> 0, between -> -1 (ignored); 256 anchors per
  image, at most ``int(256 * 0.5)`` positives, negatives fill the rest;
  targets ``encode`` with weights (1, 1, 1, 1).
* Box head: the gt boxes are appended to the proposals; fg/bg threshold 0.5
  (no low-quality matches); label = the gt's class, 0 below; 512 RoIs with
  at most ``int(512 * 0.25)`` positives; targets with weights (10, 10, 5, 5).
* Losses: RPN objectness = binary cross-entropy over the sampled anchors of
  the whole batch (mean); RPN box = smooth-L1 (beta 1/9) summed over the
  positives, divided by the number of sampled anchors of the batch; box
  head classification = cross-entropy mean over the batch's sampled RoIs;
  box regression = smooth-L1 (beta 1/9) of the labelled class's deltas
  summed over positives, divided by the number of sampled RoIs of the batch.

Differences, on purpose: padded gt rows and anchors outside the image's
padded extent never match; a gt whose best IoU with every anchor is 0 (it
overlaps no anchor) adds no low-quality match (torchvision would match
every anchor to it, all of them tying at 0); an image without gt has all
anchors / RoIs negative, as torchvision. Sampling draws from ``jax.random``
(same distribution as ``torch.randperm``, other numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from frcnn_jax.modeling import losses
from ops import boxes as box_ops
from ops import sampling

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(iou, row_valid, gt_valid, *, high: float, low: float,
          allow_low_quality_matches: bool):
  """torchvision's ``Matcher`` on an ``[N, M]`` IoU matrix (rows: anchors or
  proposals, columns: gt), transposed to our row-major layout.

  Args:
    iou: ``[N, M]``.
    row_valid: ``[N]`` bool; invalid rows are BELOW and never match.
    gt_valid: ``[M]`` bool; invalid columns never match.

  Returns:
    ``[N]`` int32: the matched gt slot, or -1 (below) / -2 (between).
  """
  ov = jnp.where(gt_valid[None, :], iou, -1.0)
  vals = jnp.max(ov, axis=1)
  best = jnp.argmax(ov, axis=1).astype(jnp.int32)
  low_quality = None
  if allow_low_quality_matches:
    low_quality = _low_quality(ov, row_valid, gt_valid)
  return _decide(vals, best, low_quality, row_valid, gt_valid, high, low)


def _low_quality(ov, row_valid, gt_valid):
  """``[N]`` bool: rows that reach some real gt's best IoU (ties included;
  a gt overlapping nothing adds none). ``ov`` is ``[N, M']``, -1 on
  invalid gt columns; the columns may be any subset of the gt."""
  per_gt = jnp.max(jnp.where(row_valid[:, None], ov, -1.0), axis=0)
  hit = (ov == per_gt[None, :]) & gt_valid[None, :] & (per_gt > 0)[None, :]
  return jnp.any(hit, axis=1)


def _decide(vals, best, low_quality, row_valid, gt_valid, high, low):
  """The Matcher's labels from each row's best IoU ``vals`` and gt ``best``."""
  out = jnp.where(vals < low, BELOW_LOW_THRESHOLD,
                  jnp.where(vals < high, BETWEEN_THRESHOLDS, best))
  if low_quality is not None:
    out = jnp.where(low_quality, best, out)
  return jnp.where(row_valid & jnp.any(gt_valid), out, BELOW_LOW_THRESHOLD)


def match_boxes(rows, row_valid, gt_boxes, gt_valid, *, high: float,
                low: float, allow_low_quality_matches: bool,
                chunk: int = 16):
  """:func:`match` of ``rows [N, 4]`` against ``gt_boxes [M, 4]`` with the
  IoU computed ``chunk`` gt slots at a time, up to the last real one.

  Same result as ``match(iou_tv(rows, gt_boxes), ...)`` (ties included:
  the first best gt slot wins), without forming the ``[N, M]`` matrix for
  every padded slot: a COCO image has a handful of boxes in its
  ``max_num_box`` (100) slots, and at 800x1333 ``N`` is ~270k anchors, where
  the full matrix and its reductions took ~0.4 s of a 9 s train step on
  the 2-core CPU. The loop is a ``while_loop`` over chunks (under ``vmap``
  it runs to the largest count of the batch).
  """
  n, m = rows.shape[0], gt_boxes.shape[0]
  pad = -(-m // chunk) * chunk - m
  gt_boxes = jnp.pad(gt_boxes, ((0, pad), (0, 0)))
  gt_valid = jnp.pad(gt_valid, (0, pad))
  last = jnp.max(jnp.where(gt_valid, jnp.arange(m + pad) + 1, 0))
  num_chunks = (last + chunk - 1) // chunk

  def body(c, state):
    best_val, best_idx, low_quality = state
    g = jax.lax.dynamic_slice_in_dim(gt_boxes, c * chunk, chunk)
    gv = jax.lax.dynamic_slice_in_dim(gt_valid, c * chunk, chunk)
    ov = jnp.where(gv[None, :], box_ops.iou_tv(rows, g), -1.0)
    val = jnp.max(ov, axis=1)
    idx = jnp.argmax(ov, axis=1).astype(jnp.int32) + c * chunk
    better = val > best_val           # earlier chunks win ties
    best_val = jnp.where(better, val, best_val)
    best_idx = jnp.where(better, idx, best_idx)
    if allow_low_quality_matches:
      low_quality = low_quality | _low_quality(ov, row_valid, gv)
    return best_val, best_idx, low_quality

  init = (jnp.full((n,), -1.0, jnp.float32), jnp.zeros((n,), jnp.int32),
          jnp.zeros((n,), bool))
  vals, best, low_quality = jax.lax.fori_loop(0, num_chunks, body, init)
  return _decide(vals, best,
                 low_quality if allow_low_quality_matches else None,
                 row_valid, gt_valid, high, low)


def rpn_targets(key, anchors, anchor_valid, gt_boxes, gt_valid, *,
                batch_size: int = 256, fg_fraction: float = 0.5,
                fg_iou: float = 0.7, bg_iou: float = 0.3,
                weights=box_ops.RPN_WEIGHTS_TV):
  """RPN labels (sampled) and regression targets of one image.

  Returns:
    dict with ``labels [N] int32`` (1 / 0 sampled, -1 not sampled) and
    ``bbox_targets [N, 4]`` (0 where not positive).
  """
  matched = match_boxes(anchors, anchor_valid, gt_boxes, gt_valid,
                        high=fg_iou, low=bg_iou,
                        allow_low_quality_matches=True)
  labels = jnp.where(matched >= 0, 1,
                     jnp.where(matched == BELOW_LOW_THRESHOLD, 0, -1))
  labels = jnp.where(anchor_valid, labels, -1).astype(jnp.int32)
  labels = sampling.subsample_labels(key, labels, batch_size, fg_fraction)
  targets = box_ops.encode_tv(gt_boxes[jnp.maximum(matched, 0)], anchors,
                              weights)
  targets = jnp.where((labels == 1)[:, None], targets, 0.0)
  return dict(labels=labels, bbox_targets=targets)


def _sample(key, positive, negative, num_samples: int, fg_fraction: float):
  """torchvision's sampler with static output: at most ``int(n * frac)``
  positives (distinct, random), then negatives up to ``n`` in total.

  Returns ``(indices [n], is_positive [n], valid [n])``; positives first.
  """
  kpos, kneg = jax.random.split(key)
  max_pos = int(num_samples * fg_fraction)
  pos_idx, pos_ok = sampling.choose_without_replacement(kpos, positive,
                                                         num_samples)
  pos_ok = pos_ok & (jnp.arange(num_samples) < max_pos)
  num_pos = jnp.sum(pos_ok.astype(jnp.int32))
  neg_idx, neg_ok = sampling.choose_without_replacement(kneg, negative,
                                                         num_samples)
  slot = jnp.arange(num_samples)
  from_neg = jnp.clip(slot - num_pos, 0, num_samples - 1)
  is_pos = slot < num_pos
  ok = jnp.where(is_pos, True, neg_ok[from_neg])
  idx = jnp.where(is_pos, pos_idx, neg_idx[from_neg])
  return jnp.where(ok, idx, 0), is_pos & ok, ok


def box_head_targets(key, proposals, proposal_valid, gt_boxes, gt_classes,
                     gt_valid, *, batch_size: int = 512,
                     fg_fraction: float = 0.25, fg_iou: float = 0.5,
                     bg_iou: float = 0.5,
                     weights=box_ops.BOX_HEAD_WEIGHTS_TV):
  """The box head's sampled RoIs of one image (gt boxes appended first).

  Returns:
    dict with ``rois [R, 4]``, ``labels [R] int32`` (0 background),
    ``bbox_targets [R, 4]`` (0 on background), ``valid [R]`` bool (sampled
    rows; fewer than R when candidates run out, as torchvision).
  """
  rois = jnp.concatenate([proposals, gt_boxes], 0)
  valid = jnp.concatenate([proposal_valid, gt_valid], 0)
  iou = box_ops.iou_tv(rois, gt_boxes)
  matched = match(iou, valid, gt_valid, high=fg_iou, low=bg_iou,
                  allow_low_quality_matches=False)
  safe = jnp.maximum(matched, 0)
  labels = jnp.where(matched >= 0, gt_classes[safe],
                     jnp.where(matched == BELOW_LOW_THRESHOLD, 0, -1))
  labels = jnp.where(valid, labels, -1)
  idx, _, ok = _sample(key, labels >= 1, labels == 0, batch_size,
                       fg_fraction)
  sel = rois[idx]
  lab = jnp.where(ok, labels[idx], 0).astype(jnp.int32)
  targets = box_ops.encode_tv(gt_boxes[safe[idx]], sel, weights)
  targets = jnp.where((lab > 0)[:, None], targets, 0.0)
  return dict(rois=jnp.where(ok[:, None], sel, 0.0), labels=lab,
              bbox_targets=targets, valid=ok)


def _smooth_l1_sum(pred, target, beta: float):
  """``F.smooth_l1_loss(reduction='none', beta)`` summed over the last axis:
  ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``."""
  one = jnp.ones((), jnp.float32)
  per = losses.smooth_l1(pred.astype(jnp.float32), target, one, one,
                         sigma=float(beta) ** -0.5)
  return jnp.sum(per, axis=-1)


def rpn_losses(logits, deltas, labels, targets, beta: float = 1.0 / 9):
  """``(loss_objectness, loss_rpn_box_reg)`` of a batch.

  Args:
    logits: ``[B, N]``; deltas ``[B, N, 4]``.
    labels: ``[B, N]`` (1 / 0 sampled, -1 not); targets ``[B, N, 4]``.
  """
  sampled = labels >= 0
  n = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
  x = logits.astype(jnp.float32)
  y = (labels == 1).astype(jnp.float32)
  bce = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
  loss_obj = jnp.sum(jnp.where(sampled, bce, 0.0)) / n
  box = _smooth_l1_sum(deltas, targets, beta)
  loss_box = jnp.sum(jnp.where(labels == 1, box, 0.0)) / n
  return loss_obj, loss_box


def box_head_losses(class_logits, box_deltas, t, beta: float = 1.0 / 9):
  """``(loss_classifier, loss_box_reg)`` of a batch, torchvision's
  ``fastrcnn_loss``.

  Args:
    class_logits: ``[B, R, K]``.
    box_deltas: ``[B, R, 4]``: the deltas of each RoI's labelled class.
    t: :func:`box_head_targets` batched (``labels``, ``bbox_targets``,
      ``valid`` ``[B, R, ...]``).
  """
  valid = t["valid"]
  loss_cls = losses.softmax_cross_entropy(class_logits, t["labels"], valid)
  n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  box = _smooth_l1_sum(box_deltas, t["bbox_targets"], beta)
  loss_box = jnp.sum(jnp.where(valid & (t["labels"] > 0), box, 0.0)) / n
  return loss_cls, loss_box
