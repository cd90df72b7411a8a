"""What went right and wrong in an evaluation: matches, pictures, plots.

Host-side NumPy after inference, next to :mod:`frcnn_jax.metrics` (which
owns the AP numbers); everything here explains them:

* :func:`match_detections`: which detection found which ground-truth box,
  by COCOeval's greedy rule (detections by descending score; each takes
  the unmatched ground truth with the highest IoU >= the threshold; a
  detection on an ignored box, crowd or VOC difficult, is neither true
  nor false). IoU with the inclusive-pixel convention (``w = x2 - x1 + 1``).
* :func:`draw_evaluation`: an image with its ground truth (dashed) and
  detections: true positives green, false positives red, missed ground
  truth highlighted, ignored boxes gray.
* :func:`confusion_matrix`: detections above a score threshold matched to
  ground truth regardless of class; rows are the true class (row 0: no
  object, the false positives), columns the predicted class (column 0:
  nothing detected, the misses).
* :func:`plot_pr_curves`, :func:`plot_confusion_matrix`: PNGs of both
  (matplotlib, optional: without it the numbers are still written).

Shape shorthand: D detections, M ground-truth boxes, K classes with
background (index 0).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from frcnn_jax import voc_metrics
from frcnn_jax import vis

TP_COLOR = (0, 200, 0)
FP_COLOR = (230, 20, 20)
GT_COLOR = (40, 140, 255)
MISSED_COLOR = (255, 170, 0)
IGNORED_COLOR = (150, 150, 150)

EVAL_LEGEND = ((TP_COLOR, False, "found (TP)"),
               (FP_COLOR, False, "false detection (FP)"),
               (GT_COLOR, True, "ground truth, found"),
               (MISSED_COLOR, True, "ground truth, missed"),
               (IGNORED_COLOR, True, "ignored (crowd / difficult)"))

NO_OBJECT = "(no object)"
MISSED = "(missed)"


def match_detections(det_boxes, det_classes, det_scores, gt_boxes, gt_classes,
                     gt_ignore=None, *, iou_threshold: float = 0.5,
                     class_aware: bool = True):
  """Greedy matching of one image's detections to its ground truth.

  Args:
    det_boxes: ``[D, 4]`` inclusive ``(x1, y1, x2, y2)``.
    det_classes: ``[D]`` int.
    det_scores: ``[D]`` float.
    gt_boxes: ``[M, 4]``; gt_classes ``[M]``.
    gt_ignore: ``[M]`` bool: crowd / difficult boxes (matched, never
      counted); default none.
    iou_threshold: a match needs IoU >= this.
    class_aware: a detection only matches ground truth of its class.

  Returns:
    ``(det_gt [D] int, det_ignored [D] bool, gt_found [M] bool)``:
    ``det_gt`` is the matched ground-truth index or -1 (then the detection
    is a false positive unless ``det_ignored``).
  """
  db = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  dc = np.asarray(det_classes).reshape(-1)
  ds = np.asarray(det_scores, np.float64).reshape(-1)
  gb = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gc = np.asarray(gt_classes).reshape(-1)
  ign = (np.zeros(len(gb), bool) if gt_ignore is None
         else np.asarray(gt_ignore, bool).reshape(-1))
  det_gt = np.full(len(db), -1, np.int64)
  det_ignored = np.zeros(len(db), bool)
  found = np.zeros(len(gb), bool)
  if not len(db) or not len(gb):
    return det_gt, det_ignored, found
  iou = voc_metrics.voc_iou(db, gb)
  same = (dc[:, None] == gc[None, :]) if class_aware else np.ones_like(iou,
                                                                      bool)
  for d in np.argsort(-ds, kind="stable"):
    ok = same[d] & (iou[d] >= iou_threshold)
    free = ok & ~ign & ~found
    if free.any():
      g = int(np.argmax(np.where(free, iou[d], -1.0)))
      det_gt[d], found[g] = g, True
    elif (ok & ign).any():
      det_ignored[d] = True
  return det_gt, det_ignored, found


def draw_evaluation(image, det_boxes, det_classes, det_scores, gt_boxes,
                    gt_classes, class_names, *, gt_ignore=None,
                    score_threshold: float = 0.5, iou_threshold: float = 0.5,
                    min_side: int = 320,
                    line_width: int | None = None) -> np.ndarray:
  """One image with its ground truth and its detections, errors visible.

  Detections scoring at least ``score_threshold`` are matched
  (:func:`match_detections`, by class); true positives are drawn solid
  green, false positives solid red (wrong class, bad box or nothing
  there), ground truth dashed: blue when found, orange and thicker when
  missed, gray when ignored. Labels say class and score (detections) or
  class (ground truth). A legend is drawn below; small images are
  enlarged to ``min_side`` (:func:`vis.draw_marks`).

  Returns:
    ``[H', W', 3]`` uint8.
  """
  ds = np.asarray(det_scores, np.float64).reshape(-1)
  keep = np.isfinite(ds) & (ds >= score_threshold)
  db = np.asarray(det_boxes, np.float64).reshape(-1, 4)[keep]
  dc = np.asarray(det_classes).reshape(-1)[keep]
  ds = ds[keep]
  gb = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gc = np.asarray(gt_classes).reshape(-1)
  ign = (np.zeros(len(gb), bool) if gt_ignore is None
         else np.asarray(gt_ignore, bool).reshape(-1))
  det_gt, det_ign, found = match_detections(
      db, dc, ds, gb, gc, ign, iou_threshold=iou_threshold)
  name = lambda c: vis.class_label(class_names, int(c))  # noqa: E731
  marks = []
  for g in range(len(gb)):
    if ign[g]:
      marks.append(vis.Mark(tuple(gb[g]), IGNORED_COLOR,
                            f"{name(gc[g])} (ignored)", dashed=True))
    elif found[g]:
      marks.append(vis.Mark(tuple(gb[g]), GT_COLOR, "", dashed=True))
  for d in np.argsort(ds, kind="stable"):
    color = TP_COLOR if det_gt[d] >= 0 else (
        IGNORED_COLOR if det_ign[d] else FP_COLOR)
    marks.append(vis.Mark(tuple(db[d]), color,
                          f"{name(dc[d])} {ds[d]:.2f}"))
  # Misses last: on top, and their labels placed first.
  for g in range(len(gb)):
    if not ign[g] and not found[g]:
      marks.append(vis.Mark(tuple(gb[g]), MISSED_COLOR,
                            f"missed {name(gc[g])}", dashed=True, width=1.5))
  return vis.draw_marks(image, marks, min_side=min_side, margin=True,
                        legend=EVAL_LEGEND, line_width=line_width)


def confusion_matrix(gts: Sequence[Mapping[str, Any]],
                     dets: Sequence[Mapping[str, Any]], num_classes: int, *,
                     score_threshold: float = 0.5,
                     iou_threshold: float = 0.5) -> np.ndarray:
  """Detection confusion matrix over images.

  Per image, detections scoring at least ``score_threshold`` are matched to
  ground truth of any class (:func:`match_detections` with
  ``class_aware=False``); a matched pair counts at ``[true, predicted]``,
  an unmatched ground-truth box at ``[true, 0]`` (missed), an unmatched
  detection at ``[0, predicted]`` (no object there); detections on ignored
  boxes are not counted.

  Args:
    gts: per image ``{"boxes" [M, 4], "classes" [M], "ignore" [M] bool
      (optional)}``.
    dets: per image ``{"boxes" [D, 4], "classes" [D], "scores" [D]}``.
    num_classes: K, background included.

  Returns:
    int64 ``[K, K]``; ``[0, 0]`` is always 0.
  """
  cm = np.zeros((num_classes, num_classes), np.int64)
  for g, d in zip(gts, dets):
    ds = np.asarray(d["scores"], np.float64).reshape(-1)
    keep = np.isfinite(ds) & (ds >= score_threshold)
    db = np.asarray(d["boxes"], np.float64).reshape(-1, 4)[keep]
    dc = np.asarray(d["classes"]).reshape(-1)[keep].astype(np.int64)
    gc = np.asarray(g["classes"]).reshape(-1).astype(np.int64)
    ign = np.asarray(g.get("ignore", np.zeros(len(gc), bool)), bool)
    det_gt, det_ign, found = match_detections(
        db, dc, ds[keep], g["boxes"], gc, ign, iou_threshold=iou_threshold,
        class_aware=False)
    for k in range(len(db)):
      if det_gt[k] >= 0:
        cm[gc[det_gt[k]], dc[k]] += 1
      elif not det_ign[k]:
        cm[0, dc[k]] += 1
    for j in np.flatnonzero(~found & ~ign):
      cm[gc[j], 0] += 1
  return cm


def confusion_json(cm: np.ndarray, class_names: Sequence[str], *,
                   score_threshold: float, iou_threshold: float) -> dict:
  """The matrix with its labels and how it was made (for the json file)."""
  names = list(class_names[1:])
  return {"rows_true": [NO_OBJECT] + names, "cols_predicted": [MISSED] + names,
          "matrix": cm.tolist(), "score_threshold": float(score_threshold),
          "iou_threshold": float(iou_threshold),
          "how": "detections with score >= score_threshold matched to ground "
                 "truth of any class by descending score, IoU >= "
                 "iou_threshold; row 0: detections on no object; column 0: "
                 "ground truth not detected; crowd / difficult boxes not "
                 "counted"}


def _figure(width_in: float, height_in: float, dpi: int = 90):
  """A matplotlib Figure on the Agg canvas (raises ImportError without
  matplotlib)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width_in, height_in), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def plot_pr_curves(curves: Mapping[str, Any], out_png: str) -> None:
  """One panel per class: precision over recall at each IoU threshold.

  Args:
    curves: the ``pr_curves`` of :func:`metrics.coco_evaluate` /
      ``voc_evaluate``: ``{"recall": [R], "precision": {name: {iou: [R]}}}``
      (-1 entries: no ground truth).
    out_png: file to write.

  Raises:
    ImportError: matplotlib is not installed.
  """
  rec = np.asarray(curves["recall"])
  per = curves["precision"]
  n = max(1, len(per))
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  fig = _figure(2.6 * cols, 2.4 * rows)
  for k, (name, by_iou) in enumerate(per.items()):
    ax = fig.add_subplot(rows, cols, k + 1)
    title = name
    for j, (iou, prec) in enumerate(sorted(by_iou.items())):
      p = np.asarray(prec, np.float64)
      if (p < 0).all():
        title = f"{name}: no ground truth"
        continue
      p = np.where(p < 0, np.nan, p)
      ax.plot(rec, p, color=f"C{j}", linewidth=1.5,
              label=f"IoU {iou}: AP {np.nanmean(p):.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=6, loc="lower left")
    if k % cols == 0:
      ax.set_ylabel("precision", fontsize=8)
    if k >= (rows - 1) * cols:
      ax.set_xlabel("recall", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, format="png")


def plot_confusion_matrix(cm_json: Mapping[str, Any], out_png: str) -> None:
  """Heat map of :func:`confusion_json`'s matrix, rows normalised, counts
  printed in the cells (up to 30 classes).

  Raises:
    ImportError: matplotlib is not installed.
  """
  cm = np.asarray(cm_json["matrix"], np.float64)
  k = cm.shape[0]
  size = min(2.0 + 0.45 * k, 30.0)
  fig = _figure(size + 1.5, size)
  ax = fig.add_subplot(1, 1, 1)
  sums = cm.sum(axis=1, keepdims=True)
  frac = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
  im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
  ax.set_xticks(range(k), cm_json["cols_predicted"], rotation=90,
                fontsize=8)
  ax.set_yticks(range(k), cm_json["rows_true"], fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"detections with score >= {cm_json['score_threshold']:g}, "
               f"IoU >= {cm_json['iou_threshold']:g}", fontsize=9)
  if k <= 30:
    for i in range(k):
      for j in range(k):
        if cm[i, j]:
          ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                  fontsize=7, color="white" if frac[i, j] > 0.5 else "black")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, format="png")


def write_report(out_dir: str, *, curves: Mapping[str, Any] | None,
                 cm_json: Mapping[str, Any]) -> list[str]:
  """``pr_curves.json`` / ``.png`` and ``confusion_matrix.json`` / ``.png``
  in ``out_dir``; the PNGs only with matplotlib. Returns the files written.
  """
  os.makedirs(out_dir, exist_ok=True)
  written = []
  jobs = [("confusion_matrix", cm_json, plot_confusion_matrix)]
  if curves is not None:
    jobs.insert(0, ("pr_curves", curves, plot_pr_curves))
  for name, data, plot in jobs:
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
      json.dump(data, f)
    written.append(path)
    try:
      plot(data, os.path.join(out_dir, f"{name}.png"))
      written.append(os.path.join(out_dir, f"{name}.png"))
    except ImportError:
      pass
  return written
