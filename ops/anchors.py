"""Anchors: the seed's 9 base anchors and their copies over a feature grid;
torchvision's AnchorGenerator for the FPN models (the ``*_tv`` functions).

Boxes are ``(x1, y1, x2, y2)`` float32 pixels, inclusive convention
(``w = x2 - x1 + 1``), except for the ``*_tv`` functions, which follow
torchvision (no +1, zero-centred cell anchors; see their section). All
functions return NumPy arrays: anchor sets depend only on static sizes, so
they are compile-time constants of any jitted step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _box_from_center(cx: float, cy: float, ws: np.ndarray, hs: np.ndarray):
  """Inclusive boxes of sizes ``ws x hs`` centred on ``(cx, cy)``."""
  return np.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1),
                   cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], axis=1)


def generate_anchors(base_size: int = 16,
                     ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> np.ndarray:
  """The seed's base anchors (``generate_anchors.py``), ratio-major.

  A ``base_size x base_size`` reference box at ``(0, 0, base-1, base-1)``
  is reshaped for each aspect ratio ``r = h / w`` while keeping its area
  (``w = round(sqrt(base^2 / r))``, ``h = round(w * r)``, NumPy's round half to
  even), then each of those is scaled by every entry of ``scales``, always
  around the same centre ``((base - 1) / 2, (base - 1) / 2)``.

  Args:
    base_size: side of the reference box (the feature stride, 16).
    ratios: aspect ratios ``h / w``.
    scales: multipliers of the reshaped reference box.

  Returns:
    ``[len(ratios) * len(scales), 4]`` float32, ordered ratio-major then scale;
    for the defaults exactly the seed's table, starting
    ``[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199]``.
  """
  ratios = np.asarray(ratios, np.float64)
  scales = np.asarray(scales, np.float64)
  ctr = 0.5 * (base_size - 1)
  ws = np.round(np.sqrt(base_size * base_size / ratios))
  hs = np.round(ws * ratios)
  out = [_box_from_center(ctr, ctr, w * scales, h * scales)
         for w, h in zip(ws, hs)]
  return np.concatenate(out, axis=0).astype(np.float32)


def grid_anchors(height: int, width: int, stride: int,
                 base: np.ndarray) -> np.ndarray:
  """Copies of ``base`` anchors at every cell of a ``height x width`` grid.

  Cell ``(y, x)`` is shifted by ``(x * stride, y * stride)`` as the seed's
  proposal and anchor target layers do.

  Args:
    height: feature map height (static int).
    width: feature map width (static int).
    stride: feature stride in input pixels (16).
    base: ``[A, 4]`` base anchors from :func:`generate_anchors`.

  Returns:
    ``[height * width * A, 4]`` float32 in the seed's order: shift-major
    (row ``y``, then column ``x``), anchor-minor; row ``(y * width + x) * A + a``
    is base anchor ``a`` at cell ``(y, x)``. This is also the order of an NHWC
    RPN output reshaped to ``[H * W * A, ...]``.
  """
  base = np.asarray(base, np.float32)
  sx = np.arange(width, dtype=np.float32) * stride
  sy = np.arange(height, dtype=np.float32) * stride
  sx, sy = np.meshgrid(sx, sy)  # [H, W] each, row-major
  shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
  return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


# --------------------------------------------------------------------------
# torchvision's AnchorGenerator (FPN detectors: fasterrcnn_resnet50_fpn[_v2]).
#
# A different convention from the functions above: torchvision's boxes have
# no +1 (w = x2 - x1), its cell anchors are centred on (0, 0) rather than on
# ((base - 1) / 2, (base - 1) / 2), and a cell anchor is described by a size
# (the side of the square of the same area) instead of base_size * scale.
# --------------------------------------------------------------------------

# torchvision's defaults for its FPN Faster R-CNN (`_default_anchorgen`): one
# size per level P2, P3, P4, P5 and 'pool' (P6, a max-pool of P5), three
# aspect ratios at every level, so A = 3 anchors per location.
FPN_ANCHOR_SIZES_TV = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS_TV = ((0.5, 1.0, 2.0),) * 5


def cell_anchors_tv(sizes: Sequence[float],
                    aspect_ratios: Sequence[float]) -> np.ndarray:
  """torchvision's zero-centred cell anchors (``AnchorGenerator.generate_anchors``).

  For each aspect ratio ``r = h / w`` and size ``s``, in float32 as torchvision:
  ``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio``, ``w = w_ratio * s``,
  ``h = h_ratio * s``, and the anchor is ``round((-w, -h, w, h) / 2)``
  (round half to even, on the half extents; no +1 anywhere). E.g. size 32,
  ratios (0.5, 1, 2): ``[-23, -11, 23, 11], [-16, -16, 16, 16],
  [-11, -23, 11, 23]``.

  Args:
    sizes: anchor sizes (side of the square of equal area) of one level.
    aspect_ratios: ratios ``h / w`` of that level.

  Returns:
    ``[len(aspect_ratios) * len(sizes), 4]`` float32 ``(x1, y1, x2, y2)``,
    torchvision convention (no +1), ordered ratio-major then size.
  """
  scales = np.asarray(sizes, np.float32)
  ratios = np.asarray(aspect_ratios, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
  return np.round(base).astype(np.float32)


def strides_tv(image_size: Sequence[int],
               feature_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
  """Per-level ``(stride_y, stride_x)`` as torchvision's AnchorGenerator.

  ``stride = image // feature`` on each axis (integer division), where
  ``image`` is the size of the padded batch tensor (``ImageList.tensors``),
  not of the resized image inside it. The two axes may differ and need not
  be powers of two: for an 800 x 1216 canvas the 'pool' level is 13 x 19, so
  its strides are (61, 64), not (64, 64). torchvision does exactly this, and
  its pretrained RPN was trained with it.

  Args:
    image_size: ``(height, width)`` of the padded input (static ints).
    feature_sizes: ``(H_l, W_l)`` of each level (static ints).

  Returns:
    A list of ``(stride_y, stride_x)`` int pairs, one per level.
  """
  ih, iw = int(image_size[0]), int(image_size[1])
  return [(ih // int(h), iw // int(w)) for h, w in feature_sizes]


def grid_anchors_tv(height: int, width: int, stride: int | Sequence[int],
                    cell: np.ndarray) -> np.ndarray:
  """Copies of torchvision cell anchors over a ``height x width`` grid.

  Cell ``(y, x)`` shifts every cell anchor by ``(x * stride_x, y * stride_y)``
  (integer shifts, added in float32), as ``AnchorGenerator.grid_anchors``. The
  anchors are therefore centred on the top-left corner of their cell, not its
  centre (torchvision's choice, unlike Detectron's half-stride offset).

  Args:
    height: feature map height (static int).
    width: feature map width (static int).
    stride: int, or ``(stride_y, stride_x)`` (see :func:`strides_tv`).
    cell: ``[A, 4]`` cell anchors from :func:`cell_anchors_tv`.

  Returns:
    ``[height * width * A, 4]`` float32, torchvision convention (no +1), in
    torchvision's order: location-major (row ``y``, then column ``x``),
    anchor-minor; row ``(y * width + x) * A + a`` is cell anchor ``a`` at
    ``(y, x)``, matching an NHWC RPN output reshaped to ``[H * W * A, ...]``.
  """
  if isinstance(stride, (tuple, list)):
    sy_, sx_ = int(stride[0]), int(stride[1])
  else:
    sy_ = sx_ = int(stride)
  cell = np.asarray(cell, np.float32)
  sx = (np.arange(width, dtype=np.int64) * sx_).astype(np.float32)
  sy = (np.arange(height, dtype=np.int64) * sy_).astype(np.float32)
  sy, sx = np.meshgrid(sy, sx, indexing="ij")  # [H, W] each, row-major
  shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
  return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


def multilevel_anchors_tv(
    image_size: Sequence[int],
    feature_sizes: Sequence[Sequence[int]],
    sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES_TV,
    aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS_TV,
) -> np.ndarray:
  """All anchors of one image over several levels, as torchvision's
  ``AnchorGenerator(sizes, aspect_ratios)(image_list, feature_maps)[i]``.

  Level ``l`` uses ``cell_anchors_tv(sizes[l], aspect_ratios[l])`` on an
  ``H_l x W_l`` grid with ``strides_tv(image_size, feature_sizes)[l]``
  (integer division of the padded image size by the feature size).

  Args:
    image_size: ``(height, width)`` of the padded input tensor.
    feature_sizes: ``(H_l, W_l)`` per level (P2..P6 for the FPN models:
      for an 800 x 1216 canvas 200x304, 100x152, 50x76, 25x38, 13x19).
    sizes: per-level anchor sizes (default: torchvision's FPN sizes).
    aspect_ratios: per-level ratios ``h / w``.

  Returns:
    ``[sum_l H_l * W_l * A_l, 4]`` float32, torchvision convention (no +1):
    the levels' :func:`grid_anchors_tv` concatenated in level order, which is
    also the order of torchvision's concatenated RPN outputs.
  """
  if not len(sizes) == len(aspect_ratios) == len(feature_sizes):
    raise ValueError(
        f"need one entry per level: {len(feature_sizes)} feature maps, "
        f"{len(sizes)} sizes, {len(aspect_ratios)} aspect-ratio sets")
  strides = strides_tv(image_size, feature_sizes)
  out = [grid_anchors_tv(int(h), int(w), st, cell_anchors_tv(s, r))
         for (h, w), st, s, r in zip(feature_sizes, strides, sizes,
                                     aspect_ratios)]
  return np.concatenate(out, axis=0)
