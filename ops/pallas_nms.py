"""Greedy NMS with a Pallas kernel for the suppression bitmask (GPU/TPU).

Same operation and same outputs as :func:`ops.nms.nms` (read its docstring for
the contract); only the engine differs. Boxes are ``(x1, y1, x2, y2)``
float32 pixels in the seed's *inclusive-pixel* convention ``w = x2 - x1 + 1``
(sides clamped at 0); box ``i`` suppresses box ``j`` when
``IoU(i, j) > iou_threshold``, with the IoU formula and evaluation order of
the seed's ``nms_cpu``::

    iw = max(0, min(x2_i, x2_j) - max(x1_i, x1_j) + 1)    (same for ih)
    inter = iw * ih;  union = area_i + area_j - inter
    suppress = union > 0 and inter / union > iou_threshold

Design (the classic GPU NMS: sort, bitmask, sequential greedy pass):

1. Sort by descending score in jnp (stable: ties by lower index; absent
   entries, i.e. a non-finite score or coordinate, sort last, are never kept
   and never suppress), exactly as :mod:`ops.nms` does. The sorted list is
   padded with absent entries to ``P``, a multiple of 256.
2. A Pallas kernel computes the suppression bitmask: for a tile pair (row
   tile ``i`` of ``ROW_TILE = 128`` boxes, column tile ``j`` of
   ``COL_TILE = 256`` boxes) it evaluates the IoU of every pair on chip and
   packs ``IoU > threshold`` for sorted columns strictly after the row into
   int32 words, 32 columns per word: ``mask[w, r]`` bit ``b`` is set when
   sorted box ``r`` suppresses sorted box ``32 w + b`` (``32 w + b > r``;
   bit 31 is the sign bit). Tile pairs entirely below the diagonal are only
   zero-filled (``pl.when``), so the work is the upper triangle.
3. A greedy pass in jnp walks the sorted rows in tiles of
   ``GREEDY_TILE = 256``: a tile's candidates are those not yet removed
   (a packed ``removed`` bitset), the tile is resolved internally from its
   own ``256 x 256`` diagonal bits by the fixed-point iteration of
   :mod:`ops.nms` (exactly the sequential greedy result), and the mask rows
   of the boxes it keeps are OR-ed into ``removed``. It stops as soon as
   ``max_output`` boxes are kept.

Per class (:func:`batched_nms`, the FPN RPN's per-level NMS). The ``K * N``
entries of ``ops.nms.batched_nms`` are one sorted list; each box carries its
class as a fifth coordinate (rows ``[5, R]``, columns ``[C, 5]``) and the
kernel sets a bit only between boxes of the same class, so the greedy pass
is the per-class greedy NMS of every class at once, without torchvision's
coordinate offsets. ``pixel_offset`` (static) drops the ``+ 1`` for
torchvision's IoU.

Blocked prefix (memory). Steps 2-3 run on blocks of ``block_rows`` sorted
rows (default ``BLOCK_ROWS = 2048``): block ``k`` computes the mask of its
rows against the sorted columns from its own first row to the end
(``block_rows x (P - k * block_rows) / 32`` words), runs the greedy pass over
it, and the next block runs only while fewer than ``max_output`` boxes are
kept (``lax.cond``). So the mask of the whole ``N x N / 32`` problem (for
``N = 12000``: ``12032 * 376 * 4`` bytes = 18 MB) is never materialised; the
largest block mask is ``block_rows * P / 8`` bytes (2048 rows, N = 12000:
3.1 MB), and a run that keeps ``max_output`` boxes early (e.g. 6000 -> 300)
computes only the first blocks. Blocks have static shapes (one kernel
specialisation per block, unrolled in Python, e.g. 6 for N = 12000). Under
``jax.vmap`` the ``lax.cond`` turns into a select, so all blocks are
computed (results stay exact).

Portability. The kernel uses only elementwise float32 math, int32 shifts,
iota, a sum over 32 sublanes (distinct powers of two: the sum is the
bitwise OR) and static ref slices. Block shapes satisfy both TPU Mosaic's
(8, 128) rule (rows ``(4, 128)`` of a ``[4, R]`` array, columns ``(256, 4)``
of a ``[C, 4]`` array, output ``(8, 128)`` int32) and Pallas-Triton's
power-of-two rule. On GPU the kernel is lowered with Triton (explicit
``pltriton.CompilerParams``; this JAX defaults ``pl.pallas_call`` on GPU to
Mosaic GPU, whose ``pallas_call`` entry point is deprecated), on TPU with
Mosaic (both grid axes ``parallel``). The threshold enters as a ``(1, 1)``
array, so no scalar memory space is needed.

Platform choice. Unless a ``backend`` is pinned, the kernel follows the
platform the program is *lowered* for, not the host's default backend: each
``pallas_call`` is staged as ``lax.platform_dependent`` with a Triton branch
(``cuda``, ``rocm``), a Mosaic branch (``tpu``) and an interpret-mode branch
(any other platform), and lowering keeps only the branch of its platform.
So a train step traced on a CPU host and lowered with
``lowering_platforms=('cuda',)`` holds the Triton kernel, and the same traced
program run on the CPU interprets it. :func:`auto_nms` (``select_nms('auto')``)
does the same between this kernel (GPU/TPU) and :func:`ops.nms.nms` (CPU).

Verified on this CPU-only machine: the outputs in ``interpret=True`` mode
(tests/ops/test_pallas_nms.py, against :func:`ops.nms.nms` and a numpy
``nms_cpu``), and that the jitted function, and the whole R50-C4 train step
and predict that use it, *lower* for ``cuda`` (Triton) and ``tpu`` (Mosaic)
(tests/test_lowering.py). Not verified: compilation by the
Triton / Mosaic compilers and execution on a device. One caveat there: GPU
compilers may fuse ``area_i + area_j - iw * ih`` into an FMA or use an
approximate division, which can flip a decision only when an IoU is within
about one float32 ulp of the threshold (``ops.nms`` under XLA:GPU has the
same exposure to FMA contraction).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ops import nms as nms_lib

ROW_TILE = 128  # Suppressor boxes per kernel program (lane axis).
WORDS_PER_TILE = 8  # 32-column words per kernel program (sublane axis).
COL_TILE = 32 * WORDS_PER_TILE  # Suppressed boxes per kernel program.
ALIGN = 256  # The sorted list is padded to a multiple of this.
GREEDY_TILE = 256  # Rows resolved together in the greedy pass.
BLOCK_ROWS = 2048  # Default rows per mask block (multiple of ALIGN).

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_DEVICE_PLATFORMS = _GPU_PLATFORMS + ("tpu",)

NmsFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray]]


# ----------------------------------------------------------------------------
# The kernel: suppression bitmask of one tile pair.
# ----------------------------------------------------------------------------
def _mask_kernel(thr_ref, rows_ref, cols_ref, out_ref, *, offset: float,
                 labelled: bool):
  """One (row tile, column tile) pair of the suppression bitmask.

  Refs (block shapes): ``thr_ref (1, 1)`` float32 threshold; ``rows_ref
  (D, ROW_TILE)`` float32 coordinate-major suppressor boxes; ``cols_ref
  (COL_TILE, D)`` float32 box-major suppressed boxes; ``out_ref
  (WORDS_PER_TILE, ROW_TILE)`` int32, ``out[k, r]`` bit ``b`` = row ``r``
  suppresses column ``32 k + b`` of the tile (and that column comes after
  the row in the sorted order). ``D`` is 4 (``x1, y1, x2, y2``), or 5 when
  ``labelled``: the fifth is a class label (a small integer as float32),
  and only boxes of equal labels suppress each other. ``offset`` (static)
  is the inclusive-pixel ``+ 1`` (0: torchvision's IoU).
  """
  i = pl.program_id(0)
  j = pl.program_id(1)
  # Any column after any row? The last column vs the first row.
  needed = (j + 1) * COL_TILE > i * ROW_TILE + 1

  @pl.when(jnp.logical_not(needed))
  def _():
    out_ref[...] = jnp.zeros(out_ref.shape, jnp.int32)

  @pl.when(needed)
  def _():
    thr = thr_ref[...]  # [1, 1]
    rx1 = rows_ref[0:1, :]  # [1, ROW_TILE]
    ry1 = rows_ref[1:2, :]
    rx2 = rows_ref[2:3, :]
    ry2 = rows_ref[3:4, :]
    r_area = (jnp.maximum(rx2 - rx1 + offset, 0.0)
              * jnp.maximum(ry2 - ry1 + offset, 0.0))
    row_pos = i * ROW_TILE + lax.broadcasted_iota(jnp.int32, (1, ROW_TILE), 1)
    bit = lax.broadcasted_iota(jnp.int32, (32, 1), 0)
    pow2 = jnp.left_shift(jnp.ones((32, 1), jnp.int32), bit)
    for k in range(WORDS_PER_TILE):
      lo, hi = 32 * k, 32 * (k + 1)
      cx1 = cols_ref[lo:hi, 0:1]  # [32, 1]
      cy1 = cols_ref[lo:hi, 1:2]
      cx2 = cols_ref[lo:hi, 2:3]
      cy2 = cols_ref[lo:hi, 3:4]
      c_area = (jnp.maximum(cx2 - cx1 + offset, 0.0)
                * jnp.maximum(cy2 - cy1 + offset, 0.0))
      iw = jnp.maximum(
          jnp.minimum(rx2, cx2) - jnp.maximum(rx1, cx1) + offset, 0.0)
      ih = jnp.maximum(
          jnp.minimum(ry2, cy2) - jnp.maximum(ry1, cy1) + offset, 0.0)
      inter = iw * ih  # [32, ROW_TILE]
      union = r_area + c_area - inter
      ok = union > 0.0
      sup = ok & (inter / jnp.where(ok, union, 1.0) > thr)
      col_pos = j * COL_TILE + lo + bit  # [32, 1]
      sup = sup & (col_pos > row_pos)
      if labelled:
        sup = sup & (cols_ref[lo:hi, 4:5] == rows_ref[4:5, :])
      # Distinct powers of two: the (wrapping) int32 sum is the bitwise OR.
      out_ref[k:k + 1, :] = jnp.sum(jnp.where(sup, pow2, 0), axis=0,
                                    keepdims=True)


def _compiler_params(platform: str):
  """Pallas compiler parameters for ``platform`` (None: interpret/CPU)."""
  if platform in _GPU_PLATFORMS:
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
    return pltriton.CompilerParams(num_warps=4, num_stages=1)
  if platform == "tpu":
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
  return None


def _mask_call(rows, cols, thr, *, interpret: bool, platform: str | None,
               offset: float = 1.0):
  """One ``pallas_call`` of :func:`_mask_kernel` (shapes checked by caller)."""
  d, r = rows.shape
  c = cols.shape[0]
  return pl.pallas_call(
      functools.partial(_mask_kernel, offset=offset, labelled=d == 5),
      out_shape=jax.ShapeDtypeStruct((c // 32, r), jnp.int32),
      grid=(r // ROW_TILE, c // COL_TILE),
      in_specs=[
          pl.BlockSpec((1, 1), lambda i, j: (0, 0)),
          pl.BlockSpec((d, ROW_TILE), lambda i, j: (0, i)),
          pl.BlockSpec((COL_TILE, d), lambda i, j: (j, 0)),
      ],
      out_specs=pl.BlockSpec((WORDS_PER_TILE, ROW_TILE), lambda i, j: (j, i)),
      interpret=interpret,
      compiler_params=None if interpret else _compiler_params(platform),
      name="nms_suppression_mask",
  )(thr, rows, cols)


def suppression_mask(rows: jnp.ndarray, cols: jnp.ndarray, threshold, *,
                     interpret: bool | None = False,
                     platform: str | None = None,
                     pixel_offset: float = 1.0) -> jnp.ndarray:
  """Packed suppression bitmask of sorted rows against sorted columns.

  Rows and columns are two windows of one sorted list that start at the same
  sorted position: row ``r`` and column ``c`` are positions ``s + r`` and
  ``s + c``, so only ``c > r`` can be suppressed by ``r``.

  Args:
    rows: ``[4, R]`` float32 coordinate-major boxes ``(x1, y1, x2, y2)``
      (inclusive pixels), ``R`` a multiple of ``ROW_TILE``. Must be finite.
      ``[5, R]``: the fifth row is a class label (small integers as
      float32) and only boxes of the same label suppress each other.
    cols: ``[C, 4]`` (or ``[C, 5]``, with labels) float32 boxes, ``C`` a
      multiple of ``COL_TILE``.
    threshold: scalar float32, suppression when ``IoU > threshold``.
    interpret: True: Pallas interpret mode on every platform. False: the
      compiled kernel (lowering for the CPU then fails: Pallas has no CPU
      compiler). None: the compiled kernel on GPU/TPU, interpret mode on any
      other platform.
    platform: pins the kernel to one platform (``'cuda'``/``'rocm'``/
      ``'gpu'``: Triton, ``'tpu'``: Mosaic, anything else: interpret mode
      when ``interpret`` is None). None: the kernel follows the platform the
      program is *lowered* for (``lax.platform_dependent``): the traced
      program holds one branch per platform and lowering keeps only the
      branch of its platform, so ``jax.jit(f).lower(lowering_platforms=
      ('cuda',))`` on a CPU host gets the Triton kernel, and the same traced
      ``f`` run on the CPU gets interpret mode.
    pixel_offset: static; 1.0 the inclusive-pixel IoU, 0.0 torchvision's.

  Returns:
    ``[C // 32, R]`` int32: bit ``b`` of ``mask[w, r]`` is set when row ``r``
    suppresses column ``32 w + b`` and ``32 w + b > r``.
  """
  d, r = rows.shape
  c = cols.shape[0]
  if r % ROW_TILE or c % COL_TILE:
    raise ValueError(f"rows {r} / cols {c} not multiples of "
                     f"{ROW_TILE} / {COL_TILE}")
  if d not in (4, 5) or cols.shape[1] != d:
    raise ValueError(f"rows {rows.shape} / cols {cols.shape}: want [4, R] "
                     f"and [C, 4] boxes, or [5, R] and [C, 5] with labels")
  thr = jnp.asarray(threshold, jnp.float32).reshape(1, 1)
  rows = rows.astype(jnp.float32)
  cols = cols.astype(jnp.float32)
  call = functools.partial(_mask_call, offset=float(pixel_offset))
  if interpret:
    return call(rows, cols, thr, interpret=True, platform=None)
  if platform is not None:
    platform = platform.lower()
    on_device = platform in _DEVICE_PLATFORMS
    return call(rows, cols, thr,
                interpret=interpret is None and not on_device,
                platform=platform)
  triton = functools.partial(call, interpret=False, platform="cuda")
  mosaic = functools.partial(call, interpret=False, platform="tpu")
  other = functools.partial(call, interpret=interpret is None,
                            platform=None)
  return lax.platform_dependent(rows, cols, thr, cuda=triton, rocm=triton,
                                tpu=mosaic, default=other)


# ----------------------------------------------------------------------------
# Greedy pass over the bitmask (jnp).
# ----------------------------------------------------------------------------
def _unpack(words: jnp.ndarray) -> jnp.ndarray:
  """``[..., W]`` int32 -> ``[..., 32 W]`` bool, bit ``b`` of word ``w`` at
  ``32 w + b``."""
  bits = (words[..., None] >> jnp.arange(32, dtype=jnp.int32)) & 1
  return bits.reshape(words.shape[:-1] + (32 * words.shape[-1],)) != 0


def _or_reduce(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Bitwise OR of int32 ``x`` over ``axis``."""
  return lax.reduce(x, jnp.int32(0), lax.bitwise_or, (axis,))


def _greedy_block(mask, r0: int, alive, state, cap: int):
  """Greedy decisions for sorted rows ``r0 .. r0 + R`` of one block.

  Args:
    mask: ``[(P - r0) // 32, R]`` int32 from :func:`suppression_mask`
      (columns relative to ``r0``).
    r0: static first sorted row of the block (a multiple of 32).
    alive: ``[P]`` bool, candidates.
    state: ``(count, removed [P // 32] int32, kept_pos [cap] int32)``.
    cap: stop after this many kept boxes.

  Returns:
    The updated state.
  """
  t_size = GREEDY_TILE
  num_tiles = mask.shape[1] // t_size
  w0 = r0 // 32
  tw = t_size // 32

  def cond(s):
    return (s[0] < num_tiles) & (s[1] < cap)

  def body(s):
    t, count, removed, kept_pos = s
    start = t * t_size  # Relative to r0.
    rows = lax.dynamic_slice_in_dim(mask, start, t_size, axis=1)  # [Wc, T]
    # own[j, i]: tile row i suppresses tile column j (only j > i).
    own = _unpack(lax.dynamic_slice_in_dim(rows, start // 32, tw, axis=0).T).T
    gone = _unpack(lax.dynamic_slice_in_dim(removed, w0 + start // 32, tw))
    cand = lax.dynamic_slice_in_dim(alive, r0 + start, t_size) & ~gone

    # keep[j] = cand[j] & no kept i < j suppresses j; iterating from cand
    # makes the first k entries exact after k steps (see ops.nms).
    def step(keep):
      return cand & ~jnp.any(own & keep[None, :], axis=1)

    def fix_cond(c):
      return jnp.any(c[0] != c[1])

    def fix_body(c):
      return step(c[0]), c[0]

    keep, _ = lax.while_loop(fix_cond, fix_body, (step(cand), cand))
    hit = _or_reduce(jnp.where(keep[None, :], rows, 0), axis=1)  # [Wc]
    removed = removed.at[w0:].set(removed[w0:] | hit)
    dest = jnp.where(keep, count + jnp.cumsum(keep) - 1, cap)  # cap: dropped.
    pos = r0 + start + jnp.arange(t_size, dtype=jnp.int32)
    kept_pos = kept_pos.at[dest].set(pos, mode="drop")
    return (t + 1, count + jnp.sum(keep, dtype=jnp.int32), removed, kept_pos)

  count, removed, kept_pos = state
  _, count, removed, kept_pos = lax.while_loop(
      cond, body, (jnp.int32(0), count, removed, kept_pos))
  return count, removed, kept_pos


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------
def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold,
        max_output: int, *, backend: str | None = None,
        interpret: bool | None = None, block_rows: int = BLOCK_ROWS,
        pixel_offset: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS (the seed's ``nms_cpu``) with a Pallas bitmask kernel.

  Same contract and same outputs as :func:`ops.nms.nms`: the kept input
  indices in descending score order (ties: lower index first), truncated to
  ``max_output``; suppression when ``IoU > iou_threshold`` (any threshold,
  Python float or traced scalar); entries with a non-finite score or
  coordinate are absent (never kept, never suppress); inverted boxes have
  area 0 (kept, suppress nothing for thresholds >= 0); no NaN produced;
  ``N = 0`` or all-absent inputs give ``valid`` all False.

  Complexity: sort ``O(N log N)``; kernel ``O(E * N / 2)`` IoUs where ``E``
  is the sorted prefix covered by the blocks that were needed (whole blocks
  of ``block_rows``); greedy pass ``O(E * N / 32)`` word operations in
  ``E / 256`` sequential tile steps (plus their fixed-point iterations).
  Memory: the largest block mask, ``block_rows * P / 8`` bytes (``P`` = N
  rounded up to 256; 3.1 MB for N = 12000), plus ``O(N)``.

  Args:
    boxes: ``[N, 4]`` float32 ``(x1, y1, x2, y2)``, inclusive pixels.
    scores: ``[N]`` float32.
    iou_threshold: suppression threshold (``IoU > threshold`` suppresses).
    max_output: static number of output slots.
    backend: pins the platform the kernel is compiled for (``'gpu'``/
      ``'cuda'``/``'rocm'``: Triton, ``'tpu'``: Mosaic, ``'cpu'``); None
      (default): the platform the program is lowered for, chosen at lowering
      time (see :func:`suppression_mask`), so one traced program gets Triton
      on GPU, Mosaic on TPU and interpret mode on CPU.
    interpret: run the kernel in Pallas interpret mode; None means "only off
      GPU/TPU" (the only way Pallas runs on a CPU; for tests; ``False``
      makes lowering for the CPU fail).
    block_rows: static rows per mask block, a positive multiple of 256 (a
      memory/early-stop knob; results do not depend on it).
    pixel_offset: static; 1.0 the inclusive-pixel IoU, 0.0 torchvision's
      (as :func:`ops.nms.nms`).

  Returns:
    ``(indices [max_output] int32, valid [max_output] bool)``; padded slots
    have ``indices = -1`` and ``valid = False``.

  Works under ``jax.jit`` and ``jax.vmap``.
  """
  scores = jnp.asarray(scores)
  return _nms_impl(jnp.asarray(boxes), scores, jnp.ones(scores.shape, bool),
                   None, iou_threshold, max_output,
                   offset=float(pixel_offset), backend=backend,
                   interpret=interpret, block_rows=block_rows)


def _nms_impl(boxes, scores, present, labels, iou_threshold, max_output: int,
              *, offset: float = 1.0, backend: str | None = None,
              interpret: bool | None = None, block_rows: int = BLOCK_ROWS):
  """Shared body of :func:`nms` and :func:`batched_nms` (``labels [N]``
  int32 or None: boxes of different labels never suppress each other)."""
  if block_rows <= 0 or block_rows % ALIGN:
    raise ValueError(f"block_rows must be a positive multiple of {ALIGN}, "
                     f"got {block_rows}")
  platform = backend.lower() if backend else None
  n = scores.shape[0]
  if max_output == 0 or n == 0:
    return nms_lib._none_kept(max_output)  # pylint: disable=protected-access
  b, alive, order = nms_lib._prepare(  # pylint: disable=protected-access
      boxes, scores, present)
  if labels is not None:   # A fifth coordinate: small integers, exact.
    b = jnp.concatenate([b, labels[order].astype(jnp.float32)[None]], 0)
  p = -(-n // ALIGN) * ALIGN
  b = jnp.pad(b, ((0, 0), (0, p - n)))  # [D, P], padding = zero boxes.
  alive = jnp.pad(alive, (0, p - n))  # Padding is absent.
  b_cols = b.T  # [P, D]
  threshold = jnp.asarray(iou_threshold, jnp.float32)
  cap = min(max_output, n)

  state = (jnp.int32(0), jnp.zeros((p // 32,), jnp.int32),
           jnp.full((cap,), -1, jnp.int32))
  for r0 in range(0, p, block_rows):
    rb = min(block_rows, p - r0)

    def run(s, r0=r0, rb=rb):
      mask = suppression_mask(b[:, r0:r0 + rb], b_cols[r0:], threshold,
                              interpret=interpret, platform=platform,
                              pixel_offset=offset)
      return _greedy_block(mask, r0, alive, s, cap)

    if r0 == 0:
      state = run(state)
    else:
      state = lax.cond(state[0] < cap, run, lambda s: s, state)
  count, _, positions = state
  return nms_lib._kept_indices(  # pylint: disable=protected-access
      order, positions, count, cap, max_output)


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold,
                max_detections: int, score_threshold=0.0, *,
                pixel_offset: float = 1.0, backend: str | None = None,
                interpret: bool | None = None, block_rows: int = BLOCK_ROWS):
  """Per-class greedy NMS, then the best ``max_detections`` over all classes,
  with the Pallas bitmask kernel.

  Same contract and same outputs as :func:`ops.nms.batched_nms` (``boxes
  [K, N, 4]`` or ``[N, 4]``, ``scores [K, N]`` -> ``(boxes [D, 4], scores
  [D], classes [D], indices [D], valid [D])``; ``pixel_offset=0.0`` is
  torchvision's ``batched_nms``, which the FPN RPN runs with the level as
  the class). The ``K * N`` entries are one sorted list whose class label
  rides along as a fifth coordinate: the kernel sets a suppression bit only
  between boxes of the same class, so no coordinate offsets (torchvision's
  trick) and no precision loss. ``backend``, ``interpret``, ``block_rows``
  as in :func:`nms`.
  """
  impl = functools.partial(_nms_impl, backend=backend, interpret=interpret,
                           block_rows=block_rows)
  return nms_lib.batched(boxes, scores, iou_threshold, max_detections,
                         score_threshold, pixel_offset, impl)


def auto_batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold,
                     max_detections: int, score_threshold=0.0, *,
                     pixel_offset: float = 1.0):
  """:func:`batched_nms` on GPU/TPU, :func:`ops.nms.batched_nms` elsewhere,
  chosen at lowering (as :func:`auto_nms`)."""
  def device(b, s):
    return batched_nms(b, s, iou_threshold, max_detections, score_threshold,
                       pixel_offset=pixel_offset)

  def host(b, s):
    return nms_lib.batched_nms(b, s, iou_threshold, max_detections,
                               score_threshold, pixel_offset=pixel_offset)

  return lax.platform_dependent(boxes, scores, cuda=device, rocm=device,
                                tpu=device, default=host)


def auto_nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold,
             max_output: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """:func:`nms` on GPU/TPU, :func:`ops.nms.nms` elsewhere, chosen at lowering.

  Both branches are traced (``lax.platform_dependent``); lowering keeps the
  one of the platform it lowers for. Same contract and outputs as
  :func:`ops.nms.nms`.
  """
  def device(b, s):
    return nms(b, s, iou_threshold, max_output)

  def host(b, s):
    return nms_lib.nms(b, s, iou_threshold, max_output)

  return lax.platform_dependent(boxes, scores, cuda=device, rocm=device,
                                tpu=device, default=host)


def select_nms(choice: str = "auto", platform: str | None = None, *,
               batched: bool = False) -> NmsFn:
  """The NMS implementation for a config value and platform.

  Args:
    choice: ``'auto'`` (Pallas on GPU/TPU, :func:`ops.nms.nms` elsewhere),
      ``'jnp'`` (always :func:`ops.nms.nms`) or ``'pallas'`` (always this
      module's kernel; interpret mode on CPU, which is slow and meant for
      testing). A platform name (``'cpu'``, ``'gpu'``, ``'cuda'``, ``'rocm'``,
      ``'tpu'``) is accepted too and means ``'auto'`` on that platform.
    platform: pins the target platform. None (default): the choice between
      platforms is made when the program is lowered, for the platform it is
      lowered for (:func:`auto_nms`; :func:`nms` with ``backend=None``), not
      from the host's default backend: a train step traced on a CPU host and
      lowered with ``lowering_platforms=('cuda',)`` gets the Triton kernel.

    batched: the per-class variant instead (:func:`batched_nms`,
      :func:`auto_batched_nms`, :func:`ops.nms.batched_nms`).

  Returns:
    A function ``(boxes [N, 4], scores [N], iou_threshold, max_output) ->
    (indices [max_output] int32, valid [max_output] bool)`` with the
    contract of :func:`ops.nms.nms` (``batched``: the signature and
    contract of :func:`ops.nms.batched_nms`).
  """
  choice = choice.lower()
  if choice in _DEVICE_PLATFORMS + ("cpu",):
    choice, platform = "auto", choice
  platform = platform.lower() if platform else None
  host, kernel, auto = ((nms_lib.batched_nms, batched_nms, auto_batched_nms)
                        if batched else (nms_lib.nms, nms, auto_nms))
  if choice == "jnp":
    return host
  if choice == "pallas":
    return kernel if platform is None else functools.partial(
        kernel, backend=platform)
  if choice == "auto":
    if platform is None:
      return auto
    if platform in _DEVICE_PLATFORMS:
      return functools.partial(kernel, backend=platform)
    return host
  raise ValueError(f"unknown NMS choice {choice!r}: use 'auto', 'jnp', "
                   "'pallas' or a platform name")


def nms_for_backend(platform: str | None = None) -> NmsFn:
  """``select_nms('auto', platform)``: Pallas on GPU/TPU, jnp elsewhere
  (None: decided at lowering, :func:`auto_nms`)."""
  return select_nms("auto", platform)
