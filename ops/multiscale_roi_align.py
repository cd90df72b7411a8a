"""Multi-scale RoIAlign (torchvision's MultiScaleRoIAlign), static shapes.

Shapes: L levels (P2..P5 for the FPN models), level l of size H_l x W_l, C
channels, R RoIs, (oh, ow) output size (7 x 7). Boxes are (x1, y1, x2, y2)
float32 pixels of the network input in torchvision's convention (no +1:
w = x2 - x1), unlike the seed's inclusive boxes elsewhere in ops/. One image
per call; the detector `jax.vmap`s over its batch.

Semantics (torchvision.ops.MultiScaleRoIAlign(['0','1','2','3'], 7, 2), as
in fasterrcnn_resnet50_fpn and _v2)
  * Scales: scale_l = 2 ** round(log2(H_l / image_h)) (`infer_scales_tv`);
    k_min, k_max = -log2 of the first and last scale (2 and 5).
  * LevelMapper: k = clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), k_min,
    k_max), area = (x2 - x1) * (y2 - y1), all in float32. Evaluated here as
    comparisons of the float32 area with three static thresholds
    (`level_area_thresholds_tv`: the smallest float32 areas of levels 3, 4, 5,
    12543.98, 50175.93 and 200703.67, i.e. sqrt ~ 112, 224, 448), found once
    on the host by bisection with IEEE float32 sqrt/division and a correctly
    rounded log2. The device never evaluates log2, whose rounding differs
    between backends. Of 300000 areas within 1e-5 of a boundary, a jnp.log2
    transcription of the formula gave another level than torch for 1554, the
    thresholds for 394, all of them one area: torch's own float32 sqrt is not
    always correctly rounded (on the AMD EPYC this was written on, off by an
    ulp for ~17% of the areas tested), and at 200703.66, one ulp below the
    third threshold, that moves torch's level up. The tests check every
    float32 area within +-2000 ulps of each boundary. RoIs with negative area (one
    side inverted) get a NaN level in torchvision, land in no level and stay
    zero: the same here. With a single level torchvision skips the mapper.
  * Pooling at the chosen level: torchvision's roi_align CPU kernel with
    aligned=False and a fixed sampling_ratio (2): start = coord * scale, RoI
    size max(end - start, 1), bin = size / out, samples start + i * bin +
    (k + .5) * bin / sr; a sample with y < -1 or y > H_l (x likewise) adds 0,
    y is clamped at 0 and one at or past the last row uses the last row
    alone; bilinear weights, averaged over sr * sr samples.

How it is computed
  The levels are concatenated into one [sum_l H_l * W_l, C] table. With a
  fixed sampling ratio every RoI has exactly oh * ow * sr * sr samples, so
  each RoI becomes 4 * sr^2 = 16 (row index, weight) pairs per bin: the row
  is off_l + y * W_l + x with the RoI's level offset, width and scale looked
  up per RoI; weights are 0 for dropped samples, padded (valid=False) and
  non-finite RoIs. The forward is a weighted sum of row gathers (one fused
  loop per chunk of RoIs); the backward (`jax.custom_vjp`) is its exact
  transpose, a scatter-add of weight * cotangent rows into the table, whose
  concatenation autodiff splits back into per-level gradients. Cost is that
  of single-level RoIAlign with sampling_ratio 2 for the same RoIs,
  independent of their sizes and levels; no RoI is computed on a level it
  does not use.

  Both run over chunks of `chunk_size` RoIs (8) in a `lax.scan`, recomputing
  the taps per chunk; this matters for the backward: the scatter's update
  rows (R * 784 rows of C floats, 800 MB for 1000 RoIs and C = 256) are then
  made 8 RoIs at a time instead of at once.

Measured (XLA:CPU, 2 shared vCPUs, noisy +-30%; median (min) ms; levels of an
800 x 1216 input: 200x304, 100x152, 50x76, 25x38, C = 256; proposal-like RoIs,
sqrt(area) log-uniform in 16..800 px, aspect ratio 0.5..2, clipped to the
image; jitted; fwd+bwd = grad of sum(out * g) w.r.t. all levels):

                                          R = 512          R = 1000
  multiscale_roi_align      fwd         79 (60)          93 (91)
                            fwd+bwd    134 (105)        162 (142)
  torchvision MultiScaleRoIAlign fwd   240 (232)        436 (400)
    (CPU, 2 threads)        fwd+bwd    904 (833)       1740 (1682)
  ops.roi_align.roi_align on P2 only,  148 (131)        279 (274)
    sampling_ratio=2        fwd+bwd   1012 (908)       2521 (1957)
  vmap over 2 images x 1000 RoIs: fwd 263 (253), fwd+bwd 350 (275).

  Of the 1000-RoI forward, ~38 ms is the concatenation of the levels (83 MB)
  and ~45 ms the gathers; of the backward, ~70 ms is zeroing the 83 MB
  gradient table (page faults of fresh buffers dominate on this machine).
  What else was measured (1000 RoIs): the same gathers without chunks and
  autodiff's backward (one scatter-add per tap): fwd+bwd 1.7-2.1 s; one
  unchunked custom scatter of all tap rows: 0.74-1.06 s; chunks of 2, 4, 8,
  16, 32 RoIs: fwd+bwd 130, 124, 124, 127, 154 ms (min). Not measured on a
  GPU/TPU, where fewer, larger chunks are probably better (chunk_size).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["infer_scales_tv", "level_bounds_tv", "level_area_thresholds_tv",
           "map_levels_tv", "multiscale_roi_align"]


def _pair(v) -> tuple[int, int]:
  if isinstance(v, (tuple, list)):
    if len(v) != 2:
      raise ValueError(f"expected an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])
  return int(v), int(v)


def _div(a, b):
  """a / b as an IEEE division even when b is a constant (XLA may otherwise
  multiply by a rounded reciprocal)."""
  b = jnp.broadcast_to(jnp.asarray(b, a.dtype), a.shape)
  return a / lax.optimization_barrier(b)


# --------------------------------------------------------------------------
# Scales and levels (torchvision's _setup_scales and LevelMapper).
# --------------------------------------------------------------------------

def infer_scales_tv(feature_sizes: Sequence[Sequence[int]],
                    image_size: Sequence[int]) -> tuple[float, ...]:
  """Per-level spatial scales as torchvision's ``_infer_scale``.

  ``scale_l = 2 ** round(log2(H_l / image_h))`` (float32 log2, round half to
  even), from the heights only, as torchvision. torchvision takes
  ``image_h`` as the largest resized (unpadded) image height of the first
  batch it sees and keeps the result; any height within a factor ``sqrt(2)``
  of ``H_l / scale_l`` gives the same scales, so the canvas height does.

  Args:
    feature_sizes: ``(H_l, W_l)`` per level (static ints).
    image_size: ``(height, width)`` of the input image.

  Returns:
    One float per level, e.g. ``(0.25, 0.125, 0.0625, 0.03125)`` for P2..P5.
  """
  ih = float(image_size[0])
  out = []
  for h, _ in feature_sizes:
    approx = np.float32(float(h) / ih)
    out.append(float(2.0 ** float(np.round(np.log2(approx)))))
  return tuple(out)


def level_bounds_tv(scales: Sequence[float]) -> tuple[int, int]:
  """``(k_min, k_max)`` of torchvision's LevelMapper: ``int(-log2(scale))``
  of the first and last level (float32 log2, truncated)."""
  k = [int(-np.log2(np.float32(s))) for s in (scales[0], scales[-1])]
  return k[0], k[1]


def _tv_level(area: np.float32, k_min, k_max, s0, lvl0, eps) -> int:
  """One area through torchvision's float32 level formula (numpy, host)."""
  f32 = np.float32
  s = np.sqrt(f32(area))
  x = f32(s / f32(s0))
  with np.errstate(divide="ignore"):
    lg = f32(np.log2(np.float64(x)))
  t = f32(f32(lg + f32(lvl0)) + f32(eps))
  return int(min(max(np.floor(t), k_min), k_max))


