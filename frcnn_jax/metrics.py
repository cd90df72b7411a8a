"""Detection metrics: COCO (pycocotools) and PASCAL VOC (the voc_eval algorithm).

Everything here runs on the host, in numpy, after inference; nothing is jitted.

Conventions at this boundary:
  * Boxes are (x1, y1, x2, y2) float pixels of the ORIGINAL image (the
    detector's outputs divided by `im_info` scale), in the inclusive-pixel
    convention of the seed: w = x2 - x1 + 1, h = y2 - y1 + 1.
  * Classes are contiguous ids 1..K-1 (0 = background). For COCO they map to
    dataset category ids through `contiguous_to_cat_id`.
  * COCO's [x, y, w, h] appears only here: a detection (x1, y1, x2, y2)
    becomes [x1, y1, x2 - x1 + 1, y2 - y1 + 1], as the seed's
    `_coco_results_one_category` writes it, and a COCO box [x, y, w, h] read
    by the data pipeline becomes (x, y, x + w - 1, y + h - 1); the two are
    inverse (`ops.boxes.xyxy_to_xywh`, `xywh_to_xyxy`).

Shape shorthand: B images, D detections per image (padded), M gt per image.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ops import boxes as box_ops

COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of pycocotools' 12 summary numbers, in `COCOeval.stats` order."""

COCO_EVALUATORS: tuple[str, ...] = ("pycocotools", "faster_coco_eval")
"""Implementations of COCOeval('bbox') that `coco_evaluate` can use.

'pycocotools' is the reference. 'faster_coco_eval' (the faster-coco-eval
package, pip install faster-coco-eval==1.8.0) is the same algorithm with
evaluate/accumulate in C++: 10-15x faster on COCO val-sized inputs
(bench/README.md), same matching, same precision/recall arrays except for
one rounding: where pycocotools' precision after a first detection that
is a true positive is 1 / (1 + eps) = 0.9999999999999998 (its
`tp / (tp + fp + np.spacing(1))`), faster-coco-eval has 1.0. The 12
summary numbers therefore agree to ~1e-16, not bit for bit
(tests/test_metrics.py); pycocotools stays the default."""

UNDEFINED = -1.0
"""Value of a metric with nothing to measure (no ground truth in its class or
area range), as pycocotools reports it. Never averaged into a mean."""


# ---------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------


def _cat_id_lookup(contiguous_to_cat_id: Mapping[int, int] | Sequence[Any]):
  """Returns a function contiguous id -> category id (None when unmapped)."""
  if isinstance(contiguous_to_cat_id, Mapping):
    table = {int(k): v for k, v in contiguous_to_cat_id.items()}
    return lambda c: table.get(c)
  seq = list(contiguous_to_cat_id)
  return lambda c: seq[c] if 0 <= c < len(seq) else None


