"""frcnn_jax.modeling.losses on hand-made inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.modeling import losses as L


def test_smooth_l1_hand_values():
  # sigma 3: quadratic below 1/9, linear above.
  pred = jnp.array([0.05, 1.0, -2.0, 0.0])
  out = L.smooth_l1(pred, jnp.zeros(4), jnp.ones(4), jnp.ones(4), sigma=3.0)
  np.testing.assert_allclose(out, [0.5 * 9 * 0.0025, 1 - 0.5 / 9,
                                   2 - 0.5 / 9, 0.0], rtol=1e-6)
  # Inside weights scale the difference, outside weights the loss.
  out = L.smooth_l1(jnp.array([2.0]), jnp.zeros(1), jnp.array([0.25]),
                    jnp.array([3.0]), sigma=1.0)
  np.testing.assert_allclose(out, [3.0 * 0.5 * 0.25], rtol=1e-6)


def test_cross_entropy_ignores_unweighted():
  logits = jnp.array([[2.0, 0.0], [0.0, 0.0], [1e4, -1e4]])
  labels = jnp.array([0, 1, 1])
  out = L.softmax_cross_entropy(logits, labels, jnp.array([1, 1, 0]))
  ref = (np.log(1 + np.exp(-2.0)) + np.log(2.0)) / 2
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  assert float(L.softmax_cross_entropy(logits, labels, jnp.zeros(3))) == 0.0


def test_rpn_losses_match_the_seed_normalisation():
  rng = np.random.default_rng(0)
  b, n = 2, 30
  logits = rng.normal(size=(b, n, 2)).astype(np.float32)
  pred = rng.normal(size=(b, n, 4)).astype(np.float32)
  tgt = rng.normal(size=(b, n, 4)).astype(np.float32)
  labels = rng.integers(-1, 2, (b, n)).astype(np.int32)
  iw = np.repeat((labels == 1)[..., None], 4, -1).astype(np.float32)
  nex = (labels >= 0).sum(1)
  ow = np.repeat(np.where(labels >= 0, 1.0 / nex[:, None], 0)[..., None], 4,
                 -1).astype(np.float32)
  cls, box = L.rpn_losses(logits, pred, dict(
      labels=labels, bbox_targets=tgt, inside_weights=iw,
      outside_weights=ow))
  # CE over all labelled anchors of the batch together.
  sel = labels >= 0
  lg = logits[sel]
  lse = np.log(np.exp(lg).sum(1))
  ref_cls = np.mean(lse - lg[np.arange(len(lg)), labels[sel]])
  x = iw * (pred - tgt)
  sl1 = np.where(np.abs(x) < 1 / 9, 4.5 * x * x, np.abs(x) - 0.5 / 9)
  ref_box = np.mean((ow * sl1).sum((1, 2)))
  np.testing.assert_allclose(cls, ref_cls, rtol=1e-5)
  np.testing.assert_allclose(box, ref_box, rtol=1e-5)


def test_rcnn_losses_and_empty_batches_are_finite():
  rng = np.random.default_rng(1)
  b, r, k = 2, 8, 5
  score = rng.normal(size=(b, r, k)).astype(np.float32)
  pred = rng.normal(size=(b, r, 4)).astype(np.float32)
  tgt = rng.normal(size=(b, r, 4)).astype(np.float32)
  labels = rng.integers(0, k, (b, r)).astype(np.int32)
  iw = np.repeat((labels > 0)[..., None], 4, -1).astype(np.float32)
  valid = np.ones((b, r), bool)
  t = dict(labels=labels, valid=valid, bbox_targets=tgt, inside_weights=iw,
           outside_weights=iw)
  cls, box = L.rcnn_losses(score, pred, t)
  x = iw * (pred - tgt)
  sl1 = np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)
  np.testing.assert_allclose(box, (iw * sl1).sum() / (b * r), rtol=1e-5)
  assert np.isfinite(cls)
  t["valid"] = np.zeros((b, r), bool)
  cls, box = jax.jit(L.rcnn_losses)(score, pred, t)
  assert float(cls) == 0.0 and float(box) == 0.0
