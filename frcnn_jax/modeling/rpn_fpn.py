"""The FPN models' region proposal network, as torchvision's, static shapes.

Shapes::

  B  images;  L  levels (P2..P6, 5);  H_l, W_l  level size on the canvas
  A  anchors per cell (3 ratios x 1 size);  N_l = H_l * W_l * A;  N = sum N_l
  k_l = min(pre_nms_top_n, N_l);  P  proposals kept (post_nms_top_n)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, torchvision's
convention (no +1: w = x2 - x1).

torchvision (``rpn.RegionProposalNetwork`` with ``AnchorGenerator`` and
``RPNHead``), reproduced:

* Head: on every level the same 3x3 conv(s) with ReLU (one in v1, two in
  v2, no norm), then a 1x1 conv to A objectness logits and one to 4A deltas.
  Outputs are flattened cell-major, anchor-minor, levels concatenated (P2
  first): the order of :func:`image_anchors`.
* Anchors: per level one size (32..512) and three ratios, torchvision's
  rounded cell anchors (``ops.anchors.cell_anchors_tv``) shifted by ``cell *
  stride`` with ``stride = padded size // level size`` per axis, computed per
  image from its padded extent (see :mod:`frcnn_jax.modeling.fpn`): exactly
  what torchvision computes for that image alone (P6's stride is 61 on an
  800-row extent, not 64). Cells outside the extent do not exist in
  torchvision: ``valid`` is False there (never proposed, never trained).
* Proposals (``filter_proposals``): the ``pre_nms_top_n`` best logits of
  EACH level (1000 in test, 2000 in training), decoded with weights (1, 1,
  1, 1) and torchvision's clamp, clipped to the image (its real size,
  ``im_info``), small boxes (side < ``min_size`` = 1e-3) removed, scores
  ``sigmoid(logit) >= score_thresh``, NMS at 0.7 per level (levels never
  suppress each other: torchvision's ``batched_nms`` with the level as the
  category; here ``ops.nms.batched_nms`` over a level axis), and the
  ``post_nms_top_n`` best over all levels (1000 / 2000), in score order.
  Removed boxes are masked (score -inf) instead of dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frcnn_jax.modeling import fpn as fpn_lib
from frcnn_jax.modeling import layers
from ops import anchors as anchor_ops
from ops import boxes as box_ops
from ops import nms as nms_ops


class RPNHeadFPN(nnx.Module):
  """torchvision's ``RPNHead(in_channels, A, conv_depth)``.

  Parameter names as its state dict: ``conv.{d}.0`` (the 3x3 convs),
  ``cls_logits``, ``bbox_pred``; all initialised N(0, 0.01), biases 0.
  """

  def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1,
               *, dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, kernel_init=fpn_lib.normal_init(0.01),
              dtype=dtype, rngs=rngs)
    self.num_anchors = int(num_anchors)
    self.conv = nnx.List([nnx.List([fpn_lib.conv2d(in_channels, in_channels,
                                                   3, **kw)])
                          for _ in range(conv_depth)])
    self.cls_logits = fpn_lib.conv2d(in_channels, num_anchors, 1, **kw)
    self.bbox_pred = fpn_lib.conv2d(in_channels, 4 * num_anchors, 1, **kw)

  def __call__(self, features: Sequence[jax.Array],
               extents: Sequence[jax.Array] | None = None):
    """Objectness logits and deltas of every anchor of every level.

    Args:
      features: ``[B, H_l, W_l, F]`` per level.
      extents: per level ``[B, 2]`` extents to mask the 3x3 convs' inputs
        with (see :mod:`frcnn_jax.modeling.fpn`), or None.

    Returns:
      ``(logits [B, N], deltas [B, N, 4])`` float32, levels concatenated.
    """
    # One set of weights over the levels: tied (layers.tied) so that XLA:CPU
    # computes each level's weight gradient by itself.
    n = len(features)
    exts = [None] * n if extents is None else list(extents)
    t = list(features)
    for seq in self.conv:
      t = [fpn_lib.mask_outside(x, e) for x, e in zip(t, exts)]
      t = [jax.nn.relu(y) for y in layers.apply_shared(seq[0], t)]
    logits = [y.astype(jnp.float32).reshape(y.shape[0], -1)
              for y in layers.apply_shared(self.cls_logits, t)]
    deltas = [y.astype(jnp.float32).reshape(y.shape[0], -1, 4)
              for y in layers.apply_shared(self.bbox_pred, t)]
    return jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)


def cell_anchors(sizes: Sequence[float],
                 ratios: Sequence[float]) -> list[np.ndarray]:
  """torchvision's cell anchors of each level (one size per level)."""
  return [anchor_ops.cell_anchors_tv((s,), ratios) for s in sizes]


