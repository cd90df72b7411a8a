"""Per-image transforms: crop of extreme ratios, flip, resize, bucket, pad.

Shapes: ``M`` = ``max_num_box``; a canvas (bucket) is ``H x W``; ``h x w`` is
the image before resizing, ``oh x ow`` after.

Boxes are ``(x1, y1, x2, y2)`` float, inclusive pixels (``w = x2 - x1 + 1``).
A training example goes through, in this order (the seed's order: its roidb
holds flipped copies, its minibatch resizes, its loader crops):

1. ``flip`` (probability 1/2): ``x1' = w - 1 - x2``, ``x2' = w - 1 - x1``;
2. ``crop_extreme_ratio``: an image with ``w / h`` outside ``[0.5, 2]`` is
   cropped to that ratio along its long side (the seed's ``roibatchLoader``
   Code1/Code2: the window keeps as many boxes as it can, its offset is
   random); boxes are shifted and clamped to the window. Done in original
   pixels, before resizing, so the crop is then resized with the usual rule
   (the seed crops after resizing, with no ``max_size``: same window shape);
3. ``resize``: ``im_scale = scale / min(h, w)`` (the seed's
   ``prep_im_for_blob``: its ``MAX_SIZE`` cap is commented out, so
   ``max_size = 0``, no cap, is the seed's rule), or with ``max_size > 0``
   ``max_size / max(h, w)`` when ``round(im_scale * max(h, w)) > max_size``
   (py-faster-rcnn / Detectron); ``oh = cvRound(h * im_scale)``, ``ow =
   cvRound(w * im_scale)`` (``data/cv_resize.py``); pixels by ``resize``:
   ``'cv2'`` = OpenCV's ``INTER_LINEAR`` on float32 (the seed's; batches
   then carry float32 images) or ``'pil'`` = PIL bilinear on uint8
   (antialiased when shrinking; 4x smaller batches); boxes ``* im_scale``,
   clipped to ``[0, ow - 1] x [0, oh - 1]``;
4. degenerate boxes (``x2 <= x1`` or ``y2 <= y1``, e.g. clamped flat by the
   crop) are dropped (the seed's Code4);
5. placed top-left on the smallest-area bucket canvas that holds ``oh x ow``
   (padding pixels are 0); ``im_info = (oh, ow, im_scale)``;
6. ground truth padded to ``M`` with a ``valid`` mask; boxes beyond ``M``
   are dropped (the first ``M`` kept, as the seed) and counted.

Evaluation examples skip 1, 2 and 4.

``resize='torchvision'`` (the FPN configs) replaces step 3 by torchvision's
detection resize (:mod:`frcnn_jax.data.tv_resize`): ``im_scale = min(scale /
min(h, w), max_size / max(h, w))``, ``oh = floor(h * im_scale)``, torch's
bilinear interpolation without antialiasing, float32 pixels (the canvas is
then float32 too).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

from frcnn_jax.data import cv_resize
from frcnn_jax.data import tv_resize

# The seed's ratio range: images with w / h outside it are cropped in training.
MIN_RATIO = 0.5
MAX_RATIO = 2.0
# 'pil': uint8 PIL bilinear; 'cv2': the seed's float32 OpenCV resize;
# 'torchvision': torchvision's detection resize (float32; the FPN configs).
RESIZE_METHODS = ('pil', 'cv2', 'torchvision')


@dataclasses.dataclass(frozen=True)
class TransformParams:
  """What the transforms need from ``config.data``.

  ``max_size`` 0 means no cap on the long side (the seed's rule).
  """
  scale: int
  max_size: int
  buckets: tuple[tuple[int, int], ...]
  max_num_box: int
  flip: bool = True
  crop_extreme_ratios: bool = True
  min_ratio: float = MIN_RATIO
  max_ratio: float = MAX_RATIO
  resize: str = 'pil'

  @property
  def image_dtype(self):
    """dtype of batch images: float32 for the float resizes (the seed's
    OpenCV one and torchvision's)."""
    return np.float32 if self.resize in ('cv2', 'torchvision') else np.uint8

  @classmethod
  def from_config(cls, c) -> 'TransformParams':
    buckets = tuple((int(h), int(w)) for h, w in c.buckets)
    if not buckets:
      raise ValueError('data.buckets is empty: give at least one (H, W)')
    for h, w in buckets:
      if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ValueError(f'data.buckets: ({h}, {w}) must be positive '
                         'multiples of 16')
    if int(c.scale) <= 0 or 0 < int(c.max_size) < int(c.scale):
      raise ValueError(f'data.scale ({c.scale}) must be positive and at most '
                       f'data.max_size ({c.max_size}; 0 = no cap)')
    if int(c.max_num_box) <= 0:
      raise ValueError(f'data.max_num_box must be positive, got '
                       f'{c.max_num_box}')
    resize = str(c.get('resize', 'pil'))
    if resize not in RESIZE_METHODS:
      raise ValueError(f'data.resize must be one of {RESIZE_METHODS}, got '
                       f'{resize!r}')
    return cls(scale=int(c.scale), max_size=int(c.max_size), buckets=buckets,
               max_num_box=int(c.max_num_box), flip=bool(c.flip),
               crop_extreme_ratios=bool(c.crop_extreme_ratios), resize=resize)


def plan_resize(height: int, width: int, scale: float, max_size: float,
                method: str = 'pil') -> tuple[int, int, float]:
  """``(oh, ow, im_scale)``: torchvision's floor sizes for
  ``method='torchvision'``, else the seed's rounding (``cv2.resize``)."""
  if method == 'torchvision':
    s = tv_resize.torchvision_scale(height, width, scale, max_size)
    return tv_resize.torchvision_size(height, width, s) + (s,)
  s = compute_scale(height, width, scale, max_size)
  return resized_size(height, width, s) + (s,)


def compute_scale(height: int, width: int, scale: float,
                  max_size: float) -> float:
  """The resize factor: short side ``scale``; with ``max_size > 0`` the
  long side at most ``max_size`` (``cv_resize.seed_resize_size``)."""
  return cv_resize.seed_resize_size(height, width, scale,
                                    max_size if max_size > 0 else None)[2]


def resized_size(height: int, width: int, im_scale: float) -> tuple[int, int]:
  """``(cvRound(h * s), cvRound(w * s))`` as ``cv2.resize(fx=s, fy=s)``, >= 1."""
  return (max(cv_resize.cv_round(height * im_scale), 1),
          max(cv_resize.cv_round(width * im_scale), 1))


def choose_bucket(height: int, width: int,
                  buckets: Sequence[tuple[int, int]]) -> int:
  """Index of the smallest-area canvas holding ``height x width``; -1: none.

  Ties go to the first in config order.
  """
  best, best_area = -1, None
  for i, (bh, bw) in enumerate(buckets):
    if bh >= height and bw >= width and (best_area is None or
                                         bh * bw < best_area):
      best, best_area = i, bh * bw
  return best


def crop_size(height: int, width: int, min_ratio: float = MIN_RATIO,
              max_ratio: float = MAX_RATIO) -> tuple[int, int]:
  """Size ``(h, w)`` after the extreme-ratio crop (no crop: unchanged).

  The seed's ``trim_size``: ``floor(w / min_ratio)`` rows for tall images,
  ``ceil(h * max_ratio)`` columns for wide ones.
  """
  ratio = width / height
  if ratio < min_ratio:
    return min(int(math.floor(width / min_ratio)), height), width
  if ratio > max_ratio:
    return height, min(int(math.ceil(height * max_ratio)), width)
  return height, width


def _crop_start(lo_box: np.ndarray, hi_box: np.ndarray, size: int, trim: int,
                rng: np.random.Generator) -> int:
  """The seed's choice of the window start along one axis (Code1)."""
  if trim >= size:
    return 0
  if lo_box.size == 0:  # No boxes (kept as a negative): any window.
    return int(rng.integers(0, size - trim + 1))
  min_y = int(lo_box.min())
  max_y = int(hi_box.max())
  box_region = max_y - min_y + 1
  if min_y == 0:
    return 0
  if box_region - trim < 0:
    s_min = max(max_y - trim, 0)
    s_max = min(min_y, size - trim)
    if s_min >= s_max:
      return s_min
    return int(rng.integers(s_min, s_max))
  s_add = int((box_region - trim) / 2)
  if s_add == 0:
    return min(min_y, size - trim)
  return min(int(rng.integers(min_y, min_y + s_add)), size - trim)


def crop_extreme_ratio(height: int, width: int, boxes: np.ndarray,
                       rng: np.random.Generator,
                       min_ratio: float = MIN_RATIO,
                       max_ratio: float = MAX_RATIO):
  """The seed's crop of an image whose ratio ``w / h`` is outside the range.

  Args:
    height, width: image size.
    boxes: ``[n, 4]`` inclusive-pixel boxes in the image.
    rng: source of the window offset.

  Returns:
    ``(y0, x0, ch, cw, boxes)``: the window ``[y0, y0 + ch) x [x0, x0 + cw)``
    and the boxes shifted into it and clamped to ``[0, cw - 1] x [0, ch - 1]``
    (boxes wholly outside the window become flat; ``drop_degenerate`` removes
    them). No crop: ``(0, 0, height, width, boxes)``.
  """
  ch, cw = crop_size(height, width, min_ratio, max_ratio)
  boxes = np.array(boxes, np.float64).reshape(-1, 4)
  y0 = x0 = 0
  if ch < height:
    y0 = _crop_start(boxes[:, 1], boxes[:, 3], height, ch, rng)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - y0, 0, ch - 1)
  elif cw < width:
    x0 = _crop_start(boxes[:, 0], boxes[:, 2], width, cw, rng)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - x0, 0, cw - 1)
  return y0, x0, ch, cw, boxes


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """Horizontal flip, inclusive convention: ``x1' = w - 1 - x2``."""
  out = np.array(boxes, copy=True)
  out[:, 0] = width - 1 - boxes[:, 2]
  out[:, 2] = width - 1 - boxes[:, 0]
  return out


