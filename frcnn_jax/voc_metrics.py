"""PASCAL VOC's evaluation arithmetic (devkit / py-faster-rcnn
``voc_eval``): AP from a precision/recall curve, IoU, greedy matching per
class. ``metrics.voc_evaluate`` puts it together; these are NumPy only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
  """Average precision from a precision/recall curve, as PASCAL VOC defines it.

  Args:
    rec: [N] recall after each detection, in descending-score order
      (non-decreasing).
    prec: [N] precision after each detection.
    use_07_metric: True: VOC2007's 11-point interpolated AP, the mean over
      t in {0, 0.1, ..., 1} of the highest precision at recall >= t (0 when
      no point reaches t). The thresholds are `np.arange(0, 1.1, 0.1)` as in
      the devkit and py-faster-rcnn, so they carry the same rounding (the
      fourth is 0.30000000000000004: a recall of exactly 0.3 does not reach
      it). False: VOC2010+ area under the precision envelope (precision made
      monotonically non-increasing in recall), summed where recall changes.

  Returns:
    AP as a Python float in [0, 1]; 0.0 for an empty curve. NaN entries of
    `prec` count as 0.
  """
  rec = np.asarray(rec, dtype=np.float64).reshape(-1)
  prec = np.nan_to_num(np.asarray(prec, dtype=np.float64).reshape(-1), nan=0.0)
  if rec.shape != prec.shape:
    raise ValueError(f"rec {rec.shape} and prec {prec.shape} differ")
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      reached = rec >= t
      ap += (float(np.max(prec[reached])) if reached.any() else 0.0) / 11.0
    return ap
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.concatenate([[0.0], prec, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]   # envelope from the right
  i = np.nonzero(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """Pairwise IoU with voc_eval's inclusive +1 widths.

  Args:
    boxes1: [N, 4] inclusive (x1, y1, x2, y2).
    boxes2: [M, 4] inclusive (x1, y1, x2, y2).

  Returns:
    [N, M] float64 IoU; 0 where the union is not positive (degenerate boxes).
  """
  a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
  b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
  iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2])
                  - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0, 0.0)
  ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3])
                  - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0, 0.0)
  inter = iw * ih
  area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
  area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
  union = area_a[:, None] + area_b[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
  return np.nan_to_num(iou, nan=0.0)


def _as_image_list(x):
  """Mapping {key: dict} or sequence of dicts -> (keys, list of dicts)."""
  if isinstance(x, Mapping):
    keys = list(x.keys())
    return keys, [x[k] for k in keys]
  items = list(x)
  return list(range(len(items))), items


def _rows(entry: Mapping[str, Any], fields: Sequence[str]):
  """Arrays of one image's entry, with the optional `valid` mask applied."""
  boxes = np.asarray(entry.get("boxes", np.zeros((0, 4))),
                     dtype=np.float64).reshape(-1, 4)
  n = boxes.shape[0]
  out = {"boxes": boxes}
  for f in fields:
    default = np.zeros((n,), dtype=bool if f == "difficult" else np.float64)
    v = entry.get(f)
    out[f] = np.asarray(default if v is None else v).reshape(-1)
    if out[f].shape[0] != n:
      raise ValueError(f"'{f}' has {out[f].shape[0]} rows, boxes has {n}")
  keep = np.ones((n,), bool)
  if entry.get("valid") is not None:
    keep &= np.asarray(entry["valid"], dtype=bool).reshape(-1)
  return {k: v[keep] for k, v in out.items()}


def interpolated_precision(rec: np.ndarray, prec: np.ndarray,
                           rec_thrs: np.ndarray) -> np.ndarray:
  """Precision at each recall threshold: the highest precision reached at
  that recall or more (COCOeval's interpolation); 0 beyond the last recall.
  """
  rec = np.asarray(rec, np.float64)
  prec = np.nan_to_num(np.asarray(prec, np.float64), nan=0.0)
  env = np.maximum.accumulate(prec[::-1])[::-1] if prec.size else prec
  idx = np.searchsorted(rec, rec_thrs, side="left")
  out = np.zeros(len(rec_thrs))
  ok = idx < len(rec)
  out[ok] = env[idx[ok]]
  return out