@functools.lru_cache(maxsize=None)
def level_area_thresholds_tv(k_min: int, k_max: int,
                             canonical_scale: float = 224,
                             canonical_level: int = 4,
                             eps: float = 1e-6) -> np.ndarray:
  """Smallest float32 areas at which torchvision's LevelMapper moves up.

  torchvision's level of a box is ``clamp(floor(lvl0 + log2(sqrt(area) / s0)
  + eps), k_min, k_max)`` in float32, a non-decreasing step function of the
  area. Entry ``n`` is the smallest float32 area whose level is at least
  ``k_min + 1 + n``, found by bisection over the float32 values with that
  formula evaluated on the host (float32 sqrt and divisions, log2 correctly
  rounded to float32). Comparing areas against these thresholds gives
  that level exactly, independent of how the device rounds log2 (torch
  itself may differ at a rare area where its sqrt is not correctly rounded;
  see the module docstring).

  Args:
    k_min, k_max: the first and last level (:func:`level_bounds_tv`).
    canonical_scale, canonical_level, eps: ``s0``, ``lvl0``, ``eps`` above
      (torchvision's 224, 4, 1e-6).

  Returns:
    ``[k_max - k_min]`` float32, increasing (read-only, cached); for the
    defaults and levels 2..5: 12543.98, 50175.93, 200703.67.
  """
  out = []
  for n in range(k_min + 1, k_max + 1):
    lo, hi = 0, int(np.float32(np.inf).view(np.int32))  # bit patterns
    # Invariant: level(bits lo) < n <= level(bits hi).
    while hi - lo > 1:
      mid = (lo + hi) // 2
      a = np.int32(mid).view(np.float32)
      if _tv_level(a, k_min, k_max, canonical_scale, canonical_level, eps) >= n:
        hi = mid
      else:
        lo = mid
    out.append(np.int32(hi).view(np.float32))
  out = np.asarray(out, np.float32)
  out.setflags(write=False)
  return out


