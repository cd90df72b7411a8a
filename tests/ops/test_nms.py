"""Tests for ops/nms.py against a numpy transcription of the seed's nms_cpu."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import nms as nms_lib

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)


# ----------------------------------------------------------------------------
# Reference: the seed's nms_cpu, transcribed line by line in numpy.
# ----------------------------------------------------------------------------
def nms_cpu(dets, thresh, stable=True, clamp_area=True):
  """The seed's ``nms_cpu`` (float32 numpy), with three switches.

  stable: order ties by lower index (``argsort(-s, kind='stable')``) instead
    of the seed's ``scores.argsort()[::-1]``, whose tie order is an artifact
    of numpy's sort. Identical for distinct scores.
  clamp_area: clamp widths/heights at 0 in the areas (the seed does not; it
    only matters for inverted boxes).
  Pairs with a non-positive union get IoU 0 (the seed would divide by zero
    and then suppress on the NaN); only reachable with two empty boxes.
  """
  x1 = dets[:, 0]
  y1 = dets[:, 1]
  x2 = dets[:, 2]
  y2 = dets[:, 3]
  scores = dets[:, 4]
  if clamp_area:
    areas = np.maximum(x2 - x1 + 1, 0) * np.maximum(y2 - y1 + 1, 0)
  else:
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  if stable:
    order = np.argsort(-scores, kind="stable")
  else:
    order = scores.argsort()[::-1]
  keep = []
  while order.size > 0:
    i = order.item(0)
    keep.append(i)
    xx1 = np.maximum(x1[i], x1[order[1:]])
    yy1 = np.maximum(y1[i], y1[order[1:]])
    xx2 = np.minimum(x2[i], x2[order[1:]])
    yy2 = np.minimum(y2[i], y2[order[1:]])
    w = np.maximum(0.0, xx2 - xx1 + 1)
    h = np.maximum(0.0, yy2 - yy1 + 1)
    inter = w * h
    union = areas[i] + areas[order[1:]] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
      ovr = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
    inds = np.where(ovr <= thresh)[0]
    order = order[inds + 1]
  return np.array(keep, np.int64)


def reference(boxes, scores, thresh, max_output):
  """nms_cpu on the present entries (finite score and box) -> input indices."""
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  present = np.flatnonzero(np.isfinite(scores)
                           & np.all(np.isfinite(boxes), axis=1))
  if present.size == 0:
    return np.zeros((0,), np.int64)
  dets = np.concatenate([boxes[present], scores[present, None]], axis=1)
  return present[nms_cpu(dets, np.float32(thresh))][:max_output]


def batched_reference(boxes, scores, thresh, max_det, score_thresh):
  """The seed's test_net loop: per class > score_thresh, NMS, top max_det."""
  k, n = scores.shape
  if boxes.ndim == 2:
    boxes = np.broadcast_to(boxes[None], (k, n, 4))
  found = []  # (score, class, index), class-major, score order within class.
  for j in range(k):
    inds = np.flatnonzero(scores[j] > score_thresh)
    keep = inds[reference(boxes[j][inds], scores[j][inds], thresh, n)]
    found += [(scores[j, i], j, i) for i in keep]
  found.sort(key=lambda t: -t[0])  # Stable: ties stay class, index order.
  return found[:max_det]


def random_boxes(rng, n, size=100.0, max_wh=40.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, max_wh, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("max_output", "tile_size"))
def jit_nms(boxes, scores, thresh, max_output, tile_size=nms_lib.TILE):
  return nms_lib.nms(boxes, scores, thresh, max_output, tile_size=tile_size)


N_PAD = 160