def resize_image(image: np.ndarray, out_h: int, out_w: int, *,
                 method: str = 'pil', im_scale: float | None = None
                 ) -> np.ndarray:
  """uint8 ``[h, w, 3]`` -> ``[out_h, out_w, 3]``, bilinear.

  ``method='pil'``: PIL on uint8 (antialiased when shrinking), uint8 out;
  ``'cv2'``: OpenCV's ``INTER_LINEAR`` with ``fx = fy = im_scale`` on
  float32 (the seed's ``prep_im_for_blob``), float32 out;
  ``'torchvision'``: torch's bilinear without antialiasing on float32
  (``GeneralizedRCNNTransform``), float32 out.
  """
  if method == 'torchvision':
    return tv_resize.resize_bilinear(image, out_h, out_w)
  if method == 'cv2':
    out = cv_resize.resize_bilinear(image, im_scale)
    if out.shape[:2] != (out_h, out_w):
      raise ValueError(f'cv2 resize by {im_scale} gives {out.shape[:2]}, '
                       f'expected {(out_h, out_w)}')
    return out
  if image.shape[0] == out_h and image.shape[1] == out_w:
    return image
  pil = Image.fromarray(np.ascontiguousarray(image))
  return np.asarray(pil.resize((out_w, out_h), Image.BILINEAR))


