"""rpn_fpn.fpn_proposals: levels never suppress each other, and the Pallas
kernel's per-level NMS (interpret mode here) gives the jnp NMS's proposals.

(The proposals against torchvision's own RPN: tests/modeling/
test_detector_fpn.py.)
"""
import functools

import jax
import numpy as np

from frcnn_jax.modeling import rpn_fpn
from ops import pallas_nms

IM_INFO = np.float32([100, 120, 1.0])


def proposals(logits, anchors, sizes, nms_fn=None, post=20, deltas=None):
  kw = {} if nms_fn is None else {"batched_nms_fn": nms_fn}
  n = len(logits)
  deltas = np.zeros((n, 4), np.float32) if deltas is None else deltas
  f = jax.jit(functools.partial(
      rpn_fpn.fpn_proposals, level_sizes=sizes, pre_nms_top_n=1000,
      post_nms_top_n=post, nms_thresh=0.7, **kw))
  out = f(np.float32(logits), deltas, np.float32(anchors),
          np.ones(n, bool), IM_INFO)
  return [np.asarray(o) for o in out]


def test_levels_do_not_suppress_each_other():
  # The same box twice on level 0 and once on level 1: the level-0 copy
  # with the lower logit goes, the level-1 copy stays.
  box = [10, 10, 50, 40]
  anchors = [box, box, [60, 60, 90, 95], box]
  boxes, scores, valid, level = proposals([3.0, 2.0, 1.0, 0.5], anchors,
                                          [3, 1])
  assert valid.sum() == 3
  np.testing.assert_array_equal(level[valid], [0, 0, 1])
  np.testing.assert_allclose(scores[valid],
                             1 / (1 + np.exp(-np.float32([3, 1, 0.5]))),
                             rtol=1e-6)
  np.testing.assert_array_equal(boxes[valid][[0, 2]], [box, box])


def test_kernel_gives_the_same_proposals(rng=np.random.default_rng(3)):
  sizes = [300, 100, 40]
  n = sum(sizes)
  xy = rng.uniform(0, 60, (n, 2))
  wh = rng.uniform(10, 40, (n, 2))
  anchors = np.concatenate([xy, xy + wh], 1)
  logits = rng.normal(size=n)
  deltas = rng.normal(scale=0.1, size=(n, 4)).astype(np.float32)
  want = proposals(logits, anchors, sizes, post=n, deltas=deltas)
  kernel = pallas_nms.select_nms("pallas", "cpu", batched=True)
  got = proposals(logits, anchors, sizes, kernel, post=n, deltas=deltas)
  assert want[2].sum() < n - 20   # Suppression happened, levels mixed.
  assert len(set(want[3][want[2]].tolist())) == 3
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
