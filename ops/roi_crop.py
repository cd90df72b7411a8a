"""RoI crop: the seed's third pooling mode (``POOLING_MODE = 'crop'``).

Shapes: H, W feature map height/width, C channels, R RoIs, (oh, ow) output
size, (gh, gw) sampling grid (``2 * (oh, ow)`` with ``max_pool``, else
``(oh, ow)``). Boxes (RoIs) are ``(x1, y1, x2, y2)`` float32 pixels of the
network input (the seed's inclusive-pixel convention, although this op only
uses the corners themselves, never ``x2 - x1 + 1``); ``spatial_scale`` (1/16
for a stride-16 trunk) maps them onto the feature map. One image per call;
the detector ``jax.vmap``s over its batch (features [B,H,W,C], rois [B,R,4]).

Semantics (the seed's crop path, in ``faster_rcnn.py`` and ``net_utils.py``):
  1. ``_affine_grid_gen(rois, (H, W), G)`` divides the RoI corners by 16
     (here: multiplies by ``spatial_scale``) and builds, per RoI, the affine
     matrix ``theta = [[(x2 - x1) / (W - 1), 0, (x1 + x2 - W + 1) / (W - 1)],
     [0, (y2 - y1) / (H - 1), (y1 + y2 - H + 1) / (H - 1)]]`` and
     ``F.affine_grid(theta, (R, 1, G, G))``: with the seed's PyTorch
     (<= 1.2, ``align_corners=True`` behaviour) the base grid is
     ``linspace(-1, 1, G)`` on each axis and the grid is
     ``theta @ (x_n, y_n, 1)``, so ``g_x[j] = theta00 * x_n[j] + theta02``.
     ``G = POOLING_SIZE * 2 = 14`` when ``CROP_RESIZE_WITH_MAX_POOL`` (the
     default), else ``POOLING_SIZE = 7``.
  2. The grid is ``.detach()``ed (no gradient to the RoIs), its channels are
     swapped to (y, x) and ``RCNN_roi_crop`` (the ``roi_crop`` CUDA kernel
     ``bilinearSamplingFromGrid``, from the ``stnbhwd`` spatial-transformer
     sampler) samples every channel at each grid point: pixel
     ``xcoord = (g_x + 1) * (W - 1) / 2`` (-1 -> column 0, +1 -> column
     W - 1), ``x0 = floor(xcoord)``, ``wx = 1 - (xcoord - x0)`` (same for y),
     ``v = wx wy F[y0, x0] + (1 - wx) wy F[y0, x0 + 1] + wx (1 - wy)
     F[y0 + 1, x0] + (1 - wx)(1 - wy) F[y0 + 1, x0 + 1]``, where a corner
     outside ``[0, W - 1] x [0, H - 1]`` contributes 0 (and a sample with no
     corner inside is 0). This is ``F.grid_sample(..., mode='bilinear',
     padding_mode='zeros', align_corners=True)``. The backward adds
     ``weight * grad`` to each inside corner (atomicAdd).
  3. ``F.max_pool2d(crops, 2, 2)`` -> 7 x 7 when ``CROP_RESIZE_WITH_MAX_POOL``.
     Its gradient goes to the first maximum of each 2 x 2 window in row-major
     order (PyTorch's rule: a later element wins only if strictly greater or
     NaN); here the same.
  Net effect: sample ``j`` of a RoI sits at feature column
  ``x1 s + (x2 - x1) s * j / (gw - 1)`` (s = spatial_scale), i.e. the
  samples span the RoI corners inclusively, with no half-pixel offset.

What was verified, and how. The formulas of steps 1-3 were read in
faster-rcnn.pytorch's own source (jwyang/faster-rcnn.pytorch, found with the
project's code search): ``lib/model/utils/net_utils.py`` (``_affine_grid_gen``
as above, and ``compare_grid_sample``, the authors' own check of the kernel
against ``F.grid_sample``); ``lib/model/utils/config.py`` (``POOLING_MODE =
'crop'``, ``POOLING_SIZE = 7``, ``CROP_RESIZE_WITH_MAX_POOL = True`` as
defaults; note that ``cfgs/res101.yml`` overrides them with ``align`` / no
max pool and ``cfgs/vgg16.yml`` with ``pool``);
``lib/model/roi_crop/functions/roi_crop.py`` and ``src/roi_crop_cuda.c``
(NCHW sizes and strides handed to the kernel); the ``roi_crop`` CUDA kernel
text (``getTopLeft``, ``between``, the 4-corner sum, the atomicAdd
backward). The forward's grid_size, y/x swap, ``.detach()`` and max pool are
in the seed analysis (shared/seed, ~line 364) and in ``faster_rcnn.py``.
PyTorch's documentation states that ``affine_grid``/``grid_sample``
defaulted to ``align_corners=True`` up to 1.2.0. Not verified: no run of
the seed's compiled kernel (no CUDA build of it here); the tests compare
with ``torch.nn.functional.affine_grid`` + ``grid_sample`` (with
``align_corners=True``) + ``max_pool2d`` on the CPU, built exactly as the
seed builds its grid, forward and gradient, within 1e-5. The only
differences to the kernel are float32 roundings: the kernel computes the
weights as above, ``grid_sample`` as ``(x0 + 1 - xcoord)``/``(xcoord - x0)``;
the base grid here is the correctly rounded ``linspace``, PyTorch's CPU
``linspace`` differs from it by up to 6e-8 (1e-6 feature pixels on a map
40 wide). One seed quirk does not carry over: its kernel takes the image of
RoI ``b`` as ``b // (R_total / B)`` (it ignores the RoI's batch-index
column), which is the same thing for the seed's image-major RoI lists; here
each image's RoIs are passed with its own features.

Boundary cases follow the kernel: RoIs partly or wholly outside the map are
sampled with zeros outside; ``x2 < x1`` mirrors the crop; ``x1 == x2`` gives
``gw`` copies of one column. Non-finite RoI coordinates give zero samples
(the kernel's ``int(floor(NaN))`` is undefined). ``H`` and ``W`` must be at
least 2 (the seed divides by ``H - 1`` and ``W - 1``).

How it is computed, and its cost. The grid is separable (``g_x`` depends on
the column only, ``g_y`` on the row only), so per RoI the op computes ``gw``
column taps and ``gh`` row taps (index, weight, inside-mask), then gathers
the 4 corner rows of channels of every sample from the features viewed as
``[H * W, C]`` (clamped indices, the weight of an outside corner set to 0)
and sums them in the kernel's order. XLA fuses the gathers, the weighted sum
and the 2 x 2 max pool (a select chain over the four window elements, which
routes the gradient to PyTorch's first maximum) into one loop: no
``[R, gh, gw, C]`` intermediate. Forward: ``4 R gh gw`` gathered rows of
``C`` (R = 128, 14 x 14, C = 1024: 100 M floats read, 0.4 GFLOP). Backward
(autodiff): the transpose of the gather, one scatter-add of ``4 R gh gw``
rows of ``C`` into ``[H * W, C]`` -- what the seed's atomicAdd backward does,
cheap on a GPU, slow on XLA:CPU (see ops/roi_align.py). Measured on this
machine (2 shared vCPUs, noisy; jitted; 1024-ch 38 x 63 map, proposal-like
RoIs 16..600 px, 7 x 7 with max pool): R = 128 forward 180-410 ms, forward +
backward 0.6-1.05 s; R = 300 forward ~430 ms, forward + backward 1.3-2.4 s;
PyTorch CPU (affine_grid + grid_sample + max_pool2d, 2 threads) in the same
runs: 415-625 ms / 2.3-3.0 s and 1.3-1.7 s / 3.6-6.4 s. Compile < 1.2 s.
Not yet timed on a GPU. Nothing is stored for the backward beyond the taps
and the max-pool selection. No gradient flows to ``rois``
(``lax.stop_gradient``, as the seed detaches the grid).

Numerics: the divisions by ``W - 1``/``H - 1`` are kept IEEE divisions
(XLA:CPU otherwise multiplies by the reciprocal) and ``(x1 + x2 - W) + 1``
is rounded twice as in the seed, so the eager grid equals a float32 numpy
transcription of the seed's formulas bit for bit; under ``jax.jit`` XLA:CPU
contracts ``theta00 * x_n + theta02`` into a fused multiply-add (1 ulp of
the grid, ~1e-6 in the output), as a GPU build of the seed may do too.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["roi_crop", "crop_grid"]


def _pair(v) -> tuple[int, int]:
  if isinstance(v, (tuple, list)):
    if len(v) != 2:
      raise ValueError(f"expected an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])
  return int(v), int(v)


def _div(a, b):
  """a / b rounded as IEEE division. XLA:CPU otherwise turns a division by a
  constant into a multiplication by its reciprocal (1 ulp off for a third of
  the values, measured), eagerly and under jit."""
  b = jnp.broadcast_to(jnp.asarray(b, a.dtype), a.shape)
  return a / lax.optimization_barrier(b)


def _linspace(n: int) -> np.ndarray:
  """``linspace(-1, 1, n)`` correctly rounded to float32 (affine_grid's base)."""
  return np.linspace(-1.0, 1.0, n, dtype=np.float64).astype(np.float32)


def crop_grid(rois: jnp.ndarray, height: int, width: int,
              grid_size=14, spatial_scale: float = 1.0 / 16.0
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The seed's sampling grid (``_affine_grid_gen``), as pixel coordinates.

  Args:
    rois: ``[R, 4]`` float32 ``(x1, y1, x2, y2)`` network-input pixels.
    height: ``H`` of the feature map (static, >= 2).
    width: ``W`` of the feature map (static, >= 2).
    grid_size: ``G`` or ``(gh, gw)`` samples per RoI (static).
    spatial_scale: feature-map pixels per input pixel (the seed: 1/16).

  Returns:
    ``(ys [R, gh], xs [R, gw])`` float32 sample coordinates in feature-map
    pixels (``xcoord`` of the kernel: ``(g + 1) * (size - 1) / 2``, with
    ``g`` the affine grid built from ``theta`` in the seed's order of
    operations). Sample ``(i, j)`` of RoI ``r`` is ``(ys[r, i], xs[r, j])``.
  """
  gh, gw = _pair(grid_size)
  if isinstance(height, int) and isinstance(width, int) and (
      height < 2 or width < 2):
    raise ValueError(f"feature map must be at least 2 x 2, got "
                     f"{height} x {width}")
  rois = lax.stop_gradient(jnp.asarray(rois, jnp.float32))
  s = jnp.float32(spatial_scale)
  x1, y1, x2, y2 = (rois[:, k] * s for k in range(4))

  def axis(lo, hi, size, n):
    size = jnp.asarray(size, jnp.float32)
    m1 = size - 1.0
    a = _div(hi - lo, m1)                                 # theta00 / theta11
    # (lo + hi - size) + 1 rounded twice, as the seed; the barrier stops XLA
    # from folding the two constants into one.
    b = _div(lax.optimization_barrier(lo + hi - size) + 1.0,
             m1)                                          # theta02 / theta12
    # theta @ (x_n, y_n, 1) (theta01 = theta10 = 0).
    g = a[:, None] * jnp.asarray(_linspace(n))[None, :] + b[:, None]
    return (g + 1.0) * m1 / 2.0

  return axis(y1, y2, height, gh), axis(x1, x2, width, gw)


def _taps(coord, size, map_size: int):
  """Corner indices (clamped) and weights (0 outside) along one axis.

  coord [R, n] -> (i0, i1 [R, n] int32, w0, w1 [R, n] float32): the kernel's
  ``point = floor(coord)``, ``weight = 1 - (coord - point)`` for ``point``
  and ``1 - weight`` for ``point + 1``, each zeroed when its index is outside
  ``[0, size - 1]`` (or the coordinate is not finite). ``size`` is the map's
  valid size (may be traced), ``map_size`` its static size (index bound).
  """
  p = jnp.floor(coord)
  w0 = 1.0 - (coord - p)
  w1 = 1.0 - w0
  in0 = (p >= 0) & (p <= size - 1)
  in1 = (p + 1 >= 0) & (p + 1 <= size - 1)
  pc = jnp.clip(jnp.nan_to_num(p, nan=-2.0), -2.0, float(map_size))
  i0 = jnp.clip(pc, 0, map_size - 1).astype(jnp.int32)
  i1 = jnp.clip(pc + 1, 0, map_size - 1).astype(jnp.int32)
  return i0, i1, jnp.where(in0, w0, 0.0), jnp.where(in1, w1, 0.0)


def _max_pool_2x2(x):
  """[R, 2a, 2b, C] -> [R, a, b, C], PyTorch's max_pool2d(2, 2) rule.

  The four window elements are visited in row-major order and a later one
  replaces the running maximum only if it is strictly greater or NaN, so the
  value is PyTorch's and the gradient (through the selects) goes to the
  element PyTorch's argmax points at.
  """
  r, h, w, c = x.shape
  x = x.reshape(r, h // 2, 2, w // 2, 2, c)
  m = x[:, :, 0, :, 0]
  for dy, dx in ((0, 1), (1, 0), (1, 1)):
    v = x[:, :, dy, :, dx]
    m = jnp.where((v > m) | jnp.isnan(v), v, m)
  return m


def roi_crop(features: jnp.ndarray, rois: jnp.ndarray, output_size=7,
             spatial_scale: float = 1.0 / 16.0,
             max_pool: bool = True, *, valid_size=None) -> jnp.ndarray:
  """Crops and resizes each RoI as the seed's ``POOLING_MODE = 'crop'``.

  Bilinear sampling (zeros outside the map) on the seed's affine grid of
  ``2 * output_size`` points per axis spanning the RoI corners, then a 2 x 2
  max pool (``max_pool=True``, the seed's ``CROP_RESIZE_WITH_MAX_POOL``);
  with ``max_pool=False`` the grid has ``output_size`` points and is
  returned as is. See the module docstring for the exact rules.

  Args:
    features: ``[H, W, C]`` float feature map (H, W >= 2).
    rois: ``[R, 4]`` float32 ``(x1, y1, x2, y2)`` network-input pixels. No
      gradient flows to them.
    output_size: ``7`` or ``(oh, ow)`` (static).
    spatial_scale: feature-map pixels per input pixel (1/16 in the seed,
      whose ``_affine_grid_gen`` hard-codes ``/ 16.0``).
    max_pool: sample ``2 * output_size`` points and max-pool 2 x 2 (the
      seed's default) or sample ``output_size`` points.
    valid_size: ``(h, w)`` ints or an int array ``[2]`` (may be traced): the
      map is the top-left ``h x w`` of ``features`` (an image's own feature
      map on a larger canvas): the grid and the zero-outside rule use it, as
      the seed does on that image alone. Default ``(H, W)``.

  Returns:
    ``[R, oh, ow, C]`` in the dtype of ``features``; differentiable w.r.t.
    ``features``.
  """
  h, w, c = features.shape
  oh, ow = _pair(output_size)
  gh, gw = (2 * oh, 2 * ow) if max_pool else (oh, ow)
  vh, vw = (h, w) if valid_size is None else (valid_size[0], valid_size[1])
  ys, xs = crop_grid(rois, vh, vw, (gh, gw), spatial_scale)
  y0, y1, wy0, wy1 = _taps(ys, vh, h)                     # [R, gh]
  x0, x1, wx0, wx1 = _taps(xs, vw, w)                     # [R, gw]
  flat = features.reshape(h * w, c)
  dt = features.dtype

  def corner(yi, xi, wy, wx):
    idx = yi[:, :, None] * w + xi[:, None, :]             # [R, gh, gw]
    wgt = (wx[:, None, :] * wy[:, :, None]).astype(dt)    # kernel: wx * wy
    return wgt[..., None] * flat[idx]                     # [R, gh, gw, C]

  out = (corner(y0, x0, wy0, wx0) + corner(y0, x1, wy0, wx1)
         + corner(y1, x0, wy1, wx0) + corner(y1, x1, wy1, wx1))
  return _max_pool_2x2(out) if max_pool else out
