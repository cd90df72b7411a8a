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
from frcnn_jax.voc_metrics import interpolated_precision
from frcnn_jax.voc_metrics import voc_ap
from frcnn_jax.voc_metrics import voc_class_curve
from frcnn_jax.voc_metrics import voc_inputs

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
  # pycocotools' own 12 lines, verbatim (what users grep for);
  # faster-coco-eval logs its summary instead of printing it.
  lines = [ln for ln in summary.getvalue().split("\n") if ln.strip()]
  if lines:
    metrics["summary"] = lines
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
  gts, dets = voc_inputs(gt, detections)
  per_ap: dict[str, float] = {}
  num_gt: dict[str, int] = {}
  curves = {}
  rec_thrs = np.linspace(0.0, 1.0, 101)
  for c in range(1, len(class_names)):
    name = str(class_names[c])
    num_gt[name], rec, prec = voc_class_curve(gts, dets, c, iou_threshold)
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