def drop_degenerate(boxes: np.ndarray, classes: np.ndarray):
  """Drops boxes with ``x2 <= x1`` or ``y2 <= y1`` (the seed's Code4)."""
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return boxes[keep], classes[keep]


def pad_gt(boxes: np.ndarray, classes: np.ndarray, max_num_box: int):
  """Pads/truncates ground truth to ``M = max_num_box``.

  Returns:
    ``(boxes [M,4] float32, classes [M] int32, valid [M] bool, n_dropped)``;
    padding rows are 0 with class 0 and ``valid=False``; when there are more
    than ``M`` boxes the first ``M`` are kept and ``n_dropped`` says how many
    were not.
  """
  n = min(len(boxes), max_num_box)
  out_b = np.zeros((max_num_box, 4), np.float32)
  out_c = np.zeros((max_num_box,), np.int32)
  valid = np.zeros((max_num_box,), bool)
  out_b[:n] = boxes[:n]
  out_c[:n] = classes[:n]
  valid[:n] = True
  return out_b, out_c, valid, len(boxes) - n


def planned_size(height: int, width: int, params: TransformParams,
                 train: bool) -> tuple[int, int, float]:
  """``(oh, ow, im_scale)`` an image of this size will have (no pixels read).

  The crop changes only the window's position randomly, never its size, so
  the bucket of every image is known when the loader is built.
  """
  if train and params.crop_extreme_ratios:
    height, width = crop_size(height, width, params.min_ratio,
                              params.max_ratio)
  return plan_resize(height, width, params.scale, params.max_size,
                     params.resize)


def make_example(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                 params: TransformParams, bucket: tuple[int, int], *,
                 rng: np.random.Generator | None = None) -> dict:
  """One image -> one batch row.

  Args:
    image: uint8 ``[h, w, 3]`` RGB, original pixels.
    boxes: ``[n, 4]`` inclusive-pixel boxes in original pixels.
    classes: int ``[n]``.
    params: transform parameters.
    bucket: ``(H, W)`` canvas.
    rng: training randomness (flip, crop offset); ``None`` = evaluation (no
      flip, no crop, no degenerate-box drop).

  Returns:
    dict: ``image [H,W,3]`` (``params.image_dtype``), ``im_info [3] float32`` = ``(oh, ow,
    im_scale)``, ``gt_boxes [M,4] float32`` (canvas pixels), ``gt_classes
    [M] int32``, ``gt_valid [M] bool``, ``num_dropped`` (int, boxes beyond M).
  """
  h, w = image.shape[:2]
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  classes = np.asarray(classes, np.int32).reshape(-1)
  train = rng is not None
  if train:
    if params.flip and rng.random() < 0.5:
      image = image[:, ::-1]
      boxes = flip_boxes(boxes, w)
    if params.crop_extreme_ratios:
      y0, x0, ch, cw, boxes = crop_extreme_ratio(
          h, w, boxes, rng, params.min_ratio, params.max_ratio)
      image = image[y0:y0 + ch, x0:x0 + cw]
      h, w = ch, cw
  oh, ow, s = plan_resize(h, w, params.scale, params.max_size, params.resize)
  bh, bw = bucket
  if oh > bh or ow > bw:
    raise ValueError(f'resized image {oh}x{ow} does not fit bucket {bh}x{bw}')
  resized = resize_image(image, oh, ow, method=params.resize, im_scale=s)
  boxes = boxes * s
  boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, ow - 1)
  boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, oh - 1)
  if train:
    boxes, classes = drop_degenerate(boxes, classes)
  canvas = np.zeros((bh, bw, 3), params.image_dtype)
  canvas[:oh, :ow] = resized
  gb, gc, gv, dropped = pad_gt(boxes, classes, params.max_num_box)
  return {'image': canvas,
          'im_info': np.array([oh, ow, s], np.float32),
          'gt_boxes': gb, 'gt_classes': gc, 'gt_valid': gv,
          'num_dropped': dropped}
