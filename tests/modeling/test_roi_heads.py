"""RoI head pieces: class-delta selection and the seed's test_net post-processing."""
import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax.modeling import roi_heads
from tests.ops.test_boxes import np_bbox_transform_inv
from tests.ops.test_nms import nms_cpu


def test_select_class_deltas():
  d = jnp.arange(2 * 3 * 4 * 4, dtype=jnp.float32).reshape(2, 3, 4, 4)
  labels = jnp.array([[0, 3, 1], [2, 2, 0]])
  out = roi_heads.select_class_deltas(d, labels)
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(out[i, j], d[i, j, labels[i, j]])
  agnostic = d[:, :, :1]
  np.testing.assert_array_equal(
      roi_heads.select_class_deltas(agnostic, labels), d[:, :, 0])


def np_test_net(rois, probs, deltas, im_info, stds, nms_t, thresh, max_det):
  """faster-rcnn.pytorch test_net.py for one image (decode with the
  documented inclusive correction)."""
  r, k = probs.shape
  d = deltas.reshape(r, -1) * np.tile(stds, k)
  boxes = np.zeros((r, 4 * k))
  for c in range(k):
    b = np_bbox_transform_inv(rois, d[:, 4 * c:4 * c + 4])
    b[:, 2:] -= 1
    b[:, 0::2] = np.clip(b[:, 0::2], 0, im_info[1] - 1)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, im_info[0] - 1)
    boxes[:, 4 * c:4 * c + 4] = b / im_info[2]
  dets = []
  for c in range(1, k):
    inds = np.nonzero(probs[:, c] > thresh)[0]
    s = probs[inds, c]
    b = boxes[inds, 4 * c:4 * c + 4]
    order = np.argsort(-s, kind="stable")
    cd = np.concatenate([b[order], s[order, None]], 1).astype(np.float32)
    keep = nms_cpu(cd, nms_t) if len(cd) else []
    for i in keep:
      dets.append((cd[i, 4], c, cd[i, :4]))
  dets.sort(key=lambda t: -t[0])
  return dets[:max_det]


def test_postprocess_matches_test_net(rng):
  r, k = 60, 5
  xy = rng.uniform(0, 150, (r, 2))
  rois = np.concatenate([xy, xy + rng.uniform(10, 80, (r, 2))], 1).astype(
      np.float32)
  logits = rng.normal(0, 2, (r, k))
  probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(
      np.float32)
  deltas = rng.normal(0, 1, (r, k, 4)).astype(np.float32)
  info = np.array([200, 240, 1.6], np.float32)
  valid = np.ones(r, bool)
  stds = np.array([0.1, 0.1, 0.2, 0.2], np.float32)
  for thresh, max_det in ((0.0, 100), (0.05, 100), (0.0, 10)):
    out = jax.jit(lambda *a: roi_heads.postprocess_detections(
        *a, stds=tuple(stds), nms_thresh=0.3, score_thresh=thresh,
        max_detections=max_det))(rois, valid, probs, deltas, info)
    out = {k_: np.asarray(v) for k_, v in out.items()}
    ref = np_test_net(rois, probs, deltas, info, stds, 0.3, thresh, max_det)
    n = len(ref)
    assert out["valid"].sum() == n and out["valid"][:n].all()
    np.testing.assert_allclose(out["scores"][:n], [d[0] for d in ref])
    np.testing.assert_array_equal(out["classes"][:n], [d[1] for d in ref])
    np.testing.assert_allclose(out["boxes"][:n], np.stack([d[2] for d in ref]),
                               rtol=1e-4, atol=1e-3)
    assert np.all(out["classes"][n:] == 0)


def test_invalid_rois_never_detected(rng):
  rois = np.array([[10, 10, 50, 50], [0, 0, 0, 0]], np.float32)
  probs = np.array([[0.1, 0.9], [0.0, 1.0]], np.float32)
  out = roi_heads.postprocess_detections(
      rois, np.array([True, False]), probs, np.zeros((2, 2, 4), np.float32),
      np.array([100, 100, 1.0], np.float32), max_detections=5)
  assert int(out["valid"].sum()) == 1
  np.testing.assert_allclose(out["boxes"][0], rois[0], atol=1e-4)
