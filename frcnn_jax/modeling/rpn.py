"""Region proposal network: the head and proposal generation.

Shapes::

  B  images;  H, W  feature map (stride 16);  C  trunk channels
  A  anchors per cell (len(ratios) * len(scales));  N = H * W * A
  P  proposals kept after NMS (post_nms_top_n)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, inclusive
convention (w = x2 - x1 + 1).

The seed's score layout: ``RPN_cls_score`` has 2A channels, all A background
logits first, then all A foreground logits (its ``reshape(x, 2)``), and the
softmax runs over each (background, foreground) pair. Deltas have 4A channels,
anchor-major (``4 * a + coord``). Anchors and the NHWC outputs reshaped to
``[N, ...]`` share the order (cell-major, anchor-minor).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from frcnn_jax.modeling import layers
from ops import boxes as box_ops
from ops import nms as nms_ops


class RPNHead(nnx.Module):
  """3x3 conv + ReLU, then 1x1 convs for 2A objectness logits and 4A deltas.

  Weights are initialised N(0, 0.01), biases 0 (the seed's ``normal_init``).
  """

  def __init__(self, in_channels: int, num_anchors: int,
               conv_channels: int = 512, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.01)
    conv = lambda i, o, k, p: layers.Conv(
        i, o, (k, k), padding=((p, p), (p, p)), kernel_init=init,
        bias_init=nnx.initializers.zeros, dtype=dtype, param_dtype=jnp.float32,
        rngs=rngs)
    self.num_anchors = num_anchors
    self.conv = conv(in_channels, conv_channels, 3, 1)
    self.cls_score = conv(conv_channels, 2 * num_anchors, 1, 0)
    self.bbox_pred = conv(conv_channels, 4 * num_anchors, 1, 0)

  def __call__(self, features):
    """RPN outputs for a batch.

    Args:
      features: ``[B, H, W, C]``.

    Returns:
      ``(logits [B, N, 2], deltas [B, N, 4])`` float32; ``logits[..., 0]`` is
      background and ``logits[..., 1]`` foreground of each anchor.
    """
    b, h, w, _ = features.shape
    a = self.num_anchors
    x = jax.nn.relu(self.conv(features))
    s = self.cls_score(x).astype(jnp.float32)         # [B, H, W, 2A]
    logits = jnp.stack([s[..., :a], s[..., a:]], axis=-1)  # [B, H, W, A, 2]
    deltas = self.bbox_pred(x).astype(jnp.float32)    # [B, H, W, 4A]
    return logits.reshape(b, h * w * a, 2), deltas.reshape(b, h * w * a, 4)


def anchors_in_extent(height: int, width: int, num_anchors: int,
                      extent) -> jax.Array:
  """bool ``[height * width * num_anchors]``: the anchors of the cells of a
  ``height x width`` map (cell-major, anchor-minor) inside ``extent``
  ``[2]`` (rows, cols): those an image's own feature map has."""
  rows = jnp.arange(height)[:, None] < extent[0]
  cols = jnp.arange(width)[None, :] < extent[1]
  return jnp.repeat((rows & cols).reshape(-1), num_anchors)


def generate_proposals(scores, deltas, anchors, im_info, *,
                       pre_nms_top_n: int, post_nms_top_n: int,
                       nms_thresh: float = 0.7, min_size: float = 0.0,
                       nms_fn=nms_ops.nms, anchor_valid=None,
                       decode_style: str = "exact"):
  """Proposals of one image, as the seed's ``_ProposalLayer``.

  Decode every anchor (``decode_style``: see ``ops.boxes.decode``), clip to
  the image's real content (``im_info``), optionally drop boxes smaller than
  ``min_size * scale`` (the seed leaves this off: ``min_size = 0``), keep the
  ``pre_nms_top_n`` best scores, apply NMS at ``nms_thresh`` and keep at most
  ``post_nms_top_n``. Anchors with ``anchor_valid`` False (cells of the canvas
  outside the image's own feature map, which the seed's single-image map does
  not have) are never proposed.

  Args:
    scores: ``[N]`` foreground probabilities.
    deltas: ``[N, 4]``.
    anchors: ``[N, 4]``.
    im_info: ``[3]`` (height, width, scale).
    pre_nms_top_n: static; ``<= 0`` or ``>= N`` keeps all ``N``.
    post_nms_top_n: static output size ``P``.
    nms_fn: the NMS implementation (``ops.nms.nms`` or, on GPU/TPU, the
      Pallas kernel from ``ops.pallas_nms.select_nms``); same results.

  Returns:
    ``(boxes [P, 4], scores [P], valid [P] bool)`` sorted by score; padded
    rows are zero boxes with score 0 and ``valid`` False. NaN scores are
    never selected.
  """
  boxes = box_ops.clip(box_ops.decode(deltas, anchors, style=decode_style),
                       im_info[0], im_info[1])
  scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  if anchor_valid is not None:
    scores = jnp.where(anchor_valid, scores, -jnp.inf)
  if min_size > 0:
    w, h = box_ops.widths_heights(boxes)
    big = (w >= min_size * im_info[2]) & (h >= min_size * im_info[2])
    scores = jnp.where(big, scores, -jnp.inf)
  n = scores.shape[0]
  k = n if pre_nms_top_n <= 0 else min(pre_nms_top_n, n)
  top_scores, top_idx = jax.lax.top_k(scores, k)
  top_boxes = boxes[top_idx]
  keep, valid = nms_fn(top_boxes, top_scores, nms_thresh, post_nms_top_n)
  out_boxes = jnp.where(valid[:, None], top_boxes[keep], 0.0)
  out_scores = jnp.where(valid, top_scores[keep], 0.0)
  return out_boxes, out_scores, valid