def voc_inputs(gt, detections):
  """``(gts, dets)``: ``metrics.voc_evaluate``'s inputs aligned per image as
  arrays (``boxes``, ``classes``, ``difficult`` / ``boxes``, ``scores``,
  ``classes``), detections with non-finite boxes or scores dropped.

  Raises:
    ValueError: detections for an image not in ``gt``, mismatched lengths,
      or a mapping paired with a sequence.
  """
  gt_keys, gt_list = _as_image_list(gt)
  if isinstance(gt, Mapping) != isinstance(detections, Mapping):
    raise ValueError("gt and detections must both be mappings or sequences")
  if isinstance(detections, Mapping):
    unknown = set(detections.keys()) - set(gt_keys)
    if unknown:
      raise ValueError(f"detections for images not in gt: "
                       f"{sorted(map(str, unknown))[:5]}")
    det_list = [detections.get(k, {}) for k in gt_keys]
  else:
    det_list = list(detections)
    if len(det_list) != len(gt_list):
      raise ValueError(f"{len(det_list)} detection entries for "
                       f"{len(gt_list)} gt images")
  gts = [_rows(g, ("classes", "difficult")) for g in gt_list]
  dets = []
  for d in det_list:
    r = _rows(d, ("scores", "classes"))
    ok = np.isfinite(r["boxes"]).all(-1) & np.isfinite(r["scores"])
    dets.append({k: v[ok] for k, v in r.items()})
  return gts, dets


def _voc_match_image(dboxes, dscores, gboxes, gdiff, iou_threshold):
  """TP / FP flags of one image's detections of one class, score order.

  Matching in one image depends only on the order of that image's
  detections, so it is done per image, in the same (stable) order as the
  global ranking. Detections matched to a difficult box are neither.
  """
  order = np.argsort(-dscores, kind="stable")
  dboxes, dscores = dboxes[order], dscores[order]
  tp = np.zeros(len(dscores))
  fp = np.zeros(len(dscores))
  if len(gboxes):
    ious = voc_iou(dboxes, gboxes)
    best = np.argmax(ious, axis=1)
    best_iou = ious[np.arange(len(dscores)), best]
  else:
    best = np.zeros(len(dscores), np.int64)
    best_iou = np.full(len(dscores), -np.inf)
  taken = np.zeros(len(gboxes), bool)
  for i in range(len(dscores)):
    if best_iou[i] > iou_threshold:
      j = best[i]
      if gdiff[j]:
        continue  # ignored: neither TP nor FP
      if not taken[j]:
        tp[i], taken[j] = 1.0, True
      else:
        fp[i] = 1.0
    else:
      fp[i] = 1.0
  return dscores, tp, fp


def voc_class_curve(gts, dets, c: int, iou_threshold: float
                    ) -> tuple[int, np.ndarray, np.ndarray]:
  """(non-difficult gt count, recall, precision) of class ``c``: the curve
  after each detection in descending score order over all images
  (``gts``, ``dets`` from :func:`voc_inputs`)."""
  scores_all, tp_all, fp_all = [], [], []
  npos = 0
  for g, d in zip(gts, dets):
    gmask = g["classes"].astype(np.int64) == c
    gdiff = g["difficult"][gmask].astype(bool)
    npos += int(np.sum(~gdiff))
    dmask = d["classes"].astype(np.int64) == c
    if not dmask.any():
      continue
    scores, tp, fp = _voc_match_image(d["boxes"][dmask], d["scores"][dmask],
                                      g["boxes"][gmask], gdiff, iou_threshold)
    scores_all.append(scores)
    tp_all.append(tp)
    fp_all.append(fp)
  if npos == 0:
    return 0, np.zeros((0,)), np.zeros((0,))
  if scores_all:
    order = np.argsort(-np.concatenate(scores_all), kind="stable")
    tp = np.concatenate(tp_all)[order]
    fp = np.concatenate(fp_all)[order]
    counted = (tp + fp) > 0          # drop ignored (difficult) detections
    tp, fp = np.cumsum(tp[counted]), np.cumsum(fp[counted])
  else:
    tp = fp = np.zeros((0,))
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return npos, rec, prec