def image_anchors(level_shapes: Sequence[tuple[int, int]],
                  level_extents: Sequence[jax.Array], extent: jax.Array,
                  cells: Sequence[np.ndarray]):
  """All anchors of one image, torchvision's, and which ones exist.

  Args:
    level_shapes: static ``(H_l, W_l)`` of the levels on the canvas.
    level_extents: ``[2]`` int32 per level: the image's level size in
      torchvision (:func:`frcnn_jax.modeling.fpn.level_extents`).
    extent: ``[2]`` int32, the image's padded size (torchvision's tensor).
    cells: ``[A, 4]`` cell anchors per level.

  Returns:
    ``(anchors [N, 4] float32, valid [N] bool)``; anchors of level l are
    ``cells[l] + (x * sx, y * sy, x * sx, y * sy)`` at cell ``(y, x)`` with
    ``(sy, sx) = extent // level_extent`` (torchvision's integer strides),
    cell-major, anchor-minor; ``valid`` is False outside the level extent.
  """
  anchors, valid = [], []
  for (h, w), ext, cell in zip(level_shapes, level_extents, cells):
    stride = extent // jnp.maximum(ext, 1)
    ys = (jnp.arange(h, dtype=jnp.int32) * stride[0]).astype(jnp.float32)
    xs = (jnp.arange(w, dtype=jnp.int32) * stride[1]).astype(jnp.float32)
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    shifts = jnp.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    anchors.append((shifts + jnp.asarray(cell)[None]).reshape(-1, 4))
    inside = ((jnp.arange(h) < ext[0])[:, None] &
              (jnp.arange(w) < ext[1])[None, :])
    valid.append(jnp.repeat(inside.reshape(-1), cell.shape[0]))
  return jnp.concatenate(anchors, 0), jnp.concatenate(valid, 0)


def fpn_proposals(logits, deltas, anchors, valid, im_info, *,
                  level_sizes: Sequence[int], pre_nms_top_n: int,
                  post_nms_top_n: int, nms_thresh: float = 0.7,
                  min_size: float = 1e-3, score_thresh: float = 0.0,
                  weights=box_ops.RPN_WEIGHTS_TV,
                  batched_nms_fn=nms_ops.batched_nms):
  """Proposals of one image, torchvision's ``filter_proposals``.

  Args:
    logits: ``[N]`` objectness logits (levels concatenated).
    deltas: ``[N, 4]``.
    anchors: ``[N, 4]``; valid ``[N]`` bool (anchors that exist).
    im_info: ``[3]`` (height, width, scale): boxes are clipped to
      ``[0, width] x [0, height]``.
    level_sizes: static ``N_l`` per level (sum ``N``).
    pre_nms_top_n: static, per level.
    post_nms_top_n: static output size ``P``.
    batched_nms_fn: the per-level NMS (``ops.nms.batched_nms`` or, on
      GPU/TPU, the Pallas kernel's from ``ops.pallas_nms.select_nms(...,
      batched=True)``); same results.

  Returns:
    ``(boxes [P, 4], scores [P] (sigmoid), valid [P] bool, level [P]
    int32)`` in descending score order; padded rows are zero with valid
    False and level -1.
  """
  # The levels side by side in one [L, max N_l] table (padding points at
  # an appended -inf), so that one top_k / decode / NMS serves all levels:
  # far fewer ops to compile than a loop over levels, same results.
  n = sum(level_sizes)
  nmax = max(level_sizes)
  table = np.full((len(level_sizes), nmax), n, np.int32)
  start = 0
  for l, size in enumerate(level_sizes):
    table[l, :size] = np.arange(start, start + size)
    start += size
  k = min(pre_nms_top_n, nmax)
  ok = valid & ~jnp.isnan(logits)
  lg = jnp.concatenate([jnp.where(ok, logits, -jnp.inf),
                        jnp.full((1,), -jnp.inf, logits.dtype)])
  top, pos = jax.lax.top_k(lg[table], k)                   # [L, k]
  idx = jnp.minimum(jnp.take_along_axis(jnp.asarray(table), pos, 1), n - 1)
  b = box_ops.decode_tv(deltas[idx], anchors[idx], weights)   # [L, k, 4]
  b = box_ops.clip_tv(b, im_info[0], im_info[1])
  s = jax.nn.sigmoid(top)
  keep = (jnp.isfinite(top) & box_ops.remove_small_tv(b, min_size) &
          (s >= score_thresh))
  scores = jnp.where(keep, s, -jnp.inf)
  boxes = jnp.where(keep[..., None], b, 0.0)
  boxes, scores, level, _, ok = batched_nms_fn(
      boxes, scores, nms_thresh, post_nms_top_n, -1.0, pixel_offset=0.0)
  return boxes, scores, ok, level