def detections_to_coco(
    image_ids: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    valid: np.ndarray,
    contiguous_to_cat_id: Mapping[int, int] | Sequence[Any],
    *,
    box_decimals: int = 2,
    score_decimals: int = 5,
) -> list[dict]:
  """Padded detector output -> COCO results entries (the detections json).

  Args:
    image_ids: [B] int, dataset image id per image; ids < 0 mark padding
      images (a last, partial batch) and are skipped.
    boxes: [B, D, 4] float, inclusive (x1, y1, x2, y2) in ORIGINAL image pixels.
    scores: [B, D] float.
    classes: [B, D] int, contiguous ids 1..K-1.
    valid: [B, D] bool; False rows are padding and are skipped.
    contiguous_to_cat_id: dict {contiguous id: category id}, or a sequence
      indexed by contiguous id (index 0, background, is never used; it may
      hold None).
    box_decimals: decimals kept in bbox numbers (2 = 1/100 pixel).
    score_decimals: decimals kept in scores.

  Returns:
    A list of {"image_id": int, "category_id": int, "bbox": [x, y, w, h],
    "score": float} with plain Python numbers (json-serialisable), where
    w = x2 - x1 + 1 (clamped at 0). Rows with a non-finite box or score are
    skipped (never written as NaN).

  Raises:
    ValueError: a valid row has a class with no category id (e.g. background
      0 or an id >= K), which means a bug upstream, or shapes disagree.
  """
  image_ids = np.asarray(image_ids).reshape(-1)
  boxes = np.asarray(boxes, dtype=np.float64)
  scores = np.asarray(scores, dtype=np.float64)
  classes = np.asarray(classes)
  valid = np.asarray(valid, dtype=bool)
  b = image_ids.shape[0]
  if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
    raise ValueError(f"boxes must be [B={b}, D, 4], got {boxes.shape}")
  d = boxes.shape[1]
  for name, arr in (("scores", scores), ("classes", classes), ("valid", valid)):
    if arr.shape != (b, d):
      raise ValueError(f"{name} must be [B={b}, D={d}], got {arr.shape}")
  lookup = _cat_id_lookup(contiguous_to_cat_id)
  finite = np.isfinite(boxes).all(-1) & np.isfinite(scores)
  keep = valid & finite & (image_ids[:, None] >= 0)
  ii, jj = np.nonzero(keep)
  cls = classes[ii, jj].astype(np.int64)
  cat_of = {}
  for c in np.unique(cls).tolist():
    cat = lookup(c)
    if cat is None:
      raise ValueError(
          f"detection class {c} has no category id in contiguous_to_cat_id")
    cat_of[c] = int(cat)
  # Vectorised rounding, then plain Python lists (fast for ~1e6 rows).
  xywh = np.round(box_ops.xyxy_to_xywh(boxes[ii, jj]), box_decimals).tolist()
  sc = np.round(scores[ii, jj], score_decimals).tolist()
  ids = image_ids[ii].astype(np.int64).tolist()
  results = [
      {"image_id": i, "category_id": cat_of[c], "bbox": b, "score": s}
      for i, c, b, s in zip(ids, cls.tolist(), xywh, sc)]
  return results


def _resolve_class_names(coco_gt, class_names) -> dict[int, str]:
  """Returns {category id: name} for the categories of `coco_gt`."""
  cat_ids = sorted(coco_gt.getCatIds())
  if class_names is None:
    return {c: str(coco_gt.cats[c].get("name", c)) for c in cat_ids}
  if isinstance(class_names, Mapping):
    return {c: str(class_names.get(c, coco_gt.cats[c].get("name", c)))
            for c in cat_ids}
  names = list(class_names)
  if len(names) == len(cat_ids) + 1:  # background first, contiguous order
    names = names[1:]
  if len(names) != len(cat_ids):
    raise ValueError(
        f"class_names has {len(list(class_names))} entries; expected "
        f"{len(cat_ids)} (one per category, sorted by category id) or "
        f"{len(cat_ids) + 1} (with background at index 0)")
  return dict(zip(cat_ids, map(str, names)))


def _cocoeval_class(evaluator: str, verbose: bool):
  """The COCOeval class of `evaluator` (`COCO_EVALUATORS`)."""
  if evaluator == "pycocotools":
    from pycocotools.cocoeval import COCOeval
    return COCOeval
  if evaluator == "faster_coco_eval":
    try:
      from faster_coco_eval import COCOeval_faster
    except ImportError as e:
      raise ImportError(
          "evaluator='faster_coco_eval' needs the faster-coco-eval package "
          "(pip install faster-coco-eval==1.8.0)") from e
    quiet = print if verbose else (lambda *a, **k: None)
    return lambda gt, dt, iou_type: COCOeval_faster(
        gt, dt, iou_type, print_function=quiet)
  raise ValueError(f"evaluator must be one of {COCO_EVALUATORS}, got "
                   f"{evaluator!r}")


def _mean_defined(x: np.ndarray) -> float:
  x = x[x > -1]
  return float(np.mean(x)) if x.size else UNDEFINED


