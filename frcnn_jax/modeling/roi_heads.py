"""RoI box head: pooling, class scores and box deltas, and post-processing.

Shapes::

  B  images;  H, W, C  trunk feature map;  R  RoIs per image
  oh, ow  pooled size (7 x 7);  D  head feature size (2048 for ResNet)
  K  classes including background (0);  K' = K, or 1 if class-agnostic
  Dt detections kept per image (max_detections, 100)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, inclusive
convention (w = x2 - x1 + 1), except the detections returned by
:func:`postprocess_detections`, which are in original image pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ops import boxes as box_ops
from ops import nms as nms_ops
from ops import roi_align as roi_ops
from ops import roi_crop


class BoxPredictor(nnx.Module):
  """``RCNN_cls_score`` (K) and ``RCNN_bbox_pred`` (4K, or 4 class-agnostic).

  Initialised N(0, 0.01) and N(0, 0.001), biases 0, as the seed.
  ``bbox_pred`` columns are class-major groups of 4: ``4 * k + coord``.
  """

  def __init__(self, in_features: int, num_classes: int,
               class_agnostic: bool = False, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    lin = lambda o, std: nnx.Linear(
        in_features, o, kernel_init=nnx.initializers.normal(std),
        bias_init=nnx.initializers.zeros, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)
    self.num_classes = num_classes
    self.class_agnostic = class_agnostic
    self.cls_score = lin(num_classes, 0.01)
    self.bbox_pred = lin(4 if class_agnostic else 4 * num_classes, 0.001)

  def __call__(self, x):
    """``x [R, D]`` -> ``(scores [R, K], deltas [R, K', 4])``, float32."""
    scores = self.cls_score(x).astype(jnp.float32)
    deltas = self.bbox_pred(x).astype(jnp.float32)
    return scores, deltas.reshape(x.shape[0], -1, 4)


POOLING_MODES = ("align", "pool", "crop")


def pool_rois(features, rois, *, mode: str, output_size: int,
              spatial_scale: float, sampling_ratio: int = 0,
              aligned: bool = False, extent=None):
  """Pools every image's RoIs from its own feature map.

  Args:
    features: ``[B, H, W, C]``.
    rois: ``[B, R, 4]`` network-input pixels (no gradient flows to them).
    mode: ``'align'`` (RoIAlign, the seed's ``res101.yml``), ``'pool'``
      (RoIPool, ``vgg16.yml``) or ``'crop'`` (the seed's RoI crop: affine grid,
      bilinear sampling, 2x2 max pool; ``config.py``'s default).
    extent: ``[B, 2]`` int32 size of each image's own feature map on the
      canvas, or None (the whole canvas). RoIAlign and RoI crop then sample
      as the seed does from a map of that size (the last row/column is the
      image's, not the canvas padding's). RoIPool needs nothing: its bins are
      maxima of ReLU features, which are >= 0 = the masked padding.

  Returns:
    ``[B, R, oh, ow, C]`` in the features' dtype.
  """
  rois = jax.lax.stop_gradient(rois)
  if extent is None:
    extent = jnp.broadcast_to(jnp.asarray(features.shape[1:3], jnp.int32),
                              (features.shape[0], 2))
  if mode == "align":
    fn = lambda f, r, e: roi_ops.roi_align(f, r, output_size, spatial_scale,
                                           sampling_ratio, aligned=aligned,
                                           valid_size=e)
  elif mode == "pool":
    fn = lambda f, r, e: roi_ops.roi_pool(f, r, output_size, spatial_scale)
  elif mode == "crop":
    fn = lambda f, r, e: roi_crop.roi_crop(f, r, output_size, spatial_scale,
                                           valid_size=e)
  else:
    raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got "
                     f"{mode!r}")
  return jax.vmap(fn)(features, rois, extent)


def select_class_deltas(deltas, labels):
  """The deltas of each RoI's labelled class (the seed's ``gather``).

  Args:
    deltas: ``[..., K', 4]``.
    labels: ``[...]`` int; ignored when ``K' == 1`` (class-agnostic).

  Returns:
    ``[..., 4]``.
  """
  if deltas.shape[-2] == 1:
    return deltas[..., 0, :]
  idx = jnp.clip(labels, 0, deltas.shape[-2] - 1)[..., None, None]
  return jnp.take_along_axis(deltas, idx, axis=-2)[..., 0, :]


def postprocess_detections(rois, rois_valid, cls_prob, deltas, im_info, *,
                           stds=(0.1, 0.1, 0.2, 0.2),
                           means=(0.0, 0.0, 0.0, 0.0),
                           nms_thresh: float = 0.3,
                           score_thresh: float = 0.0,
                           max_detections: int = 100,
                           decode_style: str = "exact"):
  """Final detections of one image, as the seed's ``test_net``.

  Deltas are un-normalised (``* stds + means``) and decoded per class against
  the RoIs, clipped to the real content (``im_info`` height and width) and
  divided by ``im_info``'s scale (original image pixels). Then, per class
  1..K-1, scores ``> score_thresh`` and NMS at ``nms_thresh``; the best
  ``max_detections`` over all classes are kept.

  Args:
    rois: ``[R, 4]``; rois_valid ``[R]`` bool.
    cls_prob: ``[R, K]`` softmax probabilities.
    deltas: ``[R, K', 4]`` normalised deltas.
    im_info: ``[3]`` (height, width, scale).

  Returns:
    dict with ``boxes [Dt, 4]`` (original pixels), ``scores [Dt]``,
    ``classes [Dt] int32`` (1..K-1) and ``valid [Dt] bool``; invalid rows are
    zeros.
  """
  k = cls_prob.shape[-1]
  deltas = deltas * jnp.asarray(stds, jnp.float32) + jnp.asarray(
      means, jnp.float32)
  boxes = box_ops.decode(deltas, rois[:, None, :],
                         style=decode_style)              # [R, K', 4]
  boxes = box_ops.clip(boxes, im_info[0], im_info[1]) / im_info[2]
  boxes = jnp.broadcast_to(boxes, (rois.shape[0], k, 4))
  scores = jnp.where(rois_valid[:, None], cls_prob, -jnp.inf)
  out_boxes, out_scores, cls, _, valid = nms_ops.batched_nms(
      jnp.transpose(boxes, (1, 0, 2))[1:], scores.T[1:], nms_thresh,
      max_detections, score_thresh)
  return dict(boxes=jnp.where(valid[:, None], out_boxes, 0.0),
              scores=jnp.where(valid, out_scores, 0.0),
              classes=jnp.where(valid, cls + 1, 0).astype(jnp.int32),
              valid=valid)
