"""Anchors: the seed's 9 base anchors and their copies over a feature grid.

Boxes are ``(x1, y1, x2, y2)`` float32 pixels, inclusive convention
(``w = x2 - x1 + 1``). Both functions return NumPy arrays: anchor sets depend
only on static sizes, so they are compile-time constants of any jitted step.
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