def coco_evaluate(
    coco_gt,
    results: list[dict],
    *,
    image_ids: Sequence[int] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    verbose: bool = False,
    pr_curves: bool = False,
    evaluator: str = "pycocotools",
) -> dict[str, Any]:
  """Runs COCOeval('bbox') on COCO results entries.

  Args:
    coco_gt: a `pycocotools.coco.COCO` with the ground truth (from a file, or
      built in memory: `c = COCO(); c.dataset = d; c.createIndex()`).
    results: entries as `detections_to_coco` returns them. May be empty: the
      metrics then are 0 (or -1 where there is no ground truth), no crash.
      The list is not modified.
    image_ids: evaluate only these images (e.g. a partial eval of the first N
      images); default: every image of `coco_gt`. Images without
      detections count as misses.
    class_names: names for the per-class table: {category id: name}, or a
      sequence in sorted-category-id order, with or without a background
      entry at index 0. Default: the names in `coco_gt`.
    verbose: let pycocotools print its progress and summary.
    pr_curves: also return the per-class precision/recall curves.
    evaluator: 'pycocotools' (the reference) or 'faster_coco_eval' (the same
      numbers to ~1e-16, much faster; see `COCO_EVALUATORS`).

  Returns:
    {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
    "ARs", "ARm", "ARl": float (COCOeval.stats; -1 = undefined),
    "summary": the 12 lines ``COCOeval.summarize()`` prints, verbatim,
    "per_class_AP", "per_class_AP50", "per_class_AP75", "per_class_AR100":
    {name: value} (area all, 100 detections; -1 for a class without ground
    truth), "per_class_num_gt": {name: non-crowd boxes}} and, with
    ``pr_curves``, "pr_curves": {"recall": [101 recall thresholds],
    "precision": {name: {"0.5": [101], "0.75": [101]}}} (COCOeval's
    interpolated precision; -1 where undefined).

  Raises:
    ValueError: a result refers to an image that is not in `coco_gt`.
  """
  from pycocotools.coco import COCO

  cocoeval = _cocoeval_class(evaluator, verbose)
  names = _resolve_class_names(coco_gt, class_names)
  gt_images = set(coco_gt.getImgIds())
  unknown = {r["image_id"] for r in results} - gt_images
  if unknown:
    raise ValueError(
        f"{len(unknown)} result image ids are not in the ground truth, "
        f"e.g. {sorted(unknown)[:5]}")
  out = io.StringIO()
  redirect = (contextlib.nullcontext() if verbose
              else contextlib.redirect_stdout(out))
  with redirect:
    if results:
      # loadRes adds keys (area, id, segmentation) to the dicts it gets.
      coco_dt = coco_gt.loadRes([dict(r) for r in results])
    else:
      # loadRes cannot take an empty list: an empty result set by hand.
      coco_dt = COCO()
      coco_dt.dataset = {
          "images": list(coco_gt.dataset.get("images", [])),
          "categories": list(coco_gt.dataset.get("categories", [])),
          "annotations": [],
      }
      coco_dt.createIndex()
    ev = cocoeval(coco_gt, coco_dt, "bbox")
    if image_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in image_ids)
    ev.evaluate()
    ev.accumulate()
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    ev.summarize()
  if verbose:
    print(summary.getvalue(), end="")
  metrics: dict[str, Any] = {
      k: float(v) for k, v in zip(COCO_METRIC_NAMES, ev.stats[:12])}
  # The evaluator's own summary lines, verbatim (what users grep for).
  metrics["summary"] = summary.getvalue().rstrip("\n").split("\n")
  # precision: [T iou thresholds, R recall thresholds, K cats, A areas, M maxdets]
  precision = ev.eval["precision"]
  recall = ev.eval["recall"]       # [T, K, A, M]
  iou_thrs = np.asarray(ev.params.iouThrs)
  i50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
  i75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
  num_gt = _coco_gt_counts(ev)
  per = {k: {} for k in ("per_class_AP", "per_class_AP50", "per_class_AP75",
                         "per_class_AR100", "per_class_num_gt")}
  curves = {}
  for k, cat in enumerate(ev.params.catIds):
    name = names.get(cat, str(cat))
    p = precision[:, :, k, 0, -1]
    per["per_class_AP"][name] = _mean_defined(p)
    per["per_class_AP50"][name] = _mean_defined(p[i50])
    per["per_class_AP75"][name] = _mean_defined(p[i75])
    per["per_class_AR100"][name] = _mean_defined(recall[:, k, 0, -1])
    per["per_class_num_gt"][name] = int(num_gt.get(cat, 0))
    curves[name] = {"0.5": p[i50].tolist(), "0.75": p[i75].tolist()}
  metrics.update(per)
  if pr_curves:
    metrics["pr_curves"] = {
        "recall": [float(r) for r in ev.params.recThrs],
        "precision": curves,
        "source": "COCOeval precision, area all, maxDets 100 (-1: no "
                  "ground truth)"}
  return metrics


