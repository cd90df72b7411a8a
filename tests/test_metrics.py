"""Tests for frcnn_jax/metrics.py: COCO conversion and evaluation, VOC AP."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from frcnn_jax import metrics as M
from frcnn_jax import voc_metrics


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def make_coco_gt(images, anns, cats):
  """In-memory COCO ground truth. anns: (image_id, cat_id, [x, y, w, h])."""
  d = {
      "images": [{"id": i, "width": 200, "height": 200} for i in images],
      "categories": [{"id": c, "name": n} for c, n in cats],
      "annotations": [
          {"id": k + 1, "image_id": im, "category_id": c, "bbox": list(b),
           "area": float(b[2] * b[3]), "iscrowd": 0}
          for k, (im, c, b) in enumerate(anns)],
  }
  gt = COCO()
  gt.dataset = d
  gt.createIndex()
  return gt


def xywh_to_det(b):
  """COCO box -> inclusive xyxy the way the data pipeline reads it."""
  return [b[0], b[1], b[0] + b[2] - 1, b[1] + b[3] - 1]


def reference_voc_eval(gt, dets, c, thr, use_07):
  """The voc_eval structure: one global loop over detections in score order.

  Written independently of the library (global order, explicit loops,
  plain-Python IoU), used as the reference on random data.
  """
  recs = {}
  npos = 0
  for i, g in enumerate(gt):
    sel = [k for k in range(len(g["classes"])) if g["classes"][k] == c]
    diff = [bool(g["difficult"][k]) for k in sel]
    recs[i] = {"boxes": [g["boxes"][k] for k in sel], "diff": diff,
               "det": [False] * len(sel)}
    npos += sum(1 for x in diff if not x)
  flat = [(float(d["scores"][k]), i, d["boxes"][k])
          for i, d in enumerate(dets) for k in range(len(d["scores"]))
          if d["classes"][k] == c]
  flat.sort(key=lambda t: -t[0])
  tp, fp = [], []
  for _, i, bb in flat:
    r = recs[i]
    ovmax, jmax = -np.inf, -1
    for j, g in enumerate(r["boxes"]):
      iw = max(min(bb[2], g[2]) - max(bb[0], g[0]) + 1, 0)
      ih = max(min(bb[3], g[3]) - max(bb[1], g[1]) + 1, 0)
      inter = iw * ih
      uni = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
             + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter)
      ov = inter / uni
      if ov > ovmax:
        ovmax, jmax = ov, j
    t = f = 0
    if ovmax > thr:
      if not r["diff"][jmax]:
        if not r["det"][jmax]:
          t = 1
          r["det"][jmax] = True
        else:
          f = 1
    else:
      f = 1
    tp.append(t)
    fp.append(f)
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  rec = tp / npos
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      p = prec[rec >= t].max() if np.any(rec >= t) else 0.0
      ap += p / 11.0
    return ap
  # Area: integrate the envelope as a step function over recall levels.
  ap, prev_r = 0.0, 0.0
  for k in range(len(rec)):
    if rec[k] > prev_r:
      ap += (rec[k] - prev_r) * prec[k:].max()
      prev_r = rec[k]
  return ap


def test_detections_to_coco_skips_padding_and_maps_classes():
  image_ids = np.array([7, 9, -1])
  boxes = np.zeros((3, 3, 4), np.float32)
  boxes[0, 0] = [10, 20, 29, 59]
  boxes[0, 1] = [1.23456, 2, 3, 4]
  boxes[1, 0] = [np.nan, 0, 5, 5]
  boxes[2, 0] = [0, 0, 5, 5]          # padding image
  scores = np.array([[0.9, 0.123456789, 0.5], [0.8, 0.7, 0.6], [0.9, 0.9, 0.9]])
  classes = np.array([[1, 2, 0], [1, 1, 1], [1, 1, 1]])
  valid = np.array([[True, True, False], [True, False, False], [True, True, True]])
  res = M.detections_to_coco(image_ids, boxes, scores, classes, valid,
                             {1: 18, 2: 44})
  assert len(res) == 2   # NaN box row and padding image dropped
  assert res[0] == {"image_id": 7, "category_id": 18,
                    "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}
  assert res[1]["category_id"] == 44
  assert res[1]["bbox"][0] == 1.23 and res[1]["score"] == 0.12346
  json.dumps(res)   # plain Python types
  assert all(type(v) is float for v in res[0]["bbox"])
  assert type(res[0]["image_id"]) is int
  # A sequence mapping gives the same.
  res2 = M.detections_to_coco(image_ids, boxes, scores, classes, valid,
                              [None, 18, 44])
  assert res2 == res


def test_detections_to_coco_background_class_raises():
  with pytest.raises(ValueError, match="category"):
    M.detections_to_coco([1], np.zeros((1, 1, 4)), [[0.5]], [[0]], [[True]],
                         {1: 1})


def test_detections_to_coco_bbox_is_inverse_of_gt_reading():
  gt_xywh = [12.0, 30.0, 41.0, 17.0]
  res = M.detections_to_coco([3], np.array([[xywh_to_det(gt_xywh)]]), [[1.0]],
                             [[1]], [[True]], {1: 5})
  assert res[0]["bbox"] == gt_xywh


# ---------------------------------------------------------------------------
# COCO evaluation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("evaluator", M.COCO_EVALUATORS)
def test_coco_perfect_detections_give_ap_1(evaluator):
  anns = [(1, 1, [10, 10, 20, 20]),        # small (400 < 32^2)
          (1, 2, [50, 50, 60, 60]),        # medium
          (2, 1, [0, 0, 120, 110]),        # large
          (3, 2, [30, 40, 15, 25])]
  gt = make_coco_gt([1, 2, 3], anns, [(1, "cat"), (2, "dog")])
  cid = {1: 1, 2: 2}
  B, D = 3, 4
  boxes = np.zeros((B, D, 4))
  classes = np.zeros((B, D), int)
  valid = np.zeros((B, D), bool)
  slot = {1: 0, 2: 0, 3: 0}
  index = {1: 0, 2: 1, 3: 2}
  for im, c, b in anns:
    i = index[im]
    boxes[i, slot[im]] = xywh_to_det(b)
    classes[i, slot[im]] = c
    valid[i, slot[im]] = True
    slot[im] += 1
  res = M.detections_to_coco([1, 2, 3], boxes, np.full((B, D), 0.9), classes,
                             valid, cid)
  m = M.coco_evaluate(gt, res, evaluator=evaluator)
  for k in M.COCO_METRIC_NAMES:
    assert m[k] == pytest.approx(1.0), k
  assert m["per_class_AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
  table = M.format_coco_table(m)
  assert "AP50" in table and "dog" in table and "1.000" in table


@pytest.mark.parametrize("evaluator", M.COCO_EVALUATORS)
def test_coco_known_ap_by_hand(evaluator):
  """3 gt of one class (medium, one per image); ranked detections TP, FP, TP.

  By hand: recall after each = 1/3, 1/3, 2/3; precision 1, 1/2, 2/3;
  interpolated (max to the right) 1, 2/3, 2/3. On COCO's 101 recall points
  0, .01, ..., 1: points <= 1/3 (0..0.33: 34 points) get 1, points in
  (1/3, 2/3] (0.34..0.66: 33 points) get 2/3, the rest 0.
  AP = (34 + 33 * 2/3) / 101 = 56/101, the same at every IoU threshold
  (the TPs are exact, the FP overlaps nothing). Recall 2/3 with any maxDets.
  """
  gboxes = {1: [10, 10, 50, 50], 2: [60, 60, 40, 50], 3: [20, 30, 45, 45]}
  gt = make_coco_gt([1, 2, 3], [(i, 1, b) for i, b in gboxes.items()],
                    [(1, "thing")])
  results = [
      {"image_id": 1, "category_id": 1, "bbox": gboxes[1], "score": 0.9},
      {"image_id": 3, "category_id": 1, "bbox": [150, 150, 40, 40], "score": 0.8},
      {"image_id": 2, "category_id": 1, "bbox": gboxes[2], "score": 0.7},
  ]
  before = json.dumps(results)
  m = M.coco_evaluate(gt, results, evaluator=evaluator)
  assert json.dumps(results) == before      # input not modified by loadRes
  expected = 56 / 101
  for k in ("AP", "AP50", "AP75", "APm"):
    assert m[k] == pytest.approx(expected, abs=1e-9), k
  assert m["APs"] == -1 and m["APl"] == -1   # no gt in those ranges
  for k in ("AR1", "AR10", "AR100", "ARm"):
    assert m[k] == pytest.approx(2 / 3), k
  assert m["per_class_AP"]["thing"] == pytest.approx(expected)
  assert m["per_class_AP50"]["thing"] == pytest.approx(expected)
  assert m["per_class_AP75"]["thing"] == pytest.approx(expected)
  assert m["per_class_AR100"]["thing"] == pytest.approx(2 / 3)
  assert m["per_class_num_gt"]["thing"] == 3
  table = M.format_coco_table(m)
  # pycocotools' own lines print -1.000; without them (faster-coco-eval
  # does not print its summary) the numbers by name print n/a.
  undefined = "-1.000" if evaluator == "pycocotools" else "n/a"
  assert undefined in table and "thing" in table
  # The PR curve at IoU .5: the interpolated precision by hand.
  m = M.coco_evaluate(gt, results, pr_curves=True)
  curve = m["pr_curves"]["precision"]["thing"]["0.5"]
  assert len(m["pr_curves"]["recall"]) == 101
  np.testing.assert_allclose(curve, [1.0] * 34 + [2 / 3] * 33 + [0.0] * 34)


def test_coco_summary_is_pycocotools_verbatim(capsys):
  """The 12 summary lines are exactly what COCOeval.summarize() prints."""
  import contextlib
  import io
  from pycocotools.cocoeval import COCOeval
  gboxes = {1: [10, 10, 50, 50], 2: [60, 60, 40, 50]}
  gt = make_coco_gt([1, 2], [(i, 1, b) for i, b in gboxes.items()],
                    [(1, "thing")])
  results = [{"image_id": 1, "category_id": 1, "bbox": [12, 10, 50, 50],
              "score": 0.9}]
  m = M.coco_evaluate(gt, results)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
    ev.evaluate()
    ev.accumulate()
  with contextlib.redirect_stdout(out := io.StringIO()):
    ev.summarize()
  want = out.getvalue().rstrip("\n").split("\n")
  assert len(want) == 12 and m["summary"] == want
  table = M.format_coco_table(m)
  assert table.split("\n")[:12] == want
  no_summary = {k: v for k, v in m.items() if k != "summary"}
  first = M.format_coco_table(no_summary).split("\n")[0]
  assert first.split() == ["AP", f"{m['AP']:.3f}"]


@pytest.mark.parametrize("evaluator", M.COCO_EVALUATORS)
def test_coco_image_ids_subset_and_class_names(evaluator):
  gboxes = {1: [10, 10, 50, 50], 2: [60, 60, 40, 50]}
  gt = make_coco_gt([1, 2], [(1, 3, gboxes[1]), (2, 3, gboxes[2])], [(3, "a")])
  results = [{"image_id": 1, "category_id": 3, "bbox": gboxes[1], "score": 0.5}]
  # All images: half the objects found -> AP 51/101 (recall points 0..0.5).
  assert M.coco_evaluate(gt, results, evaluator=evaluator)["AP"] == (
      pytest.approx(51 / 101))
  # Only image 1: everything found.
  m = M.coco_evaluate(gt, results, image_ids=[1],
                      class_names=["__background__", "first"],
                      evaluator=evaluator)
  assert m["AP"] == pytest.approx(1.0)
  assert list(m["per_class_AP"]) == ["first"]
  m = M.coco_evaluate(gt, results, class_names={3: "x"}, evaluator=evaluator)
  assert list(m["per_class_AP"]) == ["x"]
  with pytest.raises(ValueError, match="class_names"):
    M.coco_evaluate(gt, results, class_names=["a", "b", "c"],
                    evaluator=evaluator)


@pytest.mark.parametrize("evaluator", M.COCO_EVALUATORS)
def test_coco_empty_results_do_not_crash(evaluator):
  gt = make_coco_gt([1, 2], [(1, 1, [10, 10, 50, 50])], [(1, "a"), (2, "b")])
  m = M.coco_evaluate(gt, [], evaluator=evaluator)
  assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AR100"] == 0.0
  assert m["per_class_AP"] == {"a": 0.0, "b": -1.0}
  assert isinstance(M.format_coco_table(m), str)


@pytest.mark.parametrize("evaluator", M.COCO_EVALUATORS)
def test_coco_unknown_image_raises(evaluator):
  gt = make_coco_gt([1], [(1, 1, [10, 10, 50, 50])], [(1, "a")])
  with pytest.raises(ValueError, match="not in the ground truth"):
    M.coco_evaluate(gt, [{"image_id": 99, "category_id": 1,
                          "bbox": [0, 0, 5, 5], "score": 1.0}],
                    evaluator=evaluator)


def _both_evaluators(gt, dets):
  """(pycocotools COCOeval, faster-coco-eval COCOeval_faster), evaluated."""
  import contextlib
  import io
  from faster_coco_eval import COCOeval_faster
  from pycocotools.cocoeval import COCOeval
  out = []
  for cls, kw in ((COCOeval, {}),
                  (COCOeval_faster, {"print_function": lambda *a: None})):
    with contextlib.redirect_stdout(io.StringIO()):
      e = cls(gt, gt.loadRes([dict(d) for d in dets]), "bbox", **kw)
      e.evaluate(), e.accumulate(), e.summarize()
    out.append(e)
  return out


def _coco_like_gt(tmp_path, n):
  from frcnn_jax.data import testing
  path = str(tmp_path / "gt.json")
  testing.write_coco_like(path, n, 7 * n, seed=5)
  gt = COCO()
  gt.dataset = json.load(open(path))
  gt.createIndex()
  return gt


def _shapes_gt(tmp_path):
  from frcnn_jax.data import build_source
  from frcnn_jax.data import testing
  cfg = testing.tiny_data_config(str(tmp_path / "shapes"))
  return build_source(cfg, cfg.val_split).coco_gt()


@pytest.mark.parametrize("dataset", ["shapes", "coco_like"])
def test_faster_coco_eval_matches_pycocotools(tmp_path, dataset):
  """The 12 numbers agree to ~1e-16; the precision arrays are equal except
  where pycocotools has 1 / (1 + eps) (its eps-guarded division after a
  first detection that is a true positive) and faster-coco-eval 1.0."""
  from frcnn_jax.data import testing
  gt = (_shapes_gt(tmp_path) if dataset == "shapes"
        else _coco_like_gt(tmp_path, 60))
  dets = testing.coco_like_detections(gt.dataset, 40, seed=6)
  ref, fast = _both_evaluators(gt, dets)
  np.testing.assert_allclose(fast.stats[:12], ref.stats, rtol=0, atol=1e-15)
  p_ref, p_fast = ref.eval["precision"], fast.eval["precision"]
  assert p_ref.shape == p_fast.shape
  differ = p_ref != p_fast
  one_over_one_plus_eps = 1 / (1 + np.spacing(1))
  assert (p_ref[differ] == one_over_one_plus_eps).all()
  assert (p_fast[differ] == 1.0).all()
  np.testing.assert_array_equal(ref.eval["recall"], fast.eval["recall"])
  # Through coco_evaluate, per-class numbers too.
  a = M.coco_evaluate(gt, dets)
  b = M.coco_evaluate(gt, dets, evaluator="faster_coco_eval")
  for k in M.COCO_METRIC_NAMES:
    assert abs(a[k] - b[k]) <= 1e-15, k
  for name, ap in a["per_class_AP"].items():
    assert abs(ap - b["per_class_AP"][name]) <= 1e-15, name
  with pytest.raises(ValueError, match="evaluator"):
    M.coco_evaluate(gt, dets, evaluator="detectron2")


# ---------------------------------------------------------------------------
# VOC
# ---------------------------------------------------------------------------


def test_voc_ap_by_hand():
  """4 positives; ranked detections TP, FP, TP, TP, FP.

  rec  = 1/4, 1/4, 2/4, 3/4, 3/4
  prec = 1,   1/2, 2/3, 3/4, 3/5
  11-point: t=0, .1, .2: max prec at rec>=t = 1; t=.3,.4,.5: max over
  points with rec >= t = 3/4; t=.6,.7: 3/4; t=.8,.9,1: none -> 0.
  AP07 = (3*1 + 5*3/4) / 11 = 6.75/11.
  Area: envelope 1 on (0, 1/4], 3/4 on (1/4, 3/4]: 1/4*1 + 1/2*3/4 = 0.625.
  """
  rec = np.array([1, 1, 2, 3, 3]) / 4
  prec = np.array([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
  assert M.voc_ap(rec, prec, True) == pytest.approx(6.75 / 11)
  assert M.voc_ap(rec, prec, False) == pytest.approx(0.625)


def test_voc_ap_edges():
  assert M.voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
  assert M.voc_ap(np.zeros(0), np.zeros(0), False) == 0.0
  assert M.voc_ap([1.0], [1.0], True) == pytest.approx(1.0)
  assert M.voc_ap([1.0], [1.0], False) == pytest.approx(1.0)
  # The devkit's np.arange thresholds: 0.3 is 0.30000000000000004, so a
  # recall of exactly 0.3 reaches only t = 0, 0.1, 0.2.
  assert M.voc_ap([0.3], [1.0], True) == pytest.approx(3 / 11)


def _img(boxes, classes, difficult=None):
  g = {"boxes": np.asarray(boxes, float).reshape(-1, 4),
       "classes": np.asarray(classes, int)}
  if difficult is not None:
    g["difficult"] = np.asarray(difficult, bool)
  return g


def _det(boxes, scores, classes):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4),
          "scores": np.asarray(scores, float), "classes": np.asarray(classes, int)}


NAMES = ["__background__", "a", "b"]


def test_voc_evaluate_by_hand():
  """Class a: 4 gt in 2 images. Detections ranked TP, FP (duplicate), TP, FP
  (miss), TP -> the curve of test_voc_ap_by_hand plus a final TP:
  rec 1/4,1/4,2/4,2/4,3/4 prec 1,1/2,2/3,1/2,3/5.
  11-pt: t <= .2 -> 1; t = .3, .4, .5 -> 2/3 (the best precision at
  recall >= t); t = .6, .7 -> 3/5; t >= .8 -> 0.
  AP07 = (3 + 3*(2/3) + 2*(3/5)) / 11.
  Class b: 1 gt, not detected -> 0.
  """
  g1 = [[0, 0, 9, 9], [20, 20, 39, 39], [50, 50, 59, 59]]
  g2 = [[0, 0, 19, 19], [100, 100, 120, 120]]
  gt = [_img(g1, [1, 1, 2]), _img(g2, [1, 1])]
  dets = [
      _det([[0, 0, 9, 9], [0, 0, 9, 9], [20, 20, 39, 40]],
           [0.9, 0.8, 0.7], [1, 1, 1]),
      _det([[200, 200, 210, 210], [1, 1, 19, 19]], [0.6, 0.5], [1, 1]),
  ]
  m = M.voc_evaluate(gt, dets, NAMES)
  ap_a = (3 + 3 * (2 / 3) + 2 * (3 / 5)) / 11
  assert m["per_class_AP"]["a"] == pytest.approx(ap_a)
  assert m["per_class_AP"]["b"] == 0.0
  assert m["mAP"] == pytest.approx(ap_a / 2)
  assert m["num_gt"] == {"a": 4, "b": 1}
  # Area-based: envelope 1 to rec 1/4, 2/3 to 2/4, 3/5 to 3/4.
  m = M.voc_evaluate(gt, dets, NAMES, use_07_metric=False)
  assert m["per_class_AP"]["a"] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5)
  assert "mAP" in M.format_voc_table(m)


def test_voc_iou_plus_one_and_strict_threshold():
  # Inclusive widths: [0,0,9,9] vs [5,0,14,9]: inter 5*10, union 150 -> 1/3.
  assert voc_metrics.voc_iou([[0, 0, 9, 9]], [[5, 0, 14, 9]])[0, 0] == pytest.approx(1 / 3)
  # IoU exactly 0.5 is not a match (voc_eval uses >): [0,0,9,9] vs [0,0,19,9]
  # -> 100 / 200.
  gt = [_img([[0, 0, 19, 9]], [1])]
  m = M.voc_evaluate(gt, [_det([[0, 0, 9, 9]], [1.0], [1])], NAMES)
  assert m["per_class_AP"]["a"] == 0.0
  m = M.voc_evaluate(gt, [_det([[0, 0, 9, 9]], [1.0], [1])], NAMES,
                     iou_threshold=0.49)
  assert m["per_class_AP"]["a"] == pytest.approx(1.0)


@pytest.mark.parametrize("use_07", [True, False])
def test_voc_difficult_neither_helps_nor_hurts(use_07):
  base_gt = [_img([[0, 0, 9, 9], [30, 30, 49, 49]], [1, 1]),
             _img([[0, 0, 29, 29]], [1])]
  base_det = [_det([[0, 0, 9, 9], [60, 60, 70, 70]], [0.9, 0.8], [1, 1]),
              _det([[0, 0, 29, 29]], [0.7], [1])]
  ref = M.voc_evaluate(base_gt, base_det, NAMES, use_07_metric=use_07)
  assert 0 < ref["per_class_AP"]["a"] < 1
  diff_box = [100, 100, 139, 139]
  # A difficult box that is detected (with the highest score): ignored.
  gt = [_img([[0, 0, 9, 9], [30, 30, 49, 49], diff_box], [1, 1, 1],
             [False, False, True]), base_gt[1]]
  det = [_det([[0, 0, 9, 9], [60, 60, 70, 70], diff_box], [0.9, 0.8, 0.95],
              [1, 1, 1]), base_det[1]]
  m = M.voc_evaluate(gt, det, NAMES, use_07_metric=use_07)
  assert m["per_class_AP"]["a"] == pytest.approx(ref["per_class_AP"]["a"])
  assert m["num_gt"]["a"] == 3
  # ... detected twice (a duplicate on a difficult box is ignored too).
  det2 = [_det([[0, 0, 9, 9], [60, 60, 70, 70], diff_box, diff_box],
               [0.9, 0.8, 0.95, 0.85], [1, 1, 1, 1]), base_det[1]]
  m = M.voc_evaluate(gt, det2, NAMES, use_07_metric=use_07)
  assert m["per_class_AP"]["a"] == pytest.approx(ref["per_class_AP"]["a"])
  # A difficult box that is missed: not counted as a positive.
  m = M.voc_evaluate(gt, base_det, NAMES, use_07_metric=use_07)
  assert m["per_class_AP"]["a"] == pytest.approx(ref["per_class_AP"]["a"])
  # Sanity: the same box NOT difficult and missed does hurt.
  gt_nd = [_img([[0, 0, 9, 9], [30, 30, 49, 49], diff_box], [1, 1, 1]), base_gt[1]]
  m = M.voc_evaluate(gt_nd, base_det, NAMES, use_07_metric=use_07)
  assert m["per_class_AP"]["a"] < ref["per_class_AP"]["a"]


def test_voc_empty_detections_and_classes_without_gt():
  gt = [_img([[0, 0, 9, 9]], [1]), _img(np.zeros((0, 4)), [])]
  empty = [_det(np.zeros((0, 4)), [], []), _det(np.zeros((0, 4)), [], [])]
  m = M.voc_evaluate(gt, empty, NAMES)
  assert m["per_class_AP"] == {"a": 0.0, "b": -1.0}
  assert m["mAP"] == 0.0                     # b has no gt: left out
  # Detections of a class with no gt do not crash; AP stays undefined.
  m = M.voc_evaluate(gt, [_det([[0, 0, 9, 9]], [0.9], [2]), empty[1]], NAMES)
  assert m["per_class_AP"]["b"] == -1.0
  # No gt at all.
  m = M.voc_evaluate([_img(np.zeros((0, 4)), [])], [empty[0]], NAMES)
  assert m["mAP"] == -1.0
  assert "n/a" in M.format_voc_table(m)


def test_voc_mapping_input_valid_masks_and_nonfinite():
  gt = {"img_a": {**_img([[0, 0, 9, 9], [0, 0, 0, 0]], [1, 1]),
                  "valid": np.array([True, False])}}
  dets = {"img_a": {**_det([[0, 0, 9, 9], [0, 0, 9, 9], [np.nan, 0, 1, 1]],
                           [0.9, 0.95, np.inf], [1, 1, 1]),
                    "valid": np.array([True, False, True])}}
  m = M.voc_evaluate(gt, dets, NAMES)
  assert m["per_class_AP"]["a"] == pytest.approx(1.0)
  assert m["num_gt"]["a"] == 1
  assert M.voc_evaluate(gt, {}, NAMES)["per_class_AP"]["a"] == 0.0
  with pytest.raises(ValueError, match="not in gt"):
    M.voc_evaluate(gt, {"other": dets["img_a"]}, NAMES)
  with pytest.raises(ValueError):
    M.voc_evaluate([gt["img_a"]], [], NAMES)


@pytest.mark.parametrize("use_07", [True, False])
def test_voc_evaluate_matches_global_loop_reference(rng, use_07):
  """Random scenes (jittered gt, duplicates, misses, difficult boxes) vs the
  global-loop reference above."""
  gt, dets = [], []
  for _ in range(12):
    m = int(rng.integers(0, 6))
    xy = rng.uniform(0, 200, (m, 2))
    wh = rng.uniform(8, 80, (m, 2))
    gboxes = np.concatenate([xy, xy + wh], 1)
    gcls = rng.integers(1, 3, m)
    gdiff = rng.random(m) < 0.2
    gt.append(_img(gboxes, gcls, gdiff))
    db, ds, dc = [], [], []
    for k in range(m):
      for _ in range(int(rng.integers(0, 3))):   # 0..2 jittered hits
        db.append(gboxes[k] + rng.normal(0, 6, 4))
        ds.append(rng.random())
        dc.append(gcls[k] if rng.random() < 0.9 else 3 - gcls[k])
    for _ in range(int(rng.integers(0, 3))):     # random false positives
      p = rng.uniform(0, 200, 2)
      db.append(np.concatenate([p, p + rng.uniform(5, 60, 2)]))
      ds.append(rng.random())
      dc.append(int(rng.integers(1, 3)))
    dets.append(_det(np.asarray(db).reshape(-1, 4), ds, dc))
  m = M.voc_evaluate(gt, dets, NAMES, use_07_metric=use_07)
  for c, name in ((1, "a"), (2, "b")):
    ref = reference_voc_eval(gt, dets, c, 0.5, use_07)
    assert m["per_class_AP"][name] == pytest.approx(ref, abs=1e-12), name
  assert 0 < m["mAP"] < 1