def padded_nms(boxes, scores, thresh, max_output, tile_size=nms_lib.TILE):
  """jit_nms on inputs padded to N_PAD rows (score -inf), max_output N_PAD.

  One compilation serves most tests (compiles dominate the test time);
  the padding rows are absent entries and must never show up. The result is
  cut to ``max_output`` slots; truncation by the op itself is tested on
  native shapes in test_small_n_pads_and_truncation.
  """
  n = len(scores)
  assert n <= N_PAD and max_output <= N_PAD
  boxes = np.concatenate([boxes, np.zeros((N_PAD - n, 4), np.float32)])
  scores = np.concatenate([scores, np.full(N_PAD - n, -np.inf, np.float32)])
  idx, valid = jit_nms(boxes, scores, np.float32(thresh), max_output=N_PAD,
                       tile_size=tile_size)
  assert (np.asarray(idx)[np.asarray(valid)] < n).all()
  return idx[:max_output], valid[:max_output]


def kept(out):
  idx, valid = (np.asarray(o) for o in out)
  n = int(valid.sum())
  assert valid[:n].all() and not valid[n:].any(), "valid must be a prefix"
  assert (idx[n:] == -1).all()
  return idx[:n]


# ----------------------------------------------------------------------------
# nms
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("tile_size", [8, 64])
def test_random_matches_nms_cpu(rng, tile_size):
  for trial in range(3):
    n = 150
    boxes = random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    for t in THRESHOLDS:
      want = reference(boxes, scores, t, n)
      got = kept(padded_nms(boxes, scores, np.float32(t), max_output=n,
                         tile_size=tile_size))
      np.testing.assert_array_equal(got, want, err_msg=f"thr {t} #{trial}")


def test_thresholds_change_result(rng):
  # Guard against a hard-coded threshold: the kept counts must differ.
  boxes = random_boxes(rng, 150)
  scores = rng.random(150).astype(np.float32)
  counts = [len(kept(padded_nms(boxes, scores, t, max_output=150)))
            for t in THRESHOLDS]
  assert len(set(counts)) >= 4 and counts[0] < counts[-1], counts
  assert counts[-1] == 150  # IoU <= 1: threshold 1.0 suppresses nothing.


def three_boxes():
  # Same rows (y 0..9), inclusive x ranges [0,80], [35,114], [69,149]:
  # widths 81, 80, 81. Pairwise overlaps in x: A-B 81-35 = 46, B-C 115-69
  # = 46, A-C 81-69 = 12, so IoU(A,B) = 46/(81+80-46) = 46/115 = 0.4,
  # IoU(B,C) = 0.4, IoU(A,C) = 12/(81+81-12) = 12/150 = 0.08.
  return np.float32([[0, 0, 80, 9], [35, 0, 114, 9], [69, 0, 149, 9]])


def test_hand_computed_three_boxes():
  boxes = three_boxes()
  x1, y1, x2, y2 = boxes.T
  area = (x2 - x1 + 1) * (y2 - y1 + 1)
  np.testing.assert_array_equal(area, [810, 800, 810])
  def iou(i, j):
    iw = min(x2[i], x2[j]) - max(x1[i], x1[j]) + 1
    inter = iw * 10
    return inter / (area[i] + area[j] - inter)
  np.testing.assert_allclose([iou(0, 1), iou(1, 2), iou(0, 2)],
                             [0.4, 0.4, 0.08], rtol=1e-6)
  # A > B > C: A kept, B suppressed by A, C overlaps only the suppressed B
  # (0.4) and A (0.08 <= 0.3): greedy keeps two (a one-shot "suppressed by
  # any better box" rule would wrongly keep one).
  got = kept(padded_nms(boxes, np.float32([0.9, 0.8, 0.7]), 0.3, 3))
  np.testing.assert_array_equal(got, [0, 2])
  # B best: B suppresses both.
  got = kept(padded_nms(boxes, np.float32([0.8, 0.9, 0.7]), 0.3, 3))
  np.testing.assert_array_equal(got, [1])
  # IoU exactly at the threshold is not suppressed (> threshold, not >=).
  got = kept(padded_nms(boxes, np.float32([0.9, 0.8, 0.7]), np.float32(0.4),
                     max_output=3))
  np.testing.assert_array_equal(got, [0, 1, 2])
  got = kept(padded_nms(boxes, np.float32([0.9, 0.8, 0.7]), 0.07, 3))
  np.testing.assert_array_equal(got, [0])