def _coco_gt_counts(ev) -> dict[int, int]:
  """Non-crowd ground-truth boxes per category among the evaluated images."""
  img_ids = set(ev.params.imgIds)
  counts: dict[int, int] = {}
  for a in ev.cocoGt.dataset.get("annotations", []):
    if a["image_id"] in img_ids and not a.get("iscrowd", 0):
      counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
  return counts


def _fmt(v: float) -> str:
  return "   n/a" if v is None or v <= UNDEFINED or not math.isfinite(v) \
      else f"{v:6.3f}"


def format_coco_table(metrics: Mapping[str, Any]) -> str:
  """pycocotools' 12 summary lines verbatim, then a per-class table.

  Args:
    metrics: a dict from `coco_evaluate` (one without ``"summary"``, an
      older metrics.json, gets its 12 numbers by name).

  Returns:
    A multi-line string; undefined (-1) values print as "n/a" in the
    per-class table (pycocotools prints -1.000 in its own lines).
  """
  lines = list(metrics.get("summary") or [
      f"{name:<6} {_fmt(metrics[name])}" for name in COCO_METRIC_NAMES
      if name in metrics])
  per = metrics.get("per_class_AP")
  if per:
    cols = [("AP", "per_class_AP"), ("AP50", "per_class_AP50"),
            ("AP75", "per_class_AP75"), ("AR100", "per_class_AR100")]
    cols = [(t, k) for t, k in cols if k in metrics]
    num_gt = metrics.get("per_class_num_gt")
    w = max(8, max(len(n) for n in per))
    lines.append("")
    lines.append(f"{'class':<{w}}" + "".join(f"  {t:>6}" for t, _ in cols)
                 + ("  {:>6}".format("#gt") if num_gt is not None else ""))
    for n in per:
      row = f"{n:<{w}}" + "".join(
          f"  {_fmt(metrics[k].get(n, UNDEFINED))}" for _, k in cols)
      if num_gt is not None:
        row += f"  {num_gt.get(n, 0):>6d}"
      lines.append(row)
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# PASCAL VOC
# ---------------------------------------------------------------------------


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