def map_levels_tv(rois: jax.Array, k_min: int, k_max: int,
                  canonical_scale: float = 224, canonical_level: int = 4,
                  eps: float = 1e-6) -> jax.Array:
  """torchvision's LevelMapper: level index (0 = k_min) of each RoI.

  ``clamp(floor(k0 + log2(sqrt(area) / s0) + eps), k_min, k_max) - k_min``
  with ``area = (x2 - x1) * (y2 - y1)`` (no +1), evaluated by comparing the
  float32 area with :func:`level_area_thresholds_tv` (exact float32
  semantics; see the module docstring for the one known ulp-level
  difference from torch on some CPUs).

  Args:
    rois: ``[..., 4]`` float32 boxes, torchvision convention.
    k_min, k_max: the first and last level (:func:`level_bounds_tv`).
    canonical_scale, canonical_level, eps: torchvision's ``s0 = 224``,
      ``k0 = 4``, ``eps = 1e-6``.

  Returns:
    ``[...]`` int32 in ``[0, k_max - k_min]``, or -1 where torchvision's level
    is undefined (negative or NaN area: its float level is NaN and the RoI
    lands in no level, so its output stays zero).
  """
  rois = rois.astype(jnp.float32)
  area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
  thr = level_area_thresholds_tv(k_min, k_max, canonical_scale,
                                 canonical_level, eps)
  level = (area[..., None] >= jnp.asarray(thr)).sum(-1).astype(jnp.int32)
  return jnp.where(area >= 0, level, -1)


# --------------------------------------------------------------------------
# The op: bilinear taps into one table of all levels, chunked gathers and
# scatters.
# --------------------------------------------------------------------------