def test_identical_boxes():
  boxes = np.tile(np.float32([[5, 5, 20, 30]]), (40, 1))
  scores = np.linspace(0.1, 0.9, 40).astype(np.float32)
  for t in (0.0, 0.5, 0.99):
    np.testing.assert_array_equal(
        kept(padded_nms(boxes, scores, t, max_output=10)), [39])
  # IoU of identical boxes is exactly 1: threshold 1.0 keeps all, in order.
  np.testing.assert_array_equal(
      kept(padded_nms(boxes, scores, 1.0, max_output=40)), np.arange(40)[::-1])


def test_nested_boxes():
  # [0,99]^2 holds [0,49]^2: IoU = 2500 / 10000 = 0.25.
  boxes = np.float32([[0, 0, 99, 99], [0, 0, 49, 49]])
  for scores in (np.float32([0.9, 0.8]), np.float32([0.8, 0.9])):
    first = int(np.argmax(scores))
    np.testing.assert_array_equal(
        kept(padded_nms(boxes, scores, 0.2, max_output=2)), [first])
    np.testing.assert_array_equal(
        kept(padded_nms(boxes, scores, 0.25, max_output=2)), [first, 1 - first])
  # Concentric rings of boxes.
  r = np.arange(1, 30, dtype=np.float32)
  boxes = np.stack([50 - r, 50 - r, 50 + r, 50 + r], 1)
  scores = np.float32(np.random.default_rng(3).random(len(r)))
  for t in THRESHOLDS:
    np.testing.assert_array_equal(
        kept(padded_nms(boxes, scores, t, max_output=len(r))),
        reference(boxes, scores, t, len(r)))


def test_score_ties_lower_index_first(rng):
  boxes = random_boxes(rng, 120)
  scores = np.float32(rng.integers(0, 4, 120) / 4.0)  # Many ties, incl. 0.
  scores[::7] = -0.0  # -0.0 ties with 0.0.
  for t in (0.3, 0.7):
    np.testing.assert_array_equal(
        kept(padded_nms(boxes, scores, t, max_output=120, tile_size=8)),
        reference(boxes, scores, t, 120))
  # Disjoint boxes, equal scores: plain index order.
  disjoint = np.float32([[10 * i, 0, 10 * i + 5, 5] for i in range(6)])
  np.testing.assert_array_equal(
      kept(padded_nms(disjoint, np.ones(6, np.float32), 0.5, max_output=6)),
      np.arange(6))


def test_small_n_pads_and_truncation(rng):
  boxes = random_boxes(rng, 5)
  scores = rng.random(5).astype(np.float32)
  idx, valid = jit_nms(boxes, scores, 0.5, max_output=12)
  assert idx.shape == (12,) and valid.shape == (12,)
  assert idx.dtype == jnp.int32 and valid.dtype == jnp.bool_
  want = reference(boxes, scores, 0.5, 12)
  np.testing.assert_array_equal(kept((idx, valid)), want)
  assert int(valid.sum()) == len(want)
  # max_output smaller than what NMS keeps: the first ones, in order.
  boxes = random_boxes(rng, 150, size=300)
  scores = rng.random(150).astype(np.float32)
  full = reference(boxes, scores, 0.5, 150)
  assert len(full) > 20
  for tile in (8, 64):
    np.testing.assert_array_equal(
        kept(jit_nms(boxes, scores, 0.5, max_output=20, tile_size=tile)),
        full[:20])


