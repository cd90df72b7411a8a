"""Tests for frcnn_jax/analysis.py (matching, confusion matrix, evaluation
pictures, PR / confusion plots) and vis' label placement."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from frcnn_jax import analysis as A
from frcnn_jax import metrics as M
from frcnn_jax import vis

NAMES = ["__background__", "circle", "square", "triangle"]


def test_match_detections_greedy_by_score():
  gt = np.array([[10, 10, 49, 49], [100, 100, 139, 139], [200, 0, 239, 39]],
                float)
  gc = np.array([1, 2, 1])
  ign = np.array([False, False, True])            # the third is crowd
  det = np.array([[12, 12, 51, 51],     # 0: on gt 0, right class
                  [10, 10, 49, 49],     # 1: exact on gt 0 but lower score
                  [100, 100, 139, 139],  # 2: on gt 1, wrong class
                  [201, 0, 240, 39],    # 3: on the crowd box
                  [300, 300, 320, 320]])  # 4: on nothing
  dc = np.array([1, 1, 3, 1, 1])
  ds = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  det_gt, ignored, found = A.match_detections(det, dc, ds, gt, gc, ign)
  # The higher score takes gt 0 even though the lower one fits better.
  assert det_gt.tolist() == [0, -1, -1, -1, -1]
  assert ignored.tolist() == [False, False, False, True, False]
  assert found.tolist() == [True, False, False]
  # Without classes the wrong-class detection finds gt 1.
  det_gt, _, found = A.match_detections(det, dc, ds, gt, gc, ign,
                                        class_aware=False)
  assert det_gt.tolist() == [0, -1, 1, -1, -1]
  assert found.tolist() == [True, True, False]
  # The threshold is inclusive: IoU of det 0 and gt 0 by hand.
  iou = (38 * 38) / (2 * 40 * 40 - 38 * 38)
  assert A.match_detections(det[:1], [1], [1.0], gt[:1], [1],
                            iou_threshold=iou)[0].tolist() == [0]
  assert A.match_detections(det[:1], [1], [1.0], gt[:1], [1],
                            iou_threshold=iou + 1e-9)[0].tolist() == [-1]


def test_confusion_matrix_by_hand():
  gts = [dict(boxes=[[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]],
              classes=[1, 2, 3], ignore=[False, False, True]),
         dict(boxes=[[0, 0, 9, 9]], classes=[2])]
  dets = [dict(boxes=[[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49],
                      [60, 60, 69, 69], [0, 0, 9, 9]],
               classes=[1, 1, 3, 2, 3], scores=[.9, .8, .9, .9, .3]),
          dict(boxes=np.zeros((0, 4)), classes=[], scores=[])]
  cm = A.confusion_matrix(gts, dets, 4, score_threshold=0.5)
  want = np.zeros((4, 4), int)
  want[1, 1] = 1      # circle found as circle
  want[2, 1] = 1      # square found as circle
  want[0, 2] = 1      # a square where there is nothing
  want[2, 0] = 1      # the second image's square missed
  # The crowd detection and the low-score one are not counted.
  np.testing.assert_array_equal(cm, want)
  j = A.confusion_json(cm, NAMES, score_threshold=0.5, iou_threshold=0.5)
  assert j["rows_true"][0] == "(no object)" and j["cols_predicted"][0] == \
      "(missed)" and j["rows_true"][1:] == NAMES[1:]


def _top_margin(out, gray=128):
  """First row of the drawn picture (the margins are white)."""
  return int(np.argmax(np.all(out[:, :4] == gray, axis=(1, 2))))


def _edge_colors(out, y, x1, x2):
  return [tuple(p) for p in out[y, x1:x2 + 1]]


def test_evaluation_picture_shows_misses_and_false_positives():
  img = np.full((100, 160, 3), 128, np.uint8)
  gt = np.array([[10, 10, 49, 49], [60, 50, 109, 89]], float)
  det = np.array([[11, 11, 50, 50],        # finds gt 0
                  [120, 5, 155, 30]])      # on nothing
  out = A.draw_evaluation(img, det, [1, 2], [0.9, 0.8], gt, [1, 2], NAMES,
                          min_side=0, line_width=2)
  top = _top_margin(out)
  assert top > 0 and out.shape[1] == 160 and out.shape[0] > 100 + top
  # The missed square: its outline in the "missed" colour, dashed (gray
  # gaps between dashes), at its place.
  edge = _edge_colors(out, 89 + top, 60, 109)
  assert edge.count(A.MISSED_COLOR) > 15
  assert edge.count((128, 128, 128)) > 10
  left = [tuple(out[y + top, 60]) for y in range(50, 90)]
  assert left.count(A.MISSED_COLOR) > 12
  # Its label ("missed square") on an orange background just above it.
  assert (out[50 + top - 8, 62:80] == A.MISSED_COLOR).all(axis=-1).any()
  # The true positive solid green, the false positive solid red.
  assert set(_edge_colors(out, 50 + top, 12, 48)) == {A.TP_COLOR}
  assert set(_edge_colors(out, 30 + top, 122, 153)) == {A.FP_COLOR}
  # The found ground truth dashed blue where the detection does not cover it.
  assert A.GT_COLOR in _edge_colors(out, 10 + top, 12, 48) or \
      A.GT_COLOR in [tuple(out[y + top, 10]) for y in range(12, 48)]
  # Far from every box the picture is untouched.
  assert (out[top + 95, 5:50] == 128).all()


def test_labels_do_not_overlap_and_tiny_images_stay_visible():
  # Five boxes on one spot: five labels, none over another.
  boxes = [(50, 60, 90, 100)] * 5
  spots = vis.place_labels(boxes, [(40, 12)] * 5, (200, 200))
  for i in range(5):
    for j in range(i):
      assert vis._rect_overlap(spots[i], spots[j]) == 0, (i, j)
  # A 24x16 image drawn at its size: the label would hide it, so only the
  # outline is drawn; most pixels are untouched.
  tiny = np.full((16, 24, 3), 90, np.uint8)
  out = vis.draw_detections(tiny, [[4, 3, 19, 12]], [2], [0.97], NAMES)
  assert out.shape == tiny.shape
  assert (out == 90).all(axis=-1).mean() > 0.5
  # Enlarged with margins: the label is drawn, in the margin above the
  # picture (the box touches the top), not over it.
  out = vis.draw_detections(tiny, [[4, 0, 19, 12]], [2], [0.97], NAMES,
                            min_side=240, margin=True)
  s = vis.display_scale(16, 24, 240)
  assert s == 10 and out.shape[1] == 240
  top = _top_margin(out, 90)
  color = vis.class_color(2)
  label_rows = np.flatnonzero((out == color).all(axis=-1).sum(axis=1) > 30)
  assert label_rows.min() < top          # the label is above the picture
  picture = out[top:top + 160]
  assert (picture == 90).all(axis=-1).mean() > 0.7


def test_plots_and_report(tmp_path, monkeypatch):
  curves = {"recall": np.linspace(0, 1, 101).tolist(), "precision": {
      "circle": {"0.5": [1.0] * 60 + [0.0] * 41, "0.75": [0.5] * 101},
      "square": {"0.5": [-1.0] * 101}}}
  cm = A.confusion_json(np.array([[0, 1, 0], [2, 5, 1], [0, 0, 3]]),
                        NAMES[:3], score_threshold=0.5, iou_threshold=0.5)
  written = A.write_report(str(tmp_path / "a"), curves=curves, cm_json=cm)
  assert sorted(map(os.path.basename, written)) == [
      "confusion_matrix.json", "confusion_matrix.png", "pr_curves.json",
      "pr_curves.png"]
  for f in ("pr_curves.png", "confusion_matrix.png"):
    with Image.open(tmp_path / "a" / f) as im:
      assert im.size[0] > 200 and np.asarray(im.convert("L")).std() > 5
  assert json.load(open(tmp_path / "a" / "confusion_matrix.json"))[
      "matrix"][1] == [2, 5, 1]
  # Without matplotlib: the numbers, no pictures, no error.
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
  written = A.write_report(str(tmp_path / "b"), curves=curves, cm_json=cm)
  assert sorted(map(os.path.basename, written)) == [
      "confusion_matrix.json", "pr_curves.json"]
  with pytest.raises(ImportError):
    vis.plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


def test_voc_pr_curves_interpolated_by_hand():
  # One class, 2 gt; detections TP, FP, TP: recall 1/2, 1/2, 1;
  # precision 1, 1/2, 2/3 -> interpolated 1 up to recall .5, 2/3 after.
  gt = [dict(boxes=[[0, 0, 9, 9], [20, 20, 29, 29]], classes=[1, 1])]
  det = [dict(boxes=[[0, 0, 9, 9], [50, 50, 59, 59], [20, 20, 29, 29]],
              scores=[.9, .8, .7], classes=[1, 1, 1])]
  m = M.voc_evaluate(gt, det, NAMES[:2], pr_curves=True)
  p = m["pr_curves"]["precision"]["circle"]["0.5"]
  np.testing.assert_allclose(p, [1.0] * 51 + [2 / 3] * 50)
  np.testing.assert_allclose(M.interpolated_precision(
      [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], np.array([0.0, 0.5, 0.51, 1.0])),
      [1.0, 1.0, 2 / 3, 2 / 3])