def _taps(rois, level, ok, cfg):
  """Flat table rows and weights of every bilinear tap of a set of RoIs.

  Args:
    rois: [n, 4] float32 image pixels (torchvision convention).
    level: [n] int32 level index (only read where ok).
    ok: [n] bool; False gives all-zero weights (and row 0).
    cfg: static configuration (see `multiscale_roi_align`).

  Returns:
    idx [n, oh, ow, T] int32 rows of the concatenated table and
    w [n, oh, ow, T] float32 weights, T = 4 * sr * sr (corners x samples),
    already divided by sr * sr; 0 for samples outside [-1, size] (torchvision
    drops those) and for RoIs that are not ok.
  """
  (shapes, offsets, scales, oh, ow, sr, _) = cfg
  f32 = jnp.float32
  lv = jnp.where(ok, level, 0)
  hs = jnp.asarray(np.array([s_[0] for s_ in shapes], np.int32))[lv]
  ws = jnp.asarray(np.array([s_[1] for s_ in shapes], np.int32))[lv]
  off = jnp.asarray(np.array(offsets, np.int32))[lv]
  sc = jnp.asarray(np.array(scales, np.float32))[lv]
  rois = jnp.where(ok[:, None], rois.astype(f32), 0.0)
  # torchvision's roi_align, aligned=False: start = coord * scale, the RoI
  # size is at least one feature pixel, bin = size / pooled.
  x1 = rois[:, 0] * sc
  y1 = rois[:, 1] * sc
  rw = jnp.maximum(rois[:, 2] * sc - x1, 1.0)
  rh = jnp.maximum(rois[:, 3] * sc - y1, 1.0)
  bw = _div(rw, ow)
  bh = _div(rh, oh)

  def axis(start, b, n_out, size):
    """Taps along one axis: lo, hi [n, n_out, sr] int32 and their weights."""
    i = jnp.arange(n_out, dtype=f32)[None, :, None]
    k = jnp.arange(sr, dtype=f32)[None, None, :]
    b = b[:, None, None]
    # torchvision's order: start + i * bin + (k + .5) * bin / grid.
    pos = (start[:, None, None] + i * b) + _div((k + 0.5) * b, sr)
    size = size[:, None, None]
    inside = (pos >= -1.0) & (pos <= size.astype(f32))
    p = jnp.maximum(pos, 0.0)
    lo = jnp.floor(p).astype(jnp.int32)
    last = lo >= size - 1          # at or past the last row: use it alone
    lo = jnp.where(last, size - 1, lo)
    hi = jnp.where(last, size - 1, lo + 1)
    frac = jnp.where(last, 0.0, p - lo.astype(f32))
    lo = jnp.where(inside, lo, 0)
    hi = jnp.where(inside, hi, 0)
    return (lo, hi, jnp.where(inside, 1.0 - frac, 0.0),
            jnp.where(inside, frac, 0.0))

  ylo, yhi, wylo, wyhi = axis(y1, bh, oh, hs)    # [n, oh, sr]
  xlo, xhi, wxlo, wxhi = axis(x1, bw, ow, ws)    # [n, ow, sr]
  scale = jnp.where(ok, f32(1.0 / (sr * sr)), 0.0)[:, None, None, None, None]
  ex = lambda a: a[:, None, None, None, None]
  idx, wts = [], []
  for yy, wy in ((ylo, wylo), (yhi, wyhi)):
    for xx, wx in ((xlo, wxlo), (xhi, wxhi)):
      # [n, oh, ow, sr_y, sr_x]
      idx.append(ex(off) + yy[:, :, None, :, None] * ex(ws)
                 + xx[:, None, :, None, :])
      wts.append(wy[:, :, None, :, None] * wx[:, None, :, None, :] * scale)
  n = rois.shape[0]
  return (jnp.stack(idx, -1).reshape(n, oh, ow, -1),
          jnp.stack(wts, -1).reshape(n, oh, ow, -1))


