"""Box arithmetic: area, pairwise IoU, clipping, and the R-CNN box coding.

Convention (all of frcnn-jax): a box is ``(x1, y1, x2, y2)`` float32 in pixels,
with the seed's *inclusive-pixel* convention: a box covers the pixels
``x1..x2`` and ``y1..y2``, so ``w = x2 - x1 + 1`` and ``h = y2 - y1 + 1``.
A box with ``x2 = x1 - 1`` is empty; one with ``x2 < x1 - 1`` is "inverted"
and is treated as empty (zero width) by every function here.

Every function is pure ``jax.numpy``, shape-static, and works under ``jax.jit``
and ``jax.vmap``. Leading dimensions ``[...]`` broadcast where stated. The two
COCO format conversions (:func:`xyxy_to_xywh`, :func:`xywh_to_xyxy`) are the
host-side exception: NumPy float64, used where COCO's ``[x, y, w, h]`` enters
(the readers) and leaves (evaluation, dataset writers).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# Largest log-scale a decoded box may grow by: exp(dw) <= 1000/16, the same
# bound as Detectron's BBOX_XFORM_CLIP. Keeps exp() finite for wild deltas.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Smallest width/height used when a degenerate box must be divided by or
# log-ed; keeps encode() finite for empty or inverted boxes.
_MIN_SIZE = 1e-3


def widths_heights(boxes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Inclusive widths and heights, clamped at 0 for empty/inverted boxes.

  Args:
    boxes: ``[..., 4]`` float, ``(x1, y1, x2, y2)`` inclusive pixels.

  Returns:
    ``(w, h)``, each ``[...]``: ``max(x2 - x1 + 1, 0)``, ``max(y2 - y1 + 1, 0)``.
  """
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0] + 1.0, 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1] + 1.0, 0.0)
  return w, h


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Areas ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of ``[..., 4]`` boxes -> ``[...]``.

  Inverted boxes (``x2 < x1 - 1`` or ``y2 < y1 - 1``) have area 0.
  """
  w, h = widths_heights(boxes)
  return w * h


def iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """Pairwise intersection-over-union, as the seed's ``bbox_overlaps``.

  Args:
    boxes1: ``[N, 4]`` float32, inclusive-pixel ``(x1, y1, x2, y2)``.
    boxes2: ``[M, 4]`` float32, same convention.

  Returns:
    ``[N, M]`` float32 IoU in ``[0, 1]``. Intersections use the ``+1``
    convention (``iw = min(x2) - max(x1) + 1``). Pairs whose union is not
    positive (both boxes empty/inverted) and pairs involving NaN or infinite
    coordinates get IoU 0, never NaN. Masking padded rows is the caller's job
    (a padded all-zero box is a real 1x1 box here).
  """
  b1 = boxes1[:, None, :]
  b2 = boxes2[None, :, :]
  iw = jnp.maximum(
      jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0])
      + 1.0, 0.0)
  ih = jnp.maximum(
      jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1])
      + 1.0, 0.0)
  inter = iw * ih
  union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
  ok = union > 0
  out = inter / jnp.where(ok, union, 1.0)
  return jnp.where(ok & jnp.isfinite(out), out, 0.0)


def clip(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
  """Clips ``[..., 4]`` boxes to an image of ``height x width`` pixels.

  As the seed's ``clip_boxes``: x to ``[0, width - 1]``, y to
  ``[0, height - 1]``. ``height``/``width`` may be Python numbers or traced
  scalars (e.g. from ``im_info``), or arrays broadcasting against
  ``boxes[..., 0]``. NaN coordinates become 0 and infinities the nearest
  bound, so the result is always finite.
  """
  boxes = jnp.nan_to_num(boxes, nan=0.0)
  xmax = jnp.asarray(width, boxes.dtype) - 1.0
  ymax = jnp.asarray(height, boxes.dtype) - 1.0
  x1 = jnp.clip(boxes[..., 0], 0.0, xmax)
  y1 = jnp.clip(boxes[..., 1], 0.0, ymax)
  x2 = jnp.clip(boxes[..., 2], 0.0, xmax)
  y2 = jnp.clip(boxes[..., 3], 0.0, ymax)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def xyxy_to_xywh(boxes) -> np.ndarray:
  """Inclusive (x1, y1, x2, y2) -> COCO [x, y, w, h] with w = x2 - x1 + 1.

  Host-side NumPy (the evaluation and dataset-writing boundary).

  Args:
    boxes: [..., 4] float, inclusive-pixel corners.

  Returns:
    [..., 4] float64, [x1, y1, w, h]. Widths/heights of inverted boxes
    (x2 < x1 - 1) are clamped to 0, never negative.
  """
  b = np.asarray(boxes, dtype=np.float64)
  w = np.maximum(b[..., 2] - b[..., 0] + 1.0, 0.0)
  h = np.maximum(b[..., 3] - b[..., 1] + 1.0, 0.0)
  return np.stack([b[..., 0], b[..., 1], w, h], axis=-1)


def xywh_to_xyxy(boxes) -> np.ndarray:
  """COCO [x, y, w, h] -> inclusive (x1, y1, x2, y2) = (x, y, x + w - 1, y + h - 1).

  Host-side NumPy (the dataset-reading boundary). Non-finite and negative
  values pass through (the readers count and drop such boxes).

  Args:
    boxes: [..., 4] float, COCO boxes.

  Returns:
    [..., 4] float64 inclusive-pixel corners; the inverse of `xyxy_to_xywh`
    for boxes with w, h >= 0.
  """
  b = np.asarray(boxes, dtype=np.float64)
  with np.errstate(invalid="ignore", over="ignore"):
    return np.stack([b[..., 0], b[..., 1], b[..., 0] + b[..., 2] - 1.0,
                     b[..., 1] + b[..., 3] - 1.0], axis=-1)


def _centers_sizes(boxes):
  w = boxes[..., 2] - boxes[..., 0] + 1.0
  h = boxes[..., 3] - boxes[..., 1] + 1.0
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: jnp.ndarray, anchors: jnp.ndarray,
           stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
  """Regression targets of ``boxes`` relative to ``anchors`` (``bbox_transform``).

  With ``w = x2 - x1 + 1`` and ``ctr_x = x1 + 0.5 * w`` (same for y):
  ``dx = (ctr_x - a_ctr_x) / a_w``, ``dy = ...``, ``dw = log(w / a_w)``,
  ``dh = log(h / a_h)``, each divided by the matching entry of ``stds`` (the
  seed's ``BBOX_NORMALIZE_STDS`` (0.1, 0.1, 0.2, 0.2) for the RCNN head, ones
  for the RPN).

  Args:
    boxes: ``[..., 4]`` float32 target boxes (inclusive pixels).
    anchors: ``[..., 4]`` float32 reference boxes, broadcastable to ``boxes``.
    stds: 4 normalisation divisors.

  Returns:
    ``[..., 4]`` float32 deltas ``(dx, dy, dw, dh)``. Widths/heights of
    empty or inverted boxes are floored at 1e-3 so the result stays finite.
  """
  bx, by, bw, bh = _centers_sizes(boxes)
  ax, ay, aw, ah = _centers_sizes(anchors)
  aw = jnp.maximum(aw, _MIN_SIZE)
  ah = jnp.maximum(ah, _MIN_SIZE)
  deltas = jnp.stack([
      (bx - ax) / aw,
      (by - ay) / ah,
      jnp.log(jnp.maximum(bw, _MIN_SIZE) / aw),
      jnp.log(jnp.maximum(bh, _MIN_SIZE) / ah),
  ], axis=-1)
  return deltas / jnp.asarray(stds, deltas.dtype)


_DECODE_STYLES = ("exact", "seed")


def decode(deltas: jnp.ndarray, anchors: jnp.ndarray,
           stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), *,
           style: str = "exact") -> jnp.ndarray:
  """Applies regression ``deltas`` to ``anchors`` (``bbox_transform_inv``).

  ``deltas`` are first multiplied by ``stds``, then (in the seed's order of
  operations) ``a_wh = a2 - a1 + 1``, ``a_ctr = a1 + 0.5 * a_wh``,
  ``ctr = d_xy * a_wh + a_ctr`` and ``wh = exp(d_wh) * a_wh``; the corners
  are ``x1 = ctr_x - 0.5 * w`` and ``y1 = ctr_y - 0.5 * h`` and, by ``style``:

  * ``"exact"`` (default): ``x2 = ctr_x + 0.5 * w - 1`` (same for y). The
    inverse of :func:`encode`: ``decode(encode(b, a), a) == b`` in the
    inclusive convention (zero deltas give the anchor back). This is the
    correction Detectron made.
  * ``"seed"``: ``x2 = ctr_x + 0.5 * w``, ``y2 = ctr_y + 0.5 * h``, exactly the
    seed's ``bbox_transform_inv``, whose decoded boxes are one pixel wider
    and taller than the encoded ones (an anchor with zero deltas grows by a
    pixel). Use it to reproduce the seed's proposals and detections.

  In both styles ``dw`` and ``dh`` are clamped at ``log(1000 / 16)``
  (:data:`BBOX_XFORM_CLIP`) before ``exp``, which the seed does not do: a
  wild delta (early training, a bad checkpoint) then grows a box at most
  62.5x and never produces inf or NaN (``-inf`` gives an empty box).
  Infinite ``dx``/``dy`` give infinite corners, which :func:`clip` maps to
  the image border; NaN deltas give NaN boxes (a NaN network output is a
  failure to surface, not to hide). The clamp changes no *clipped* box in
  practice: it only acts on a box that would grow beyond 62.5x its reference
  box, i.e. (RPN, the seed's anchors with scales 8..32, shortest side 88 px)
  wider or taller than 5500 px, and such a box, once clipped to an image of
  the seed's sizes (longest side 1000 px), covers the image's full extent on
  that axis with or without the clamp unless its centre was also thrown more
  than ~1750 px outside the image (~375 px with the COCO scales 4..32,
  shortest side 44 px); for the R-CNN head (stds 0.2 on dw/dh) it
  needs a raw ``dw``/``dh`` above 20.7, twenty standard deviations of the
  normalised regression targets. Neither happens with a trained network.

  Args:
    deltas: ``[..., 4]`` float32 ``(dx, dy, dw, dh)``.
    anchors: ``[..., 4]`` float32 reference boxes, broadcastable to ``deltas``.
    stds: 4 multipliers undoing the normalisation of :func:`encode`.
    style: ``"exact"`` or ``"seed"`` (keyword only; see above).

  Returns:
    ``[..., 4]`` float32 boxes (inclusive pixels), unclipped.

  Raises:
    ValueError: for an unknown ``style``.
  """
  if style not in _DECODE_STYLES:
    raise ValueError(
        f"decode style must be one of {_DECODE_STYLES}, got {style!r}")
  deltas = deltas * jnp.asarray(stds, deltas.dtype)
  ax, ay, aw, ah = _centers_sizes(anchors)
  dw = jnp.minimum(deltas[..., 2], BBOX_XFORM_CLIP)
  dh = jnp.minimum(deltas[..., 3], BBOX_XFORM_CLIP)
  cx = deltas[..., 0] * aw + ax
  cy = deltas[..., 1] * ah + ay
  w = jnp.exp(dw) * aw
  h = jnp.exp(dh) * ah
  x2 = cx + 0.5 * w
  y2 = cy + 0.5 * h
  if style == "exact":
    x2 = x2 - 1.0
    y2 = y2 - 1.0
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, x2, y2], axis=-1)


# ==========================================================================
# torchvision convention (FPN models: fasterrcnn_resnet50_fpn[_v2])
#
# Everything below follows torchvision.models.detection, NOT the seed's
# inclusive-pixel convention above: a box (x1, y1, x2, y2) has w = x2 - x1 and
# h = y2 - y1 (no +1), centre x1 + 0.5 * w, and decoded corners are
# ctr -+ 0.5 * w (no -1). The box coder takes torchvision's `weights`
# (wx, wy, ww, wh), which *multiply* the encoded deltas (the seed's `stds`
# divide them): (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
# The arithmetic is torchvision's, in its order, in float32, so results agree
# with it to float32 rounding (exp/log may differ by an ulp).
# ==========================================================================

# torchvision's BoxCoder weights of its Faster R-CNN.
RPN_WEIGHTS_TV = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS_TV = (10.0, 10.0, 5.0, 5.0)


def area_tv(boxes: jnp.ndarray) -> jnp.ndarray:
  """torchvision's ``box_area``: ``(x2 - x1) * (y2 - y1)`` of ``[..., 4]``
  boxes -> ``[...]`` (no +1; an inverted box can have a negative area, as in
  torchvision)."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou_tv(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU as torchvision's ``box_iou`` (no +1), ``[N,4] x [M,4] ->
  [N,M]`` float32.

  ``inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0)``,
  ``union = area1 + area2 - inter`` (:func:`area_tv`). Where torchvision
  divides 0 by 0 (two empty boxes, e.g. padding) or gets a non-finite value,
  this returns 0 instead of NaN; elsewhere it is torchvision's value.
  """
  b1 = boxes1[:, None, :]
  b2 = boxes2[None, :, :]
  iw = jnp.maximum(jnp.minimum(b1[..., 2], b2[..., 2])
                   - jnp.maximum(b1[..., 0], b2[..., 0]), 0.0)
  ih = jnp.maximum(jnp.minimum(b1[..., 3], b2[..., 3])
                   - jnp.maximum(b1[..., 1], b2[..., 1]), 0.0)
  inter = iw * ih
  union = area_tv(boxes1)[:, None] + area_tv(boxes2)[None, :] - inter
  ok = union != 0
  out = inter / jnp.where(ok, union, 1.0)
  return jnp.where(ok & jnp.isfinite(out), out, 0.0)


def _centers_sizes_tv(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def _positive(x):
  """Non-positive (or NaN) sizes -> _MIN_SIZE, so encode_tv stays finite."""
  return jnp.where(x > 0, x, _MIN_SIZE)


def encode_tv(boxes: jnp.ndarray, anchors: jnp.ndarray,
              weights: Sequence[float]) -> jnp.ndarray:
  """Regression targets of ``boxes`` w.r.t. ``anchors``, torchvision's
  ``BoxCoder(weights).encode_single(boxes, anchors)`` (``encode_boxes``).

  With ``w = x2 - x1``, ``ctr_x = x1 + 0.5 * w`` (y alike, no +1):
  ``dx = wx * (ctr_x - a_ctr_x) / a_w``, ``dy = wy * (ctr_y - a_ctr_y) / a_h``,
  ``dw = ww * log(w / a_w)``, ``dh = wh * log(h / a_h)``.

  Args:
    boxes: ``[..., 4]`` float32 target boxes (torchvision convention).
    anchors: ``[..., 4]`` float32 reference boxes (anchors or proposals),
      broadcastable to ``boxes``.
    weights: ``(wx, wy, ww, wh)``: :data:`RPN_WEIGHTS_TV` or
      :data:`BOX_HEAD_WEIGHTS_TV`.

  Returns:
    ``[..., 4]`` float32 ``(dx, dy, dw, dh)``. For positive sizes exactly
    torchvision's formula. Non-positive widths/heights (padded or degenerate
    boxes, where torchvision gives inf/NaN) are replaced by 1e-3 so the result
    stays finite (a NaN target, even a masked one, poisons gradients).
  """
  bx, by, bw, bh = _centers_sizes_tv(boxes)
  ax, ay, aw, ah = _centers_sizes_tv(anchors)
  aw, ah, bw, bh = _positive(aw), _positive(ah), _positive(bw), _positive(bh)
  wx, wy, ww, wh = (jnp.asarray(v, boxes.dtype) for v in weights)
  return jnp.stack([wx * (bx - ax) / aw,
                    wy * (by - ay) / ah,
                    ww * jnp.log(bw / aw),
                    wh * jnp.log(bh / ah)], axis=-1)


def decode_tv(deltas: jnp.ndarray, anchors: jnp.ndarray,
              weights: Sequence[float],
              clamp: float = BBOX_XFORM_CLIP) -> jnp.ndarray:
  """Applies ``deltas`` to ``anchors``, torchvision's
  ``BoxCoder(weights, bbox_xform_clip=clamp).decode_single``.

  ``dx = deltas[0] / wx`` (etc.), then ``dw, dh`` are clamped above at
  ``clamp`` (default ``log(1000 / 16)``, torchvision's), ``ctr = dx * a_w +
  a_ctr_x``, ``w = exp(dw) * a_w``, and the box is ``ctr -+ 0.5 * w`` (no
  -1), with ``a_w = x2 - x1``, ``a_ctr_x = x1 + 0.5 * a_w`` (y alike).
  :func:`decode_tv` inverts :func:`encode_tv` up to rounding.

  Args:
    deltas: ``[..., 4]`` float32 ``(dx, dy, dw, dh)``. torchvision's per-class
      ``[N, K * 4]`` codes are ``deltas.reshape(N, K, 4)`` with
      ``anchors[:, None]``.
    anchors: ``[..., 4]`` float32 reference boxes, broadcastable to ``deltas``.
    weights: ``(wx, wy, ww, wh)`` that divide the deltas.
    clamp: upper bound of ``dw``/``dh`` after the division.

  Returns:
    ``[..., 4]`` float32 boxes, torchvision convention, unclipped. NaN deltas
    give NaN boxes, as torchvision (:func:`remove_small_tv` drops them).
  """
  anchors = anchors.astype(deltas.dtype)
  ax, ay, aw, ah = _centers_sizes_tv(anchors)
  wx, wy, ww, wh = weights
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clamp)
  dh = jnp.minimum(deltas[..., 3] / wh, clamp)
  cx = dx * aw + ax
  cy = dy * ah + ay
  half_w = 0.5 * (jnp.exp(dw) * aw)
  half_h = 0.5 * (jnp.exp(dh) * ah)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h],
                   axis=-1)


def clip_tv(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
  """torchvision's ``clip_boxes_to_image``: x to ``[0, width]``, y to
  ``[0, height]`` (no -1).

  ``height``/``width`` may be Python numbers, traced scalars (the resized
  image size, e.g. from ``im_info``) or arrays broadcasting against
  ``boxes[..., 0]``. NaN stays NaN, as in torchvision.
  """
  xmax = jnp.asarray(width, boxes.dtype)
  ymax = jnp.asarray(height, boxes.dtype)
  x1 = jnp.clip(boxes[..., 0], 0.0, xmax)
  y1 = jnp.clip(boxes[..., 1], 0.0, ymax)
  x2 = jnp.clip(boxes[..., 2], 0.0, xmax)
  y2 = jnp.clip(boxes[..., 3], 0.0, ymax)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def remove_small_tv(boxes: jnp.ndarray, min_size: float) -> jnp.ndarray:
  """torchvision's ``remove_small_boxes`` as a mask: ``[..., 4] -> [...]``
  bool, True where ``x2 - x1 >= min_size`` and ``y2 - y1 >= min_size``
  (False for NaN boxes). torchvision returns the kept indices instead; with
  static shapes the caller ANDs this into its valid mask."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return (w >= min_size) & (h >= min_size)
