"""OpenCV's ``cv2.resize(fx=s, fy=s, INTER_LINEAR)`` in numpy, as the seed uses it.

The seed's test-time (and training) preprocessing is ``prep_im_for_blob``:
BGR ``float32`` minus the pixel means, then
``cv2.resize(im, None, None, fx=im_scale, fy=im_scale,
interpolation=cv2.INTER_LINEAR)``. This module reproduces both the output
size and the pixels, without importing OpenCV.

Output size (OpenCV ``cv::resize`` with an empty ``dsize``)::

  new_w = cvRound(w * fx),  new_h = cvRound(h * fy)

``w * fx`` is a double product and ``cvRound`` rounds half to even
(``np.rint``); a zero size is an error. ``im_scale = scale / min(h, w)`` as
the seed's pytorch-1.0 / master ``prep_im_for_blob`` computes it: there the
``MAX_SIZE`` cap is commented out. ``max_size`` (py-faster-rcnn / Detectron)
replaces the scale by ``max_size / max(h, w)`` when
``round(im_scale * max(h, w)) > max_size``.

Pixels. OpenCV keeps the given ``fx`` as the scale (it is not recomputed
from ``new_w / w``): destination column ``x`` samples source column

  u = (x + 0.5) / fx - 0.5

linearly between ``floor(u)`` and ``floor(u) + 1``, with the border
replicated (``u < 0`` gives column 0, ``u >= w - 1`` gives column ``w - 1``);
rows likewise. Float32 images are interpolated in float32 with float32
weights. When ``(new_h, new_w) == (h, w)`` OpenCV copies the image unchanged,
whatever ``fx``. Two code paths of OpenCV differ in one detail, the precision
of ``u``:

* ``precision='float64'`` (default): ``u`` in double, the fraction rounded
  to float32. This is Intel IPP's resize (an affine warp with a double
  transform), which OpenCV calls for float32 ``INTER_LINEAR`` in the x86
  ``opencv-python`` wheels (bundled IPPICV), OpenCV 3.4 to 5.x: what the
  seed most likely ran, and what the installed ``cv2`` runs. Matches it to
  about 1e-4 on 0..255 images (the summation order inside IPP differs).
* ``precision='float32'``: ``u`` rounded to float32 before ``floor``, as
  OpenCV's own C++ ``resizeGeneric`` (builds without IPP, e.g. ARM, or
  ``cv2.setUseOptimized(False)``): bit-exact with it.

The two paths differ by up to ~1e-2 on 0..255 images of the seed's sizes
(the float32 ``u`` is off by up to ``ulp(u) ~ 6e-5`` pixel at ``u ~ 1000``).

Both are separable and vectorised: the horizontal pass over the source rows
first, then the vertical pass (OpenCV's order). Measured on the shared 2-core
development VM (median of 15): 375x500x3 -> 600x800 8-18 ms, 1024x683x3 ->
900x600 ~24 ms; OpenCV 0.3-1.3 ms for the same.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ('float64', 'float32')


def cv_round(x: float) -> int:
  """OpenCV's ``cvRound`` / ``saturate_cast<int>(double)``: half to even."""
  return int(np.rint(x))