def _chunked(x, chunk):
  """[R, ...] -> [R_pad / chunk, chunk, ...], padded with zeros (False)."""
  pad = (-x.shape[0]) % chunk
  x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], 0)
  return x.reshape((-1, chunk) + x.shape[1:])


def _forward(table, rois, level, ok, cfg):
  """table [N, C] float32 -> [R, oh, ow, C] float32."""
  chunk = cfg[-1]
  r = rois.shape[0]

  def body(_, part):
    idx, w = _taps(*part, cfg)
    out = None
    for t in range(idx.shape[-1]):   # one fused loop of weighted row gathers
      v = w[..., t, None] * table[idx[..., t]]
      out = v if out is None else out + v
    return None, out

  parts = tuple(_chunked(a, chunk) for a in (rois, level, ok))
  _, out = lax.scan(body, None, parts)
  return out.reshape((-1,) + out.shape[2:])[:r]


def _backward(n_rows, rois, level, ok, g, cfg):
  """Transpose of `_forward`: g [R, oh, ow, C] -> d table [N, C] float32."""
  chunk = cfg[-1]
  c = g.shape[-1]

  def body(d, part):
    *geo, gc = part
    idx, w = _taps(*geo, cfg)
    upd = w[..., None] * gc[:, :, :, None, :]       # [n, oh, ow, T, C]
    return d.at[idx.reshape(-1)].add(upd.reshape(-1, c)), None

  parts = tuple(_chunked(a, chunk) for a in (rois, level, ok, g))
  d, _ = lax.scan(body, jnp.zeros((n_rows, c), jnp.float32), parts)
  return d


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pool(table, rois, level, ok, cfg):
  return _forward(table, rois, level, ok, cfg)


def _pool_fwd(table, rois, level, ok, cfg):
  return _forward(table, rois, level, ok, cfg), (table.shape[0], rois, level, ok)


def _pool_bwd(cfg, res, g):
  n_rows, rois, level, ok = res
  d = _backward(n_rows, rois, level, ok, g.astype(jnp.float32), cfg)
  return d, jnp.zeros_like(rois), None, None


_pool.defvjp(_pool_fwd, _pool_bwd)


