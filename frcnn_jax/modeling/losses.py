"""Losses of the seed: softmax cross-entropy and its weighted smooth-L1.

Shapes::

  B  images;  N  anchors per image;  R  sampled RoIs per image;  K  classes

All losses are float32 scalars, finite for any input the pipeline can produce
(no labelled anchors, no valid RoIs, padded batches): every mean divides by
``max(count, 1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(pred, target, inside_weights, outside_weights,
              sigma: float = 1.0):
  """Elementwise weighted smooth-L1, as the seed's ``_smooth_l1_loss``.

  ``x = inside * (pred - target)``;
  ``l = 0.5 * sigma^2 * x^2`` if ``|x| < 1 / sigma^2`` else
  ``|x| - 0.5 / sigma^2``; returns ``outside * l`` (same shape as ``pred``).
  The caller sums and averages over the dimensions the seed does.
  """
  s2 = sigma * sigma
  x = inside_weights * (pred - target)
  ax = jnp.abs(x)
  loss = jnp.where(ax < 1.0 / s2, 0.5 * s2 * x * x, ax - 0.5 / s2)
  return outside_weights * loss


def softmax_cross_entropy(logits, labels, weights):
  """Mean cross-entropy over entries with ``weights`` > 0.

  Args:
    logits: ``[..., K]`` float.
    labels: ``[...]`` int, in ``[0, K)`` where weighted (others are ignored).
    weights: ``[...]`` float or bool, 1 for entries that count.

  Returns:
    ``sum(w * ce) / max(sum(w), 1)`` — the seed's ``F.cross_entropy`` mean
    over the selected entries.
  """
  logits = logits.astype(jnp.float32)
  w = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
  ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(w > 0, ce * w, 0.0)) / jnp.maximum(jnp.sum(w), 1.0)


def rpn_losses(cls_logits, bbox_pred, targets, sigma: float = 3.0):
  """RPN objectness and box losses.

  Args:
    cls_logits: ``[B, N, 2]`` (background, foreground) logits per anchor.
    bbox_pred: ``[B, N, 4]`` deltas.
    targets: anchor targets batched over images (``labels [B, N]``,
      ``bbox_targets``, ``inside_weights``, ``outside_weights`` ``[B, N, 4]``).
    sigma: smooth-L1 sigma (the seed's 3).

  Returns:
    ``(loss_rpn_cls, loss_rpn_box)``: cross-entropy averaged over every
    labelled anchor of the batch (the seed gathers them across images
    before ``F.cross_entropy``), and smooth-L1 summed per image (``dim=[1, 2,
    3]``, already normalised by the outside weights) then averaged over
    images.
  """
  labels = targets["labels"]
  loss_cls = softmax_cross_entropy(cls_logits, jnp.maximum(labels, 0),
                                   labels >= 0)
  per = smooth_l1(bbox_pred.astype(jnp.float32), targets["bbox_targets"],
                  targets["inside_weights"], targets["outside_weights"], sigma)
  loss_box = jnp.mean(jnp.sum(per, axis=(1, 2)))
  return loss_cls, loss_box


def rcnn_losses(cls_score, bbox_pred, targets, sigma: float = 1.0):
  """Box-head classification and regression losses.

  Args:
    cls_score: ``[B, R, K]`` logits.
    bbox_pred: ``[B, R, 4]`` deltas of each RoI's labelled class (or the
      class-agnostic deltas).
    targets: proposal targets batched over images (``labels [B, R]``,
      ``valid [B, R]``, ``bbox_targets``, ``inside_weights``,
      ``outside_weights`` ``[B, R, 4]``).
    sigma: smooth-L1 sigma (the seed's 1).

  Returns:
    ``(loss_cls, loss_box)``: cross-entropy averaged over valid RoIs, and
    smooth-L1 summed over the 4 coordinates and averaged over valid RoIs
    (the seed's ``dim=[1]`` then ``mean()`` over all 128 * B RoIs; background
    rows contribute 0).
  """
  valid = targets["valid"]
  loss_cls = softmax_cross_entropy(cls_score, targets["labels"], valid)
  per = smooth_l1(bbox_pred.astype(jnp.float32), targets["bbox_targets"],
                  targets["inside_weights"], targets["outside_weights"], sigma)
  per = jnp.where(valid[..., None], per, 0.0)
  loss_box = jnp.sum(per) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  return loss_cls, loss_box
