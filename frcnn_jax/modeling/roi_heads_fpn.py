"""The FPN models' box head, predictor and test-time post-processing.

Shapes::

  R  RoIs (all images);  P  proposals per image;  oh = ow = 7;  F = 256
  D  representation size (1024);  K  classes incl. background (91 for
  torchvision's COCO models: its 91 slots, 'N/A' ones included)
  Dt  detections per image (100)

Boxes are (x1, y1, x2, y2) float32 in network-input pixels, torchvision's
convention (no +1), except :func:`postprocess_detections`' output.

* v1 ``TwoMLPHead``: flatten, fc6 (F * 49 -> D) ReLU, fc7 (D -> D) ReLU.
* v2 ``FastRCNNConvFCHead((F, 7, 7), [256] * 4, [1024], BatchNorm2d)``: four
  3x3 convs (no bias) each with BatchNorm and ReLU, flatten, one fc (-> D)
  with ReLU. Parameter names as torchvision's ``nn.Sequential`` (``convs.i``
  here is its ``i``; ``fc`` its ``len(convs) + 1``).
* Both flatten our ``[R, 7, 7, C]`` in (h, w, c) order; torchvision flattens
  (c, h, w): the weight import permutes the first fc's rows.
* ``FastRCNNPredictor``: ``cls_score`` (K) and ``bbox_pred`` (4K, columns
  class-major ``4 * k + coord``).
* Inference (``RoIHeads.postprocess_detections``): softmax; per-class boxes
  decoded with weights (10, 10, 5, 5) and the clamp, clipped to the image;
  background dropped; scores > 0.05; boxes with a side < 1e-2 removed; NMS at
  0.5 per class; the best 100 over all classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from frcnn_jax.modeling import fpn as fpn_lib
from ops import boxes as box_ops
from ops import nms as nms_ops


def _linear(i: int, o: int, *, dtype, rngs) -> nnx.Linear:
  return nnx.Linear(i, o, kernel_init=fpn_lib.torch_linear_init,
                    bias_init=nnx.initializers.zeros, dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


class TwoMLPHead(nnx.Module):
  """torchvision's v1 box head: ``fc6``, ``fc7`` with ReLU."""

  def __init__(self, in_channels: int, pool_size: int,
               representation_size: int = 1024, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.fc6 = _linear(in_channels * pool_size * pool_size,
                       representation_size, dtype=dtype, rngs=rngs)
    self.fc7 = _linear(representation_size, representation_size,
                       dtype=dtype, rngs=rngs)

  def __call__(self, x):
    """``[R, oh, ow, C]`` -> ``[R, D]``."""
    x = x.reshape(x.shape[0], -1)
    return jax.nn.relu(self.fc7(jax.nn.relu(self.fc6(x))))


class ConvFCHead(nnx.Module):
  """torchvision's v2 box head: (3x3 conv, BatchNorm, ReLU) x n, fc, ReLU."""

  def __init__(self, in_channels: int, pool_size: int,
               conv_channels=(256, 256, 256, 256),
               representation_size: int = 1024, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    convs, c = [], in_channels
    for o in conv_channels:
      convs.append(fpn_lib.conv_norm(c, o, 3, norm=True,
                                     kernel_init=fpn_lib.kaiming_normal_fan_out,
                                     dtype=dtype, rngs=rngs))
      c = o
    self.convs = nnx.List(convs)
    self.fc = _linear(c * pool_size * pool_size, representation_size,
                      dtype=dtype, rngs=rngs)

  def __call__(self, x):
    """``[R, oh, ow, C]`` -> ``[R, D]``."""
    for seq in self.convs:
      x = jax.nn.relu(fpn_lib.apply_seq(seq, x))
    return jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))


class FastRCNNPredictor(nnx.Module):
  """``cls_score`` (K logits) and ``bbox_pred`` (4K deltas)."""

  def __init__(self, in_features: int, num_classes: int, *,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.num_classes = int(num_classes)
    self.cls_score = _linear(in_features, num_classes, dtype=dtype, rngs=rngs)
    self.bbox_pred = _linear(in_features, 4 * num_classes, dtype=dtype,
                             rngs=rngs)

  def __call__(self, x):
    """``[R, D]`` -> ``(logits [R, K], deltas [R, K, 4])`` float32."""
    logits = self.cls_score(x).astype(jnp.float32)
    deltas = self.bbox_pred(x).astype(jnp.float32)
    return logits, deltas.reshape(x.shape[0], -1, 4)


def postprocess_detections(proposals, proposal_valid, class_logits,
                           box_deltas, im_info, *,
                           weights=box_ops.BOX_HEAD_WEIGHTS_TV,
                           score_thresh: float = 0.05,
                           nms_thresh: float = 0.5,
                           max_detections: int = 100,
                           min_size: float = 1e-2):
  """torchvision's ``postprocess_detections`` for one image, then our output
  convention.

  Args:
    proposals: ``[P, 4]`` (torchvision convention, network-input pixels);
      proposal_valid ``[P]`` bool.
    class_logits: ``[P, K]``; box_deltas ``[P, K, 4]``.
    im_info: ``[3]`` (height, width, scale).

  Returns:
    dict with ``boxes [Dt, 4]`` in ORIGINAL image pixels, inclusive
    convention (torchvision's box divided by the scale, then ``x2 - 1``,
    ``y2 - 1``: the same box, ``w = x2 - x1 + 1``), ``scores [Dt]``,
    ``classes [Dt] int32`` (1..K-1, model slots), ``valid [Dt]``; also
    ``boxes_tv [Dt, 4]``: torchvision's boxes in network-input pixels.
  """
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
  boxes = box_ops.decode_tv(box_deltas, proposals[:, None, :], weights)
  boxes = box_ops.clip_tv(boxes, im_info[0], im_info[1])[:, 1:]   # [P, K-1, 4]
  probs = probs[:, 1:]
  present = (proposal_valid[:, None] & (probs > score_thresh) &
             box_ops.remove_small_tv(boxes, min_size))
  scores = jnp.where(present, probs, -jnp.inf)
  out_boxes, out_scores, cls, _, valid = nms_ops.batched_nms(
      jnp.transpose(boxes, (1, 0, 2)), scores.T, nms_thresh, max_detections,
      score_thresh, pixel_offset=0.0)
  orig = out_boxes / im_info[2]
  orig = orig - jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  return dict(boxes=jnp.where(valid[:, None], orig, 0.0),
              scores=jnp.where(valid, out_scores, 0.0),
              classes=jnp.where(valid, cls + 1, 0).astype(jnp.int32),
              valid=valid,
              boxes_tv=jnp.where(valid[:, None], out_boxes, 0.0))
