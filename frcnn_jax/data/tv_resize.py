"""torchvision's detection resize (``GeneralizedRCNNTransform``) in numpy.

torchvision's Faster R-CNN models resize every image by

  scale = min(min_size / min(h, w), max_size / max(h, w))
  out   = floor(h * scale), floor(w * scale)     (double products)

with ``F.interpolate(mode='bilinear', align_corners=False,
recompute_scale_factor=True)`` on float32 pixels: destination index ``d``
samples source coordinate ``u = max((d + 0.5) * (in / out) - 0.5, 0)``
(``in / out`` in float32, the rest rounded once: a fused multiply-add; no
antialiasing), between ``i0 = floor(u)`` and
``i1 = min(i0 + 1, in - 1)`` with weights ``1 - (u - i0)`` and ``u - i0``;
the two axes combine as ``h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)``
(PyTorch's CPU kernel). torchvision resizes the normalised image; resizing
0..255 pixels and normalising afterwards (what the detector does) is the
same linear map up to float32 rounding (~1e-5).

The output is float32 (a uint8 result would round away up to 0.5 grey
levels, ~0.009 after torchvision's normalisation). ``data.resize =
'torchvision'`` selects this in the data pipeline (see ``transforms``).
"""

from __future__ import annotations

import math

import numpy as np


def torchvision_scale(height: int, width: int, min_size: float,
                      max_size: float) -> float:
  """``min(min_size / min(h, w), max_size / max(h, w))`` (a Python float)."""
  return min(float(min_size) / min(height, width),
             float(max_size) / max(height, width))


def torchvision_size(height: int, width: int,
                     scale: float) -> tuple[int, int]:
  """``(floor(h * scale), floor(w * scale))``, as ``F.interpolate`` sizes
  its output from a scale factor."""
  return (max(int(math.floor(height * scale)), 1),
          max(int(math.floor(width * scale)), 1))


def _axis(n_in: int, n_out: int):
  ratio = np.float32(n_in) / np.float32(n_out)
  # ratio * (d + 0.5) - 0.5 rounded once to float32 (a fused multiply-add:
  # PyTorch's vectorised kernel; rounding the product first differs by an
  # ulp of u at some columns). The double product is exact.
  u = np.float64(ratio) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
  u = np.maximum(u.astype(np.float32), np.float32(0.0))
  i0 = np.minimum(u.astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  l1 = np.clip(u - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  return i0, i1, (np.float32(1.0) - l1), l1


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """``[h, w, C]`` (any dtype) -> float32 ``[out_h, out_w, C]``, torch's
  ``interpolate(bilinear, align_corners=False)`` with the scale recomputed
  from the sizes. Same size: a float32 copy (torch's output equals its
  input then too)."""
  x = np.asarray(image, np.float32)
  h, w = x.shape[:2]
  if (h, w) == (out_h, out_w):
    return x.copy()
  y0, y1, h0, h1 = _axis(h, out_h)
  x0, x1, w0, w1 = _axis(w, out_w)
  w0, w1 = w0[None, :, None], w1[None, :, None]
  top = w0 * x[y0][:, x0] + w1 * x[y0][:, x1]
  bot = w0 * x[y1][:, x0] + w1 * x[y1][:, x1]
  return (h0[:, None, None] * top + h1[:, None, None] * bot).astype(np.float32)