def test_empty_and_all_absent():
  idx, valid = jit_nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                       0.5, max_output=7)
  assert idx.shape == (7,) and not valid.any() and (np.asarray(idx) == -1).all()
  idx, valid = jit_nms(np.zeros((3, 4), np.float32), np.ones(3, np.float32),
                       0.5, max_output=0)
  assert idx.shape == (0,) and valid.shape == (0,)
  boxes = np.float32([[0, 0, 10, 10]] * 4)
  scores = np.float32([-np.inf, np.nan, np.inf, -np.inf])
  idx, valid = jit_nms(boxes, scores, 0.5, max_output=4)
  assert not np.asarray(valid).any() and (np.asarray(idx) == -1).all()


def test_non_finite_inputs_absent(rng):
  boxes = np.float32([[0, 0, 10, 10]] * 6)
  scores = np.float32([np.nan, np.inf, 0.5, 0.9, 0.8, 0.7])
  boxes[3, 0] = np.nan
  boxes[4, 2] = np.inf
  # 0, 1: bad scores; 3, 4: bad boxes. Among 2 and 5 (identical), 5 wins;
  # none of the absent ones (higher scores, same box) suppresses it.
  np.testing.assert_array_equal(
      kept(padded_nms(boxes, scores, 0.5, max_output=6)), [5])
  # Random mix against the reference.
  boxes = random_boxes(rng, 100)
  scores = rng.random(100).astype(np.float32)
  scores[rng.choice(100, 10, replace=False)] = np.nan
  scores[rng.choice(100, 10, replace=False)] = -np.inf
  scores[rng.choice(100, 3, replace=False)] = np.inf
  boxes[rng.choice(100, 10, replace=False), rng.integers(0, 4)] = np.nan
  boxes[rng.choice(100, 5, replace=False), rng.integers(0, 4)] = -np.inf
  for t in (0.0, 0.5):
    idx, valid = padded_nms(boxes, scores, t, max_output=100, tile_size=8)
    np.testing.assert_array_equal(kept((idx, valid)),
                                  reference(boxes, scores, t, 100))


def test_inverted_boxes_kept_but_suppress_nothing():
  boxes = np.float32([
      [20, 20, 5, 40],    # 0: x2 < x1, best score, covers box 2's region.
      [20, 20, 5, 40],    # 1: identical inverted box.
      [5, 20, 20, 40],    # 2: the non-inverted version.
      [5, 40, 20, 20],    # 3: y2 < y1.
      [6, 21, 20, 40],    # 4: overlaps box 2 (IoU 300/336 = 0.89).
  ])
  scores = np.float32([0.9, 0.8, 0.7, 0.6, 0.5])
  # Empty boxes overlap nothing: all of 0, 1, 3 kept; 2 suppresses 4.
  np.testing.assert_array_equal(
      kept(padded_nms(boxes, scores, 0.0, max_output=5)), [0, 1, 2, 3])
  np.testing.assert_array_equal(
      kept(padded_nms(boxes, scores, 0.9, max_output=5)), [0, 1, 2, 3, 4])


def test_chain_needs_many_fixed_point_steps():
  # Each box overlaps its neighbours strongly (IoU 0.82) but the one after
  # next weakly (0.68): greedy keeps every other box. Inside a 64-tile this
  # needs many fixed-point steps.
  x = np.arange(150, dtype=np.float32) * 2.0
  boxes = np.stack([x, 0 * x, x + 19, 0 * x + 19], 1)
  scores = np.float32(1 - np.arange(150) / 150)
  want = reference(boxes, scores, 0.75, 150)
  np.testing.assert_array_equal(want, np.arange(0, 150, 2))
  np.testing.assert_array_equal(
      kept(padded_nms(boxes, scores, 0.75, max_output=150)), want)