def voc_evaluate(
    gt: Mapping[Any, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    detections: Mapping[Any, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    pr_curves: bool = False,
) -> dict[str, Any]:
  """PASCAL VOC detection AP per class and mAP (the voc_eval algorithm).

  Per class: detections of all images are ranked by score (descending; ties
  keep input order, image by image). Going down that list, a detection is
  matched to the ground-truth box of its image and class with the highest
  IoU (inclusive +1 widths). If that IoU is > `iou_threshold` (strictly):
  matched to a difficult box -> ignored (neither true nor false positive);
  to a box not yet taken -> true positive, the box is taken; to a box
  already taken -> false positive (duplicate). Otherwise false positive.
  recall = TP / (non-difficult gt count), precision = TP / (TP + FP), and AP
  is `voc_ap` of that curve. Difficult boxes are never counted in recall, so
  they neither help nor hurt.

  Args:
    gt: per image, {"boxes": [M, 4] inclusive (x1, y1, x2, y2) in original
      pixels, "classes": [M] contiguous ids, "difficult": [M] bool
      (optional, default False), "valid": [M] bool (optional padding mask)};
      either a sequence (aligned with `detections`) or a mapping from image
      key to entry.
    detections: per image, {"boxes": [D, 4], "scores": [D], "classes": [D],
      "valid": [D] bool (optional)}; same container kind as `gt`. Images
      missing from a mapping have no detections. Rows with non-finite boxes
      or scores are dropped.
    class_names: names indexed by contiguous id; index 0 is background and
      is not evaluated.
    iou_threshold: VOC uses 0.5.
    use_07_metric: 11-point (VOC2007 test) if True, else area (VOC2010+).
    pr_curves: also return each class's precision/recall curve,
      interpolated (:func:`interpolated_precision`) at COCO's 101 recall
      points, in :func:`coco_evaluate`'s ``pr_curves`` format (key
      ``str(iou_threshold)``).

  Returns:
    {"per_class_AP": {name: AP}, "mAP": mean AP over classes that have
    non-difficult ground truth, "num_gt": {name: count},
    "use_07_metric": bool, "iou_threshold": float}. A class without
    non-difficult ground truth has AP -1 (undefined) and is left out of
    mAP; mAP is -1 when no class has ground truth.

  Raises:
    ValueError: detections for an image not in `gt`, or mismatched lengths.
  """
  gts, dets = _voc_inputs(gt, detections)
  per_ap: dict[str, float] = {}
  num_gt: dict[str, int] = {}
  curves = {}
  rec_thrs = np.linspace(0.0, 1.0, 101)
  for c in range(1, len(class_names)):
    name = str(class_names[c])
    num_gt[name], rec, prec = _voc_class_curve(gts, dets, c, iou_threshold)
    per_ap[name] = (voc_ap(rec, prec, use_07_metric) if num_gt[name]
                    else UNDEFINED)
    curves[name] = {str(iou_threshold): (
        interpolated_precision(rec, prec, rec_thrs).tolist() if num_gt[name]
        else [UNDEFINED] * len(rec_thrs))}
  defined = [v for v in per_ap.values() if v > UNDEFINED]
  out = {
      "per_class_AP": per_ap,
      "mAP": float(np.mean(defined)) if defined else UNDEFINED,
      "num_gt": num_gt,
      "use_07_metric": bool(use_07_metric),
      "iou_threshold": float(iou_threshold),
  }
  if pr_curves:
    out["pr_curves"] = {"recall": rec_thrs.tolist(), "precision": curves,
                        "source": "VOC matching, interpolated precision"}
  return out


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


def _voc_inputs(gt, detections):
  """Aligned per-image ground truth and (finite) detections as arrays."""
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


def _voc_class_curve(gts, dets, c: int, iou_threshold: float
                     ) -> tuple[int, np.ndarray, np.ndarray]:
  """(non-difficult gt count, recall, precision) of class ``c``: the curve
  after each detection in descending score order over all images."""
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


def format_voc_table(metrics: Mapping[str, Any]) -> str:
  """Per-class AP and mAP from `voc_evaluate` as a plain-text table."""
  per = metrics.get("per_class_AP", {})
  num_gt = metrics.get("num_gt", {})
  kind = ("VOC07 11-point" if metrics.get("use_07_metric", True)
          else "VOC area")
  thr = metrics.get("iou_threshold", 0.5)
  w = max([8] + [len(n) for n in per])
  lines = [f"{kind} AP @ IoU > {thr:g}",
           f"{'class':<{w}}  {'AP':>6}  {'#gt':>6}"]
  for n, ap in per.items():
    lines.append(f"{n:<{w}}  {_fmt(ap)}  {num_gt.get(n, 0):>6d}")
  lines.append(f"{'mAP':<{w}}  {_fmt(metrics.get('mAP', UNDEFINED))}")
  return "\n".join(lines)
