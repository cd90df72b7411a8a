"""RPN head layout and proposal generation against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frcnn_jax.modeling import rpn
from ops import anchors as A
from tests.ops.test_boxes import np_bbox_transform_inv
from tests.ops.test_nms import nms_cpu


def np_proposals(scores, deltas, anchors, im_info, pre, post, thresh):
  """The seed's _ProposalLayer for one image (decode with the documented
  inclusive correction, clip, sort, top pre, nms_cpu, top post)."""
  boxes = np_bbox_transform_inv(anchors, deltas)
  boxes[:, 2:] -= 1.0
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_info[1] - 1)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_info[0] - 1)
  order = np.argsort(-scores, kind="stable")[:pre]
  b, s = boxes[order], scores[order]
  keep = nms_cpu(np.concatenate([b, s[:, None]], 1), thresh)[:post]
  return b[keep], s[keep]


def test_head_layout_is_the_seeds(rng):
  # With a 1x1 identity-like check: the (bg, fg) pair of anchor a comes from
  # channels a and A + a; deltas of anchor a from channels 4a..4a+3.
  head = rpn.RPNHead(4, 3, 8, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
  logits, deltas = head(x)
  assert logits.shape == (2, 5 * 6 * 3, 2) and deltas.shape == (2, 90, 4)
  h = jax.nn.relu(head.conv(x))
  raw_s = np.asarray(head.cls_score(h)).reshape(2, 30, 6)
  raw_d = np.asarray(head.bbox_pred(h)).reshape(2, 30, 12)
  np.testing.assert_allclose(np.asarray(logits).reshape(2, 30, 3, 2)[..., 0],
                             raw_s[..., :3], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(logits).reshape(2, 30, 3, 2)[..., 1],
                             raw_s[..., 3:], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(deltas).reshape(2, 30, 12), raw_d,
                             rtol=1e-6)


@pytest.mark.parametrize("pre,post,thresh", [(300, 50, 0.7), (0, 500, 0.5),
                                             (100, 200, 0.3)])
def test_generate_proposals_matches_reference(rng, pre, post, thresh):
  anchors = A.grid_anchors(6, 8, 16, A.generate_anchors(16, (0.5, 1, 2),
                                                        (1, 2, 4)))
  n = len(anchors)
  scores = rng.uniform(size=n).astype(np.float32)
  deltas = rng.normal(0, 0.3, (n, 4)).astype(np.float32)
  info = np.array([90, 120, 1.5], np.float32)
  f = jax.jit(lambda s, d, i: rpn.generate_proposals(
      s, d, anchors, i, pre_nms_top_n=pre, post_nms_top_n=post,
      nms_thresh=thresh))
  boxes, sc, valid = map(np.asarray, f(scores, deltas, info))
  ref_b, ref_s = np_proposals(scores, deltas, anchors, info,
                              pre if pre > 0 else n, post, thresh)
  k = len(ref_b)
  assert valid.sum() == k and valid[:k].all()
  np.testing.assert_allclose(boxes[:k], ref_b, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(sc[:k], ref_s)
  assert np.all(boxes[k:] == 0) and np.all(sc[k:] == 0)


def test_min_size_filter_and_bad_scores(rng):
  anchors = np.array([[0, 0, 7, 7], [0, 0, 63, 63], [10, 10, 73, 73]],
                     np.float32)
  scores = np.array([0.9, np.nan, 0.5], np.float32)
  deltas = np.zeros((3, 4), np.float32)
  info = np.array([100, 100, 2.0], np.float32)
  b, s, v = rpn.generate_proposals(scores, deltas, anchors, info,
                                   pre_nms_top_n=0, post_nms_top_n=3,
                                   min_size=8.0)
  # Box 0 is 8 px < 8 * scale 2; box 1 has a NaN score: only box 2 remains.
  np.testing.assert_array_equal(np.asarray(v), [True, False, False])
  np.testing.assert_allclose(np.asarray(b)[0], anchors[2])
  assert np.all(np.isfinite(np.asarray(b))) and np.all(np.isfinite(
      np.asarray(s)))


def test_pallas_nms_gives_the_same_proposals(rng):
  from ops import pallas_nms
  anchors = A.grid_anchors(4, 5, 16, A.generate_anchors(16, (0.5, 1, 2),
                                                        (1, 2)))
  n = len(anchors)
  scores = rng.uniform(size=n).astype(np.float32)
  deltas = rng.normal(0, 0.3, (n, 4)).astype(np.float32)
  info = np.array([64, 80, 1.0], np.float32)
  outs = [rpn.generate_proposals(scores, deltas, anchors, info,
                                 pre_nms_top_n=100, post_nms_top_n=40,
                                 nms_fn=pallas_nms.select_nms(impl))
          for impl in ("jnp", "pallas")]
  for a, b in zip(*outs):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