def seed_resize_size(height: int, width: int, scale: float,
                     max_size: float | None = None) -> tuple[int, int, float]:
  """The seed's resize factor and the size ``cv2.resize`` gives with it.

  Args:
    height: source image height ``h`` (pixels, > 0).
    width: source image width ``w`` (pixels, > 0).
    scale: target short side (the seed's ``TEST.SCALES[0]``, 600).
    max_size: ``None`` for the seed's code (no cap: the cap is commented out
      in its ``prep_im_for_blob``); a number for py-faster-rcnn / Detectron:
      ``im_scale = max_size / max(h, w)`` when
      ``round(im_scale * max(h, w)) > max_size``.

  Returns:
    ``(new_h, new_w, im_scale)``: ``new_h = cvRound(h * im_scale)``,
    ``new_w = cvRound(w * im_scale)``; ``im_scale`` a Python float (double),
    the ``fx = fy`` passed to ``cv2.resize``.

  Raises:
    ValueError: non-positive sizes, or a resized side that rounds to 0.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f'image size must be positive, got {height}x{width}')
  im_scale = float(scale) / float(min(height, width))
  if max_size is not None and np.round(im_scale * max(height, width)) > max_size:
    im_scale = float(max_size) / float(max(height, width))
  new_h, new_w = resized_size(height, width, im_scale)
  return new_h, new_w, im_scale


def resized_size(height: int, width: int, im_scale: float) -> tuple[int, int]:
  """``(cvRound(h * s), cvRound(w * s))``: ``cv2.resize``'s size for ``fx=fy=s``.

  Raises:
    ValueError: when a side rounds to 0 (OpenCV asserts ``!dsize.empty()``).
  """
  new_h = cv_round(height * float(im_scale))
  new_w = cv_round(width * float(im_scale))
  if new_h <= 0 or new_w <= 0:
    raise ValueError(f'resizing {height}x{width} by {im_scale} gives an empty '
                     f'{new_h}x{new_w} image')
  return new_h, new_w


def _taps(n_src: int, n_dst: int, scale: float, precision: str,
          reset_border: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and float32 weight of one axis.

  Returns ``(i0, i1, a)``, each ``[n_dst]``: output ``k`` is
  ``src[i0] * (1 - a) + src[i1] * a``. With ``reset_border`` (OpenCV's
  horizontal pass) a sample outside ``[0, n_src - 1]`` gets ``a = 0`` on the
  nearest pixel (OpenCV's horizontal pass; IPP on both axes); without it
  (OpenCV's generic vertical pass) both row indices are clamped and the
  weight kept (the same value, up to rounding).
  """
  inv = 1.0 / float(scale)
  u = (np.arange(n_dst, dtype=np.float64) + 0.5) * inv - 0.5
  if precision == 'float32':
    u = u.astype(np.float32)
    i0 = np.floor(u).astype(np.int64)
    a = u - i0.astype(np.float32)
  else:
    i0 = np.floor(u).astype(np.int64)
    a = (u - i0).astype(np.float32)
  if reset_border:
    out = (i0 < 0) | (i0 >= n_src - 1)
    a = np.where(out, np.float32(0), a)
    i0 = np.clip(i0, 0, n_src - 1)
  i1 = np.clip(i0 + 1, 0, n_src - 1)
  i0 = np.clip(i0, 0, n_src - 1)
  return i0, i1, a.astype(np.float32)


def resize_bilinear(image: np.ndarray, im_scale: float,
                    precision: str = 'float64') -> np.ndarray:
  """``cv2.resize(image, None, None, fx=s, fy=s, interpolation=INTER_LINEAR)``.

  Args:
    image: ``[h, w, C]`` or ``[h, w]``, any real dtype; converted to float32
      (the seed resizes ``float32`` BGR minus means).
    im_scale: ``fx = fy``, a positive Python float (double).
    precision: ``'float64'`` (IPP, the x86 ``opencv-python`` path) or
      ``'float32'`` (OpenCV's generic C++ path); see the module docstring.

  Returns:
    float32 ``[new_h, new_w, C]`` (or ``[new_h, new_w]``) with
    ``(new_h, new_w) = resized_size(h, w, im_scale)``; a copy of the image
    when that is its own size.
  """
  if precision not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
  if not im_scale > 0:
    raise ValueError(f'im_scale must be positive, got {im_scale}')
  img = np.asarray(image, dtype=np.float32)
  if img.ndim not in (2, 3):
    raise ValueError(f'image must be [h, w] or [h, w, C], got {img.shape}')
  h, w = img.shape[:2]
  new_h, new_w = resized_size(h, w, im_scale)
  if (new_h, new_w) == (h, w):
    return img.copy()
  squeeze = img.ndim == 2
  if squeeze:
    img = img[:, :, None]
  one = np.float32(1)
  # Horizontal pass over the source rows: [h, new_w, C].
  x0, x1, a = _taps(w, new_w, im_scale, precision, reset_border=True)
  a = a[None, :, None]
  tmp = np.take(img, x0, axis=1)
  tmp *= one - a
  tmp += np.take(img, x1, axis=1) * a
  # Vertical pass: [new_h, new_w, C].
  y0, y1, b = _taps(h, new_h, im_scale, precision,
                    reset_border=precision == 'float64')
  b = b[:, None, None]
  out = np.take(tmp, y0, axis=0)
  out *= one - b
  out += np.take(tmp, y1, axis=0) * b
  return out[:, :, 0] if squeeze else out
