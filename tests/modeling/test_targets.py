"""frcnn_jax.modeling.targets against a NumPy transcription of the seed's layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.modeling import targets as T
from ops import anchors as A
from tests.ops.test_boxes import np_bbox_overlaps, np_bbox_transform


def np_anchor_labels(anchors, gt, im_h, im_w, border=0.0, pos=0.7, neg=0.3,
                     clobber=False):
  """_AnchorTargetLayer up to (not including) sampling, one image."""
  inside = ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) &
            (anchors[:, 2] < im_w + border) & (anchors[:, 3] < im_h + border))
  inds = np.nonzero(inside)[0]
  labels = np.full(len(inds), -1)
  if len(gt):
    ov = np_bbox_overlaps(anchors[inds], gt)
  else:  # the seed's all-padding gt: every overlap is 0
    ov = np.zeros((len(inds), 1))
  max_ov = ov.max(1)
  gt_max = ov.max(0)
  gt_max[gt_max == 0] = 1e-5
  keep = (ov == gt_max[None]).sum(1)
  if not clobber:
    labels[max_ov < neg] = 0
  labels[keep > 0] = 1
  labels[max_ov >= pos] = 1
  if clobber:
    labels[max_ov < neg] = 0
  full = np.full(len(anchors), -1)
  full[inds] = labels
  argmax = np.zeros(len(anchors), int)
  argmax[inds] = ov.argmax(1)
  return full, argmax


def make_image(rng, n_gt, m=8, im_h=200, im_w=264):
  gt = np.zeros((m, 4), np.float32)
  xy = rng.uniform(0, [im_w - 40, im_h - 40], (n_gt, 2))
  wh = rng.uniform(16, 120, (n_gt, 2))
  gt[:n_gt] = np.concatenate([xy, np.minimum(xy + wh, [im_w - 1, im_h - 1])], 1)
  valid = np.arange(m) < n_gt
  classes = np.where(valid, rng.integers(1, 5, m), 0).astype(np.int32)
  return gt, valid, classes, np.array([im_h, im_w, 1.0], np.float32)


def grid(im_h=200, im_w=264, scales=(2, 4, 8)):
  return A.grid_anchors((im_h + 15) // 16, (im_w + 15) // 16, 16,
                        A.generate_anchors(16, (0.5, 1, 2), scales))


@pytest.mark.parametrize("clobber", [False, True])
@pytest.mark.parametrize("n_gt", [0, 1, 5, 8])
def test_anchor_labels_equal_the_seed(rng, n_gt, clobber):
  anchors = grid()
  gt, valid, _, info = make_image(rng, n_gt)
  f = jax.jit(lambda a, g, v, i: T.anchor_labels(
      a, g, v, i, clobber_positives=clobber))
  labels, argmax = f(anchors, gt, valid, info)
  ref, ref_arg = np_anchor_labels(anchors, gt[:n_gt], 200, 264,
                                  clobber=clobber)
  np.testing.assert_array_equal(np.asarray(labels), ref)
  pos = ref == 1
  np.testing.assert_array_equal(np.asarray(argmax)[pos], ref_arg[pos])
  if n_gt:
    assert pos.sum() >= 1


def test_best_anchor_ties_are_all_positive():
  # Two identical anchors, and a gt equally far from two others: every anchor
  # reaching the gt's best IoU is positive, even below the 0.7 threshold.
  anchors = np.array([[0, 0, 31, 31], [0, 0, 31, 31], [40, 0, 71, 31],
                      [100, 100, 131, 131]], np.float32)
  gt = np.array([[8, 0, 39, 31], [0, 0, 0, 0]], np.float32)
  labels, _ = T.anchor_labels(anchors, gt, np.array([True, False]),
                              np.array([200, 200, 1.0]))
  ref, _ = np_anchor_labels(anchors, gt[:1], 200, 200)
  np.testing.assert_array_equal(labels, ref)
  np.testing.assert_array_equal(labels, [1, 1, 0, 0])


def test_allowed_border_and_outside_anchors_ignored(rng):
  anchors = grid()
  gt, valid, _, info = make_image(rng, 3)
  for border in (0.0, 16.0):
    labels, _ = T.anchor_labels(anchors, gt, valid, info,
                                allowed_border=border)
    ref, _ = np_anchor_labels(anchors, gt[:3], 200, 264, border=border)
    np.testing.assert_array_equal(labels, ref)


def test_padded_gt_never_matches():
  # A padded slot holding a box right on top of an anchor must be ignored.
  anchors = np.array([[0, 0, 31, 31], [50, 50, 81, 81]], np.float32)
  gt = np.array([[0, 0, 31, 31], [50, 50, 81, 81]], np.float32)
  labels, _ = T.anchor_labels(anchors, gt, np.array([True, False]),
                              np.array([100, 100, 1.0]))
  np.testing.assert_array_equal(labels, [1, 0])


def test_anchor_targets_sampling_and_weights(rng):
  anchors = grid()
  gt, valid, _, info = make_image(rng, 6)
  out = jax.jit(T.anchor_targets)(jax.random.key(0), anchors, gt, valid, info)
  labels = np.asarray(out["labels"])
  ref, ref_arg = np_anchor_labels(anchors, gt[:6], 200, 264)
  n_pos, n_neg = (ref == 1).sum(), (ref == 0).sum()
  assert (labels == 1).sum() == min(n_pos, 128)
  assert (labels == 0).sum() == min(n_neg, 256 - min(n_pos, 128))
  assert np.all((labels == ref) | (labels == -1))
  n = (labels >= 0).sum()
  ow = np.asarray(out["outside_weights"])
  np.testing.assert_allclose(ow[labels >= 0], 1.0 / n, rtol=1e-6)
  assert np.all(ow[labels < 0] == 0)
  iw = np.asarray(out["inside_weights"])
  assert np.all(iw[labels == 1] == 1) and np.all(iw[labels != 1] == 0)
  pos = labels == 1
  ref_t = np_bbox_transform(anchors[pos], gt[ref_arg[pos]])
  np.testing.assert_allclose(np.asarray(out["bbox_targets"])[pos], ref_t,
                             rtol=1e-4, atol=1e-5)


def test_anchor_targets_positive_weight_option(rng):
  anchors = grid()
  gt, valid, _, info = make_image(rng, 4)
  out = T.anchor_targets(jax.random.key(1), anchors, gt, valid, info,
                         positive_weight=0.25)
  labels = np.asarray(out["labels"])
  ow = np.asarray(out["outside_weights"])[:, 0]
  np.testing.assert_allclose(ow[labels == 1], 0.25 / (labels == 1).sum())
  np.testing.assert_allclose(ow[labels == 0], 0.75 / (labels == 0).sum())
  with pytest.raises(ValueError, match="positive_weight"):
    T.anchor_targets(jax.random.key(1), anchors, gt, valid, info,
                     positive_weight=1.5)


def _proposals_around(rng, gt, n, jitter):
  centers = gt[rng.integers(0, len(gt), n)]
  return (centers + rng.normal(0, jitter, (n, 4))).astype(np.float32)


def run_proposal_targets(key, props, pvalid, gt, classes, valid, **kw):
  f = jax.jit(lambda k, p, pv, g, c, v: T.proposal_targets(k, p, pv, g, c, v,
                                                           **kw))
  return {k: np.asarray(v) for k, v in f(key, props, pvalid, gt, classes,
                                          valid).items()}


def test_proposal_targets_rows_follow_the_seed(rng):
  gt, valid, classes, _ = make_image(rng, 4)
  props = np.concatenate([_proposals_around(rng, gt[:4], 150, 6.0),
                          _proposals_around(rng, gt[:4], 150, 40.0)])
  pvalid = np.ones(len(props), bool)
  out = run_proposal_targets(jax.random.key(0), props, pvalid, gt, classes,
                             valid)
  all_rois = np.concatenate([props, gt[:4]])
  ov = np_bbox_overlaps(all_rois, gt[:4])
  n_fg_cand = (ov.max(1) >= 0.5).sum()
  assert out["valid"].all()
  n_fg = out["fg"].sum()
  assert n_fg == min(32, n_fg_cand)
  assert out["fg"][:n_fg].all() and not out["fg"][n_fg:].any()
  ov_rows = np_bbox_overlaps(out["rois"], gt[:4])
  best = ov_rows.max(1)
  arg = ov_rows.argmax(1)
  assert np.all(best[:n_fg] >= 0.5) and np.all(best[n_fg:] < 0.5)
  np.testing.assert_array_equal(out["labels"][:n_fg], classes[arg[:n_fg]])
  assert np.all(out["labels"][n_fg:] == 0)
  ref_t = np_bbox_transform(out["rois"][:n_fg], gt[arg[:n_fg]]) / np.array(
      [0.1, 0.1, 0.2, 0.2])
  np.testing.assert_allclose(out["bbox_targets"][:n_fg], ref_t, rtol=1e-4,
                             atol=1e-4)
  assert np.all(out["bbox_targets"][n_fg:] == 0)
  np.testing.assert_array_equal(out["inside_weights"][:n_fg], 1)
  np.testing.assert_array_equal(out["outside_weights"],
                                out["inside_weights"])
  # Fg rows are distinct candidates (sampled without replacement).
  assert len({tuple(r) for r in out["rois"][:n_fg]}) == n_fg


def test_padded_gt_rows_are_never_sampled(rng):
  gt, valid, classes, _ = make_image(rng, 2)
  gt[2:] = gt[0]            # padding slots that look like a real box
  classes[2:] = 99
  props = _proposals_around(rng, gt[:2], 100, 5.0)
  for s in range(5):
    out = run_proposal_targets(jax.random.key(s), props,
                               np.ones(100, bool), gt, classes, valid)
    assert 99 not in out["labels"]


def test_bg_threshold_lo_and_invalid_proposals(rng):
  gt, valid, classes, _ = make_image(rng, 1)
  far = np.array([[0, 0, 5, 5]] * 50, np.float32)  # IoU 0 with the gt
  props = np.concatenate([far, _proposals_around(rng, gt[:1], 50, 3.0)])
  pvalid = np.ones(100, bool)
  pvalid[50:] = False   # the good proposals are padding: only gt is fg
  out = run_proposal_targets(jax.random.key(0), props, pvalid, gt, classes,
                             valid, bg_thresh_lo=0.1)
  # No bg candidate (IoU 0 < 0.1) and a single fg (the gt itself): the seed's
  # "only fg" case fills all 128 rows with it.
  assert out["valid"].all() and out["fg"].all()
  np.testing.assert_allclose(out["rois"], np.repeat(gt[:1], 128, 0))


def test_only_background_and_nothing_cases(rng):
  gt, valid, classes, _ = make_image(rng, 0)
  props = _proposals_around(rng, np.array([[10, 10, 60, 60]], np.float32),
                            40, 5.0)
  out = run_proposal_targets(jax.random.key(0), props, np.ones(40, bool), gt,
                             classes, valid)
  assert out["valid"].all() and not out["fg"].any()
  assert np.all(out["labels"] == 0)
  out = run_proposal_targets(jax.random.key(0), props, np.zeros(40, bool), gt,
                             classes, valid)
  assert not out["valid"].any()
  assert np.all(np.isfinite(out["bbox_targets"]))


def test_fg_sampling_is_uniform(rng):
  gt = np.array([[20, 20, 99, 99]] + [[0, 0, 0, 0]] * 3, np.float32)
  valid = np.array([True, False, False, False])
  classes = np.array([1, 0, 0, 0], np.int32)
  # 39 fg proposals (+ the gt) and plenty of bg: 32 of 40 fg per draw.
  props = np.concatenate([
      gt[:1] + np.array([i % 10, i // 10, i % 10, i // 10], np.float32)
      for i in range(1, 40)] + [np.array([[150, 150, 190, 190]] * 60,
                                      np.float32)])
  f = jax.jit(jax.vmap(lambda k: T.proposal_targets(
      k, props, np.ones(99, bool), gt, classes, valid)["rois"]))
  rois = np.asarray(f(jax.random.split(jax.random.key(0), 400)))
  all_rois = np.concatenate([props, gt[:1]])
  fg_cands = all_rois[np_bbox_overlaps(all_rois, gt[:1])[:, 0] >= 0.5]
  counts = np.array([(rois[:, :32] == c).all(-1).sum() for c in fg_cands])
  # Each of the fg candidates appears in 32/n of the draws.
  np.testing.assert_allclose(counts / 400, 32 / len(fg_cands), atol=0.08)