def test_jit_equals_no_jit(rng):
  boxes = random_boxes(rng, 30, size=30)
  scores = rng.random(30).astype(np.float32)
  a = nms_lib.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.4, 20,
                  tile_size=8)
  b = jit_nms(boxes, scores, 0.4, max_output=20, tile_size=8)
  assert 1 < int(b[1].sum()) < 20, int(b[1].sum())
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_vmap_over_batch_and_thresholds(rng):
  b, n = 4, 80
  boxes = np.stack([random_boxes(rng, n) for _ in range(b)])
  scores = rng.random((b, n)).astype(np.float32)
  scores[2] = -np.inf  # One image with nothing.
  thr = np.float32([0.3, 0.5, 0.7, 0.0])
  f = jax.jit(jax.vmap(lambda bb, ss, tt: nms_lib.nms(bb, ss, tt, 60,
                                                      tile_size=16)))
  idx, valid = f(boxes, scores, thr)
  for i in range(b):
    np.testing.assert_array_equal(kept((idx[i], valid[i])),
                                  reference(boxes[i], scores[i], thr[i], 60))
  # vmap over classes (shared boxes) with a traced threshold.
  g = jax.jit(jax.vmap(nms_lib.nms, in_axes=(None, 0, None, None)),
              static_argnums=3)
  idx, valid = g(boxes[0], scores, jnp.float32(0.5), 60)
  for i in range(b):
    np.testing.assert_array_equal(kept((idx[i], valid[i])),
                                  reference(boxes[0], scores[i], 0.5, 60))


def test_memory_is_not_quadratic():
  n = 12000
  f = jax.jit(nms_lib.nms, static_argnums=3)
  compiled = f.lower(jax.ShapeDtypeStruct((n, 4), jnp.float32),
                     jax.ShapeDtypeStruct((n,), jnp.float32),
                     jax.ShapeDtypeStruct((), jnp.float32), 2000).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 4 * 2**20, temp  # "A few MB"; measured ~0.4 MB.
  assert temp < n * n * 4 / 100


# ----------------------------------------------------------------------------
# batched_nms
# ----------------------------------------------------------------------------
def detection_inputs(rng, k, n, shared=False):
  prop = random_boxes(rng, n, size=120, max_wh=50)
  if shared:
    boxes = prop
  else:
    boxes = (prop[None] + rng.normal(0, 3, (k, n, 4))).astype(np.float32)
  logits = rng.normal(0, 1.5, (n, k))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return boxes, np.ascontiguousarray(probs.T).astype(np.float32)


def check_batched(out, want, boxes, scores, d):
  ob, os_, oc, oi, ov = (np.asarray(o) for o in out)
  assert ob.shape == (d, 4) and os_.shape == (d,) and oc.dtype == np.int32
  m = len(want)
  np.testing.assert_array_equal(ov, np.arange(d) < m)
  np.testing.assert_array_equal(oc[:m], [w[1] for w in want])
  np.testing.assert_array_equal(oi[:m], [w[2] for w in want])
  np.testing.assert_array_equal(os_[:m], [w[0] for w in want])
  b = boxes if boxes.ndim == 3 else np.broadcast_to(boxes, scores.shape + (4,))
  np.testing.assert_array_equal(ob[:m], b[oc[:m], oi[:m]])
  assert (oc[m:] == -1).all() and (oi[m:] == -1).all()
  assert (ob[m:] == 0).all() and (os_[m:] == 0).all()
  assert np.isfinite(ob).all() and np.isfinite(os_).all()


@functools.partial(jax.jit, static_argnums=3)
def jit_batched(boxes, scores, thr, d, score_thr):
  return nms_lib.batched_nms(boxes, scores, thr, d, score_thr)


@pytest.mark.parametrize("shared", [False, True])
def test_batched_matches_per_class_loop(rng, shared):
  k, n = 7, 60
  d = 40
  found = []
  for score_thr, thr in ((0.0, 0.3), (0.05, 0.5), (0.5, 0.3)):
    boxes, scores = detection_inputs(rng, k, n, shared)
    want = batched_reference(boxes, scores, thr, d, score_thr)
    out = jit_batched(boxes, scores, thr, d, score_thr)
    check_batched(out, want, boxes, scores, d)
    found.append(len(want))
  assert found[0] == d and 0 < found[-1] < d  # Truncation and padding seen.


