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