def multiscale_roi_align(features: Sequence[jax.Array],
                         rois: jax.Array,
                         image_size: Sequence[int] | None = None,
                         valid: jax.Array | None = None,
                         *,
                         output_size: int | Sequence[int] = 7,
                         sampling_ratio: int = 2,
                         scales: Sequence[float] | None = None,
                         canonical_scale: float = 224,
                         canonical_level: int = 4,
                         chunk_size: int = 8) -> jax.Array:
  """torchvision's ``MultiScaleRoIAlign`` for one image, static shapes.

  Each RoI is pooled from one level, chosen by torchvision's LevelMapper
  (:func:`map_levels_tv`), with torchvision's ``roi_align(aligned=False)`` at
  that level's scale.

  Args:
    features: per-level maps of ONE image, ``[H_l, W_l, C]`` each (float32 or
      bfloat16), finest first, one level per power of two: P2..P5 (the FPN
      models' featmap_names '0'..'3'; the 'pool' level is not pooled from).
    rois: ``[R, 4]`` float32 ``(x1, y1, x2, y2)`` in input-image pixels,
      torchvision convention (no +1).
    image_size: ``(height, width)`` from which the scales are inferred
      (:func:`infer_scales_tv`; torchvision uses the largest resized image
      size of its first batch; the padded canvas gives the same scales).
      Not needed when ``scales`` is given.
    valid: optional ``[R]`` bool; False rows (padding) give zeros and send no
      gradient.
    output_size: int or ``(oh, ow)``; 7 in the FPN box head.
    sampling_ratio: samples per bin and axis, >= 1 (2 in the FPN models);
      the adaptive ``0`` is not supported here.
    scales: per-level spatial scales (e.g. ``(1/4, 1/8, 1/16, 1/32)``),
      overriding the inference.
    canonical_scale, canonical_level: the LevelMapper's ``s0 = 224`` and
      ``k0 = 4``.
    chunk_size: RoIs per step of the gather/scatter loops (speed only).

  Returns:
    ``[R, oh, ow, C]`` in the features' dtype (accumulated in float32).

  Rules (torchvision): level ``k = clamp(floor(k0 + log2(sqrt(area) / s0) +
  1e-6), k_min, k_max)`` with ``area = (x2 - x1) * (y2 - y1)``; RoIs whose
  area is negative (exactly one side inverted) have no level in torchvision
  and give zeros here too. At the level: start = coord * scale, RoI size
  ``max(end - start, 1)``, ``bin = size / out``, samples at ``start + i * bin
  + (k + .5) * bin / sr``, bilinear with torchvision's borders (a sample with
  y < -1 or y > H_l, x likewise, contributes 0; y is clamped to >= 0 and at
  the last row the last row is used alone), averaged over ``sr * sr``. With
  a single level torchvision skips the mapper: every RoI is pooled from it.
  RoIs with a NaN/inf coordinate give zeros (torchvision's result there is
  undefined).

  Gradients flow to every level's features (a custom VJP, the exact
  transpose); RoIs get a zero gradient (as torchvision, whose RoI align has
  no gradient for boxes). Works under jit and vmap (features ``[B, H_l, W_l,
  C]`` per level, rois ``[B, R, 4]``).
  """
  if len(features) == 0:
    raise ValueError("need at least one feature map")
  for f in features:
    if f.ndim != 3 or f.shape[-1] != features[0].shape[-1]:
      raise ValueError("features must be [H_l, W_l, C] with one C, got "
                       f"{[tuple(f.shape) for f in features]}")
  if rois.ndim != 2 or rois.shape[-1] != 4:
    raise ValueError(f"rois must be [R, 4], got {rois.shape}")
  shapes = tuple((int(f.shape[0]), int(f.shape[1])) for f in features)
  c = int(features[0].shape[-1])
  if scales is None:
    if image_size is None:
      raise ValueError("pass image_size (to infer the scales) or scales")
    scales = infer_scales_tv(shapes, image_size)
  if len(scales) != len(features):
    raise ValueError(f"{len(scales)} scales for {len(features)} levels")
  oh, ow = _pair(output_size)
  sr = int(sampling_ratio)
  if min(oh, ow, sr, chunk_size) < 1:
    raise ValueError("output_size, sampling_ratio and chunk_size must be >= 1 "
                     "(the adaptive sampling_ratio=0 is not supported here)")
  offsets = tuple(int(v) for v in np.cumsum([0] + [h * w for h, w in shapes])[:-1])
  cfg = (shapes, offsets, tuple(float(s) for s in scales), oh, ow, sr,
         int(chunk_size))
  r = rois.shape[0]
  if r == 0:
    return jnp.zeros((0, oh, ow, c), features[0].dtype)
  rois = lax.stop_gradient(rois).astype(jnp.float32)
  if len(features) == 1:   # torchvision: plain roi_align, no level mapping
    level = jnp.zeros((r,), jnp.int32)
  else:
    k_min, k_max = level_bounds_tv(scales)
    if k_max - k_min + 1 != len(features):
      raise ValueError(f"scales {scales} are not one level per power of two")
    level = map_levels_tv(rois, k_min, k_max, canonical_scale, canonical_level)
  ok = (level >= 0) & jnp.isfinite(rois).all(-1)
  if valid is not None:
    ok &= valid.astype(bool)
  table = jnp.concatenate(
      [f.astype(jnp.float32).reshape(-1, c) for f in features], 0)
  out = _pool(table, rois, level, ok, cfg)
  return out.astype(features[0].dtype)
