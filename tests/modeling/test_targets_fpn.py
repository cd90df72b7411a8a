"""FPN targets and losses against torchvision's own code.

The parts of torchvision's training path that are deterministic are called
directly: ``RegionProposalNetwork.assign_targets_to_anchors`` (Matcher with
low-quality matches) and ``BoxCoder.encode``; ``RoIHeads``' target
assignment when every candidate is sampled (few enough positives and
negatives); ``fastrcnn_loss``; the RPN loss formula of ``compute_loss``.
Random sampling is checked by its counts and properties.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.modeling import targets_fpn
from ops import boxes as box_ops

torch = pytest.importorskip("torch")
tv_det = pytest.importorskip("torchvision.models.detection")
F = torch.nn.functional


def random_boxes(rng, n, size=300.0, lo=8.0, hi=120.0):
  xy = rng.uniform(0, size - hi, (n, 2))
  wh = rng.uniform(lo, hi, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def tv_rpn():
  anchor = tv_det.rpn.AnchorGenerator(((32,),), ((1.0,),))
  head = tv_det.rpn.RPNHead(4, 1)
  return tv_det.rpn.RegionProposalNetwork(
      anchor, head, 0.7, 0.3, 256, 0.5, dict(training=10, testing=10),
      dict(training=10, testing=10), 0.7)


def test_rpn_labels_and_targets_match_torchvision(rng):
  anchors = random_boxes(rng, 2000)
  # Near-copies of anchors (IoU >= 0.7), a box overlapping little, ties.
  gt = np.concatenate([anchors[:3] + 1.5, random_boxes(rng, 3, lo=20, hi=40)])
  gt[-1] = anchors[7] * np.float32(1.0)
  labels_tv, matched_tv = tv_rpn().assign_targets_to_anchors(
      [torch.from_numpy(anchors)], [{"boxes": torch.from_numpy(gt)}])
  m = np.full(8, False)
  m[:6] = True
  gt_pad = np.zeros((8, 4), np.float32)
  gt_pad[:6] = gt
  iou = box_ops.iou_tv(jnp.asarray(anchors), jnp.asarray(gt_pad))
  matched = targets_fpn.match(iou, np.ones(2000, bool), m, high=0.7,
                              low=0.3, allow_low_quality_matches=True)
  labels = np.where(matched >= 0, 1, np.where(matched == -1, 0, -1))
  np.testing.assert_array_equal(labels, labels_tv[0].numpy())
  assert (labels == 1).sum() > 3 and (labels == -1).sum() > 0
  # Regression targets of the positives (torchvision's BoxCoder, weights 1).
  coder = tv_det._utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
  want = coder.encode_single(matched_tv[0], torch.from_numpy(anchors)).numpy()
  t = targets_fpn.rpn_targets(jax.random.key(0), jnp.asarray(anchors),
                              np.ones(2000, bool), jnp.asarray(gt_pad), m,
                              batch_size=4000)   # Everything sampled.
  pos = labels == 1
  np.testing.assert_array_equal(np.asarray(t["labels"]), labels)
  np.testing.assert_allclose(np.asarray(t["bbox_targets"])[pos], want[pos],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gt_slots,valid_slots", [
    (100, [0, 1, 2, 3, 4]), (100, [3, 40, 41, 99]), (20, list(range(20))),
    (7, [6]), (10, [])])
def test_chunked_matcher_is_the_matcher(rng, gt_slots, valid_slots):
  # match_boxes (IoU chunk by chunk, up to the last real gt) against match
  # on the full IoU matrix: ties, holes in gt_valid, invalid rows, no gt.
  anchors = random_boxes(rng, 1500)
  anchors[100:110] = anchors[90:100]        # duplicate rows: equal IoUs
  gt = random_boxes(rng, gt_slots, lo=10, hi=90)
  for i, slot in enumerate(valid_slots[:3]):
    gt[slot] = anchors[5 * i] + 1.0         # near-copies: positives
  if len(valid_slots) > 3:
    gt[valid_slots[3]] = gt[valid_slots[0]]  # a repeated gt: ties across slots
  gt_valid = np.zeros(gt_slots, bool)
  gt_valid[valid_slots] = True
  row_valid = rng.uniform(size=1500) > 0.1
  for low_quality in (True, False):
    kw = dict(high=0.7, low=0.3, allow_low_quality_matches=low_quality)
    want = targets_fpn.match(box_ops.iou_tv(anchors, gt), row_valid,
                             gt_valid, **kw)
    got = jax.jit(lambda a, rv, g, gv: targets_fpn.match_boxes(
        a, rv, g, gv, chunk=4, **kw))(anchors, row_valid, gt, gt_valid)
    np.testing.assert_array_equal(got, want)
  if valid_slots:
    assert (np.asarray(want) >= 0).any()


def test_rpn_sampling_counts(rng):
  anchors = random_boxes(rng, 3000)
  gt = np.zeros((4, 4), np.float32)
  gt[:2] = anchors[:2] + 1.0
  valid = np.ones(3000, bool)
  valid[-500:] = False       # Anchors outside the image's padded extent.
  t = targets_fpn.rpn_targets(jax.random.key(1), jnp.asarray(anchors), valid,
                              jnp.asarray(gt), np.array([1, 1, 0, 0], bool))
  lab = np.asarray(t["labels"])
  assert (lab >= 0).sum() == 256
  assert 0 < (lab == 1).sum() <= 128
  assert (lab[-500:] == -1).all()


def test_box_head_targets_match_torchvision(rng):
  """With at most 128 positives and 384 negatives, torchvision samples every
  candidate: the sampled sets, labels and targets must then be equal."""
  gt = random_boxes(rng, 3, lo=40, hi=100)
  near = np.concatenate([g + rng.uniform(-6, 6, (20, 4)) for g in gt])
  props = np.concatenate([near, random_boxes(rng, 150)]).astype(np.float32)
  classes = np.array([3, 7, 1])
  heads = tv_det.roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25,
                                    None, 0.05, 0.5, 100)
  p_tv, _, labels_tv, targets_tv = heads.select_training_samples(
      [torch.from_numpy(props)], [{"boxes": torch.from_numpy(gt),
                                   "labels": torch.from_numpy(classes)}])
  gt_pad = np.zeros((5, 4), np.float32)
  gt_pad[:3] = gt
  cls_pad = np.zeros(5, np.int32)
  cls_pad[:3] = classes
  t = targets_fpn.box_head_targets(
      jax.random.key(0), jnp.asarray(props), np.ones(len(props), bool),
      jnp.asarray(gt_pad), jnp.asarray(cls_pad),
      np.array([1, 1, 1, 0, 0], bool))
  v = np.asarray(t["valid"])
  assert v.sum() == len(p_tv[0]) == len(props) + 3

  def key(rois, labels, tg):   # Order-free comparison.
    rows = np.concatenate([rois, labels[:, None], tg], 1)
    return rows[np.lexsort(rows.T[::-1])]

  np.testing.assert_allclose(
      key(np.asarray(t["rois"])[v], np.asarray(t["labels"])[v],
          np.asarray(t["bbox_targets"])[v]),
      key(p_tv[0].numpy(), labels_tv[0].numpy(), targets_tv[0].numpy() *
          (labels_tv[0].numpy() > 0)[:, None]), rtol=1e-5, atol=1e-4)


def test_box_head_sampling_caps_positives(rng):
  gt = random_boxes(rng, 1, lo=60, hi=80)
  props = (gt + rng.uniform(-3, 3, (400, 4))).astype(np.float32)
  props = np.concatenate([props, random_boxes(rng, 600)])
  t = targets_fpn.box_head_targets(
      jax.random.key(2), jnp.asarray(props), np.ones(len(props), bool),
      jnp.asarray(gt), jnp.asarray([5]), np.array([True]))
  lab, v = np.asarray(t["labels"]), np.asarray(t["valid"])
  assert v.all() and (lab == 5).sum() == 128 and (lab == 0).sum() == 384


def test_fastrcnn_loss_matches_torchvision(rng):
  b, r, k = 2, 64, 6
  logits = rng.normal(size=(b, r, k)).astype(np.float32)
  deltas = rng.normal(size=(b, r, k, 4)).astype(np.float32) * 0.2
  labels = rng.integers(0, k, (b, r)).astype(np.int32)
  labels[:, ::3] = 0
  tg = rng.normal(size=(b, r, 4)).astype(np.float32) * 0.2
  tg[labels == 0] = 0
  valid = np.ones((b, r), bool)
  valid[1, 50:] = False      # Fewer candidates than 512, as torchvision.
  keep = [valid[i] for i in range(b)]
  want = tv_det.roi_heads.fastrcnn_loss(
      torch.from_numpy(np.concatenate([logits[i][keep[i]] for i in range(b)])),
      torch.from_numpy(np.concatenate([deltas[i][keep[i]].reshape(-1, 4 * k)
                                       for i in range(b)])),
      [torch.from_numpy(labels[i][keep[i]].astype(np.int64))
       for i in range(b)],
      [torch.from_numpy(tg[i][keep[i]]) for i in range(b)])
  picked = np.take_along_axis(deltas, labels[..., None, None], 2)[..., 0, :]
  got = targets_fpn.box_head_losses(
      jnp.asarray(logits), jnp.asarray(picked),
      dict(labels=jnp.asarray(labels), bbox_targets=jnp.asarray(tg),
           valid=jnp.asarray(valid)))
  np.testing.assert_allclose(got[0], want[0].item(), rtol=1e-5)
  np.testing.assert_allclose(got[1], want[1].item(), rtol=1e-5)


def test_rpn_losses_formula(rng):
  """torchvision's compute_loss on given samples: BCE mean over the
  sampled anchors of the batch, smooth-L1 (beta 1/9) sum over positives /
  number sampled."""
  b, n = 2, 500
  logits = rng.normal(size=(b, n)).astype(np.float32) * 3
  deltas = rng.normal(size=(b, n, 4)).astype(np.float32) * 0.3
  tg = rng.normal(size=(b, n, 4)).astype(np.float32) * 0.3
  labels = rng.choice([-1, 0, 1], size=(b, n), p=[0.6, 0.3, 0.1])
  s = labels >= 0
  pos = labels == 1
  want_obj = F.binary_cross_entropy_with_logits(
      torch.from_numpy(logits[s]), torch.from_numpy(pos[s].astype(np.float32)))
  want_box = F.smooth_l1_loss(torch.from_numpy(deltas[pos]),
                              torch.from_numpy(tg[pos]), beta=1 / 9,
                              reduction="sum") / s.sum()
  got = targets_fpn.rpn_losses(jnp.asarray(logits), jnp.asarray(deltas),
                               jnp.asarray(labels), jnp.asarray(tg))
  np.testing.assert_allclose(got[0], want_obj.item(), rtol=1e-5)
  np.testing.assert_allclose(got[1], want_box.item(), rtol=1e-5)