def test_batched_strict_score_threshold_and_bad_input():
  boxes = np.float32([[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 10]])
  scores = np.float32([[0.5, 0.05, 0.4],      # class 0: 0.05 == threshold.
                       [np.nan, 0.9, np.inf],
                       [0.6, -np.inf, 0.7]])
  boxes3 = np.broadcast_to(boxes, (3, 3, 4)).copy()
  boxes3[2, 2, 1] = np.nan  # Class 2's best box is absent.
  out = jit_batched(boxes3, scores, 0.3, 5, 0.05)
  # Class 0: 0.5 kept, 0.4 suppressed (same box), 0.05 not > 0.05.
  # Class 1: 0.9. Class 2: 0.6 (0.7 has a NaN box).
  want = [(np.float32(0.9), 1, 1), (np.float32(0.6), 2, 0),
          (np.float32(0.5), 0, 0)]
  check_batched(out, want, boxes3, scores, 5)


def test_batched_empty():
  out = jit_batched(np.zeros((0, 4), np.float32), np.zeros((3, 0), np.float32),
                    0.3, 4, 0.0)
  assert not np.asarray(out[4]).any() and out[0].shape == (4, 4)


def test_batched_vmap_over_images(rng):
  k, n, d = 5, 40, 20
  data = [detection_inputs(rng, k, n) for _ in range(3)]
  boxes = np.stack([x[0] for x in data])
  scores = np.stack([x[1] for x in data])
  f = jax.jit(jax.vmap(lambda b, s: nms_lib.batched_nms(b, s, 0.3, d, 0.05)))
  out = f(boxes, scores)
  for i in range(3):
    want = batched_reference(boxes[i], scores[i], 0.3, d, 0.05)
    check_batched([o[i] for o in out], want, boxes[i], scores[i], d)


# ----------------------------------------------------------------------------
# pixel_offset=0: torchvision's IoU (the FPN models)
# ----------------------------------------------------------------------------
def class_boxes(rng, n: int, k: int, size: float):
  """``(boxes [n, 4], scores [n], cls [n], per_cls [k, n])``: small boxes
  (sides 2-12) in a ``size`` square, so that many pairs sit near the
  thresholds, distinct scores, a class each, and the per-class score table
  of ``batched_nms`` (-inf where a box is not of the class)."""
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(2, 12, (n, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) / n
  cls = rng.integers(0, k, n)
  per_cls = np.full((k, n), -np.inf, np.float32)
  per_cls[cls, np.arange(n)] = scores
  return boxes, scores, cls, per_cls


def test_pixel_offset_zero_matches_torchvision(rng):
  """nms / batched_nms with pixel_offset=0 keep what torchvision.ops keeps.

  Boxes are drawn so that many pairs sit near the thresholds, and with a +1
  the results must differ (the offset is really used).
  """
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  n, k = 300, 4
  boxes, scores, cls, per_cls = class_boxes(rng, n, k, 60)
  f = jax.jit(lambda b, s, t: nms_lib.nms(b, s, t, n, pixel_offset=0.0))
  differs = False
  for thr in (0.3, 0.5, 0.7):
    want = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                      thr).numpy()
    got = kept(f(boxes, scores, np.float32(thr)))
    np.testing.assert_array_equal(got, want)
    differs |= not np.array_equal(kept(nms_lib.nms(boxes, scores, thr, n)),
                                  want)
    # batched_nms over a category axis, as torchvision's batched_nms.
    want_b = tv_ops.batched_nms(torch.from_numpy(boxes),
                                torch.from_numpy(scores),
                                torch.from_numpy(cls), thr).numpy()
    out = nms_lib.batched_nms(boxes, per_cls, thr, n, -1.0, pixel_offset=0.0)
    v = np.asarray(out[4])
    np.testing.assert_array_equal(np.asarray(out[3])[v], want_b)
  assert differs
