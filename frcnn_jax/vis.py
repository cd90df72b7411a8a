"""Drawing detections on images and plotting training curves (host side).

Boxes are (x1, y1, x2, y2) float pixels of the image being drawn on, in the
inclusive-pixel convention (w = x2 - x1 + 1): the outline covers columns x1
and x2 and rows y1 and y2. Images are uint8 [H, W, 3] RGB.

Pillow draws; matplotlib (Agg backend, no display) is imported only by
`plot_loss_curves`.
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOSS_KEYS: tuple[str, ...] = (
    "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_total")
"""Loss names (`modeling.detector.LOSS_NAMES`) that `plot_loss_curves` draws."""

LR_KEYS: tuple[str, ...] = ("lr", "learning_rate")
EVAL_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "voc07_mAP",
                              "voc_area_mAP")
"""Evaluation numbers (``eval/<name>``) drawn together in one panel."""
THROUGHPUT_KEYS: tuple[str, ...] = (
    "images_per_sec", "images_per_s", "images/s", "img_per_sec", "throughput")


def class_color(class_id: int) -> tuple[int, int, int]:
  """A saturated RGB colour per class id; neighbouring ids differ strongly.

  Hues step by the golden ratio, so any few consecutive classes get
  well-separated hues; brightness alternates to separate more classes.
  """
  h = (int(class_id) * 0.618033988749895) % 1.0
  v = 1.0 if int(class_id) % 2 == 0 else 0.8
  r, g, b = colorsys.hsv_to_rgb(h, 0.85, v)
  return int(r * 255), int(g * 255), int(b * 255)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
  lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
  return (0, 0, 0) if lum > 140 else (255, 255, 255)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
    return ImageFont.load_default()


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
  img = np.asarray(image)
  if img.ndim == 2:
    img = np.stack([img] * 3, axis=-1)
  if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image must be [H, W, 3], got {img.shape}")
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  img = img[..., :3]
  if img.dtype != np.uint8:
    img = np.clip(np.nan_to_num(img.astype(np.float64)), 0, 255).astype(np.uint8)
  return np.ascontiguousarray(img)


@dataclasses.dataclass(frozen=True)
class Mark:
  """One box to draw, with its label.

  Attributes:
    box: inclusive ``(x1, y1, x2, y2)`` pixels of the image (before any
      enlargement); corners may be in any order and partly outside.
    color: RGB outline (and label background) colour.
    label: text drawn next to the box ("" for none).
    dashed: a dashed outline (ground truth, ignored or dropped boxes).
    width: outline width as a multiple of the drawing's line width.
  """
  box: tuple[float, float, float, float]
  color: tuple[int, int, int]
  label: str = ""
  dashed: bool = False
  width: float = 1.0


# A label may cover at most this fraction of the canvas; a larger one (a
# tiny image drawn at its own size) is left out: the outline and its colour
# remain, and the picture stays visible.
MAX_LABEL_FRACTION = 0.2


def display_scale(height: int, width: int, min_side: int) -> int:
  """Integer enlargement that brings the long side to at least ``min_side``
  (1 when it already is, or ``min_side`` <= 0)."""
  if min_side <= 0:
    return 1
  return max(1, int(math.ceil(min_side / max(height, width, 1))))


def _rect_overlap(a, b) -> float:
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  return max(w, 0.0) * max(h, 0.0)


def place_labels(boxes: Sequence[Sequence[float]],
                 sizes: Sequence[tuple[float, float]],
                 canvas: tuple[int, int], *, gap: float = 0.0
                 ) -> list[tuple[float, float, float, float] | None]:
  """Positions for box labels that avoid each other, in priority order.

  Each label tries, in order: above the box's top-left corner, below its
  bottom-left corner, inside its top-left corner, above / below its
  right end, inside its bottom-left corner, then stacked further above and
  below (boxes on one spot); it is shifted sideways into the canvas, and
  takes the first position that overlaps neither a label placed before it
  nor another box (else the one that overlaps labels least, then boxes).

  Args:
    boxes: ``[N]`` canvas boxes ``(x1, y1, x2, y2)`` (exclusive ends:
      the pixels a box's outline covers are ``x1 .. x2 - 1``).
    sizes: ``[N]`` label ``(width, height)`` in pixels.
    canvas: ``(height, width)``.
    gap: inset of the inside positions (the outline width).

  Returns:
    ``[N]`` label rectangles ``(x1, y1, x2, y2)`` (exclusive ends), or None
    for a label that does not fit the canvas at all.
  """
  ch, cw = canvas
  placed: list[tuple[float, float, float, float]] = []
  out: list[tuple[float, float, float, float] | None] = []
  for n, ((x1, y1, x2, y2), (tw, th)) in enumerate(zip(boxes, sizes)):
    if tw > cw or th > ch:
      out.append(None)
      continue
    cands = [(x1, y1 - th), (x1, y2), (x1 + gap, y1 + gap),
             (x2 - tw, y1 - th), (x2 - tw, y2), (x1 + gap, y2 - th - gap)]
    # Crowded (boxes on one spot): stacks above and below.
    for k in range(1, 6):
      cands += [(x1, y1 - (k + 1) * th), (x1, y2 + k * th)]
    best, best_cost = None, None
    for k, (tx, ty) in enumerate(cands):
      tx = min(max(tx, 0.0), cw - tw)
      if ty < 0 or ty + th > ch:
        continue
      rect = (tx, ty, tx + tw, ty + th)
      clash = sum(_rect_overlap(rect, r) for r in placed)
      cover = sum(_rect_overlap(rect, b) for m, b in enumerate(boxes)
                  if m != n)
      cost = (clash, cover, k)
      if best_cost is None or cost < best_cost:
        best, best_cost = rect, cost
      if clash == 0 and cover == 0:
        break
    if best is None:  # no candidate inside the canvas: clamp the first one
      tx = min(max(x1, 0.0), cw - tw)
      ty = min(max(y1 - th, 0.0), ch - th)
      best = (tx, ty, tx + tw, ty + th)
    placed.append(best)
    out.append(best)
  return out


def _dashed_rectangle(draw, box, color, width: int, dash: int) -> None:
  x1, y1, x2, y2 = box
  for (ax, ay, bx, by) in ((x1, y1, x2, y1), (x1, y2, x2, y2),
                           (x1, y1, x1, y2), (x2, y1, x2, y2)):
    length = max(abs(bx - ax), abs(by - ay))
    t = 0.0
    while t <= length:
      e = min(t + dash, length)
      if ax == bx:
        draw.rectangle([ax, ay + t, ax + width - 1, ay + e], fill=color)
      else:
        draw.rectangle([ax + t, ay, ax + e, ay + width - 1], fill=color)
      t += 2 * dash


def _legend_rows(entries, font, width: int, th: int, pad: int):
  """Splits legend entries into rows that fit ``width``; entry widths."""
  rows, row, x = [], [], pad
  for color, dashed, text in entries:
    l, _, r, _ = font.getbbox(text)
    w = 2 * th + 4 + (r - l) + 5 * pad
    if row and x + w > width:
      rows.append(row)
      row, x = [], pad
    row.append((color, dashed, text, w))
    x += w
  if row:
    rows.append(row)
  return rows


def draw_marks(
    image: np.ndarray,
    marks: Sequence[Mark],
    *,
    min_side: int = 0,
    margin: bool = False,
    legend: Sequence[tuple[tuple[int, int, int], bool, str]] = (),
    line_width: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
  """Draws ``marks`` (later ones on top) and their labels on a copy of ``image``.

  Labels are drawn after every outline, placed by :func:`place_labels`
  with the last mark first (the one on top gets the best place), sized to
  the picture (~1/50 of its long side, at least 12 px), and never over
  more than :data:`MAX_LABEL_FRACTION` of it.

  Args:
    image: ``[H, W, 3]`` uint8 RGB (gray and float accepted).
    marks: what to draw, in image pixels.
    min_side: enlarge small images (nearest neighbour, by an integer
      factor) until the long side is at least this, so that a 24x16 image
      gets legible labels that do not hide it; 0 keeps the size.
    margin: add a band above and below the image, so that labels of boxes
      touching the border go outside the picture instead of over it.
    legend: ``(color, dashed, text)`` entries drawn in a band below.
    line_width, font_size: override the defaults (~long side / 300 and
      / 50 of the drawn picture).

  Returns:
    ``[H', W', 3]`` uint8: ``H' = H * scale (+ margins + legend)``,
    ``W' = W * scale``; the input is never modified.
  """
  img = _to_uint8_rgb(image)
  s = display_scale(*img.shape[:2], min_side)
  if s > 1:
    img = np.repeat(np.repeat(img, s, axis=0), s, axis=1)
  h, w = img.shape[:2]
  lw = line_width or max(2, int(round(max(h, w) / 300)))
  font = _font(font_size or max(12, int(round(max(h, w) / 50))))
  _, t0, _, b0 = font.getbbox("Ag")
  th = b0 - t0 + 4
  top = th + lw if margin else 0
  bottom = th + lw if margin else 0
  legend_rows = _legend_rows(legend, font, w, th, 4) if legend else []
  extra = len(legend_rows) * (th + 4) + (4 if legend_rows else 0)
  canvas = np.full((h + top + bottom + extra, w, 3), 255, np.uint8)
  canvas[top:top + h] = img
  pil = Image.fromarray(canvas)
  draw = ImageDraw.Draw(pil)

  rects, labels = [], []
  for m in marks:
    b = np.asarray(m.box, np.float64)
    if not np.isfinite(b).all():
      continue
    x1, x2 = sorted((b[0], b[2]))
    y1, y2 = sorted((b[1], b[3]))
    # Inclusive image pixels -> the scaled pixels they cover, clipped.
    x1, x2 = np.clip([x1 * s, x2 * s + s - 1], 0, w - 1)
    y1, y2 = np.clip([y1 * s, y2 * s + s - 1], 0, h - 1)
    y1, y2 = y1 + top, y2 + top
    width = max(1, int(round(lw * m.width)))
    if m.dashed:
      _dashed_rectangle(draw, (x1, y1, x2, y2), m.color, width,
                        dash=max(4, 3 * width))
    else:
      draw.rectangle([float(x1), float(y1), float(x2), float(y2)],
                     outline=m.color, width=width)
    rects.append((float(x1), float(y1), float(x2) + 1, float(y2) + 1))
    labels.append(m)

  order = [i for i in reversed(range(len(labels))) if labels[i].label]
  sizes = []
  for i in order:
    l, t, r, b = draw.textbbox((0, 0), labels[i].label, font=font)
    sizes.append((r - l + 4, b - t + 4))
  spots = place_labels([rects[i] for i in order], sizes,
                       (top + h + bottom, w), gap=lw)
  limit = MAX_LABEL_FRACTION * (h + top + bottom) * w
  for i, (tw, tlh), spot in zip(order, sizes, spots):
    if spot is None or tw * tlh > limit:
      continue
    m = labels[i]
    tx, ty = spot[0], spot[1]
    draw.rectangle([tx, ty, spot[2] - 1, spot[3] - 1], fill=m.color)
    l, t, _, _ = draw.textbbox((0, 0), m.label, font=font)
    draw.text((tx + 2 - l, ty + 2 - t), m.label, fill=_text_color(m.color),
              font=font)

  y = h + top + bottom + 4
  for row in legend_rows:
    x = 4
    for color, dashed, text, ew in row:
      sample = (x, y + th // 2 - lw // 2, x + 2 * th, y + th // 2 + lw)
      if dashed:
        _dashed_rectangle(draw, (x, y + 2, x + 2 * th, y + th - 2), color,
                          max(1, lw), dash=4)
      else:
        draw.rectangle(sample, fill=color)
      l, t, _, _ = draw.textbbox((0, 0), text, font=font)
      draw.text((x + 2 * th + 4 - l, y + 2 - t), text, fill=(0, 0, 0),
                font=font)
      x += ew
    y += th + 4
  return np.asarray(pil)


def class_label(class_names, c: int) -> str:
  """The name of class id ``c`` (sequence or dict of names; the id when
  unknown)."""
  if isinstance(class_names, Mapping):
    return str(class_names.get(c, str(c)))
  if class_names is not None and 0 <= c < len(class_names):
    return str(class_names[c])
  return str(c)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str] | None,
    *,
    score_threshold: float = 0.5,
    valid: np.ndarray | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
    min_side: int = 0,
    margin: bool = False,
) -> np.ndarray:
  """Draws boxes with "name score" labels on a copy of `image`.

  Args:
    image: [H, W, 3] uint8 RGB (grayscale [H, W] and float in [0, 255] are
      accepted and converted).
    boxes: [D, 4] float, inclusive (x1, y1, x2, y2) pixels of `image`.
    classes: [D] int class ids (contiguous, 0 = background).
    scores: [D] float; None draws every box without a score.
    class_names: names indexed by class id (sequence or dict); a missing
      name prints the id. None prints ids.
    score_threshold: boxes with score < threshold are not drawn.
    valid: [D] bool padding mask; False rows are not drawn.
    line_width: outline width in pixels (default: ~image size / 300, >= 2).
    font_size: label font size (default: ~image size / 50, >= 12).
    min_side, margin: see :func:`draw_marks` (default: the image's own
      size, so labels that would hide a tiny image are left out).

  Returns:
    [H, W, 3] uint8, a new array (larger with ``min_side`` / ``margin``).
    Boxes are drawn low score first, so the most confident ones end on
    top and get the best label places; labels do not overlap when there
    is room; boxes are clipped to the image; rows with non-finite values,
    background class or inverted corners (x2 < x1 or y2 < y1) are skipped.
  """
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  n = boxes.shape[0]
  classes = np.asarray(classes).reshape(-1).astype(np.int64)
  if scores is None:
    scores_arr = np.ones((n,), np.float64)
    show_score = False
  else:
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    show_score = True
  keep = np.ones((n,), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
  if not (classes.shape[0] == scores_arr.shape[0] == keep.shape[0] == n):
    raise ValueError("boxes, classes, scores and valid must have the same length")
  keep = (keep & np.isfinite(boxes).all(-1) & np.isfinite(scores_arr)
          & (scores_arr >= score_threshold) & (classes > 0)
          & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1]))
  idx = np.nonzero(keep)[0]
  idx = idx[np.argsort(scores_arr[idx], kind="stable")]
  marks = []
  for i in idx:
    c = int(classes[i])
    name = class_label(class_names, c)
    marks.append(Mark(tuple(boxes[i]), class_color(c),
                      f"{name} {scores_arr[i]:.2f}" if show_score else name))
  return draw_marks(image, marks, min_side=min_side, margin=margin,
                    line_width=line_width, font_size=font_size)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an image array ([H, W, 3] / [H, W] uint8, or float in [0, 255]) as PNG.

  Creates the parent directory if needed.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(_to_uint8_rgb(array)).save(path, format="PNG")


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file; lines that do not parse (a line cut short by
  a crash) or have no integer "step" are skipped."""
  records = []
  with open(path, "r", encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(rec, dict) and isinstance(rec.get("step"), int):
        records.append(rec)
  return records


def _series(records: Iterable[Mapping[str, Any]], names: Sequence[str]):
  """(key found, steps, values) for the first of `names` present in records.

  A key matches a name exactly or as the last '/'-separated part
  ("train/loss_cls" matches "loss_cls"). Non-numeric and null values skip.
  """
  for name in names:
    steps, vals, found = [], [], None
    for rec in records:
      for k, v in rec.items():
        if k == name or k.rsplit("/", 1)[-1] == name:
          if isinstance(v, (int, float)) and not isinstance(v, bool):
            steps.append(rec["step"])
            vals.append(float(v))
            found = k
          break
    if found is not None:
      order = np.argsort(np.asarray(steps), kind="stable")
      return found, np.asarray(steps)[order], np.asarray(vals)[order]
  return None, None, None


def ema_smooth(values: np.ndarray, weight: float) -> np.ndarray:
  """Debiased exponential moving average (TensorBoard's smoothing).

  Non-finite values are skipped (the average carries over them).
  """
  out = np.empty(len(values), np.float64)
  acc, norm = 0.0, 0.0
  for i, v in enumerate(values):
    if math.isfinite(v):
      acc = weight * acc + (1 - weight) * v
      norm = weight * norm + (1 - weight)
    out[i] = acc / norm if norm > 0 else np.nan
  return out


def plot_loss_curves(
    metrics_jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    smoothing: float = 0.9,
    extra_keys: Sequence[str] = (),
) -> list[str]:
  """Plots losses, learning rate, images/s and eval AP from metrics.jsonl.

  One panel each for loss_rpn_cls, loss_rpn_box, loss_cls, loss_box,
  loss_total, the learning rate and images/s (then `extra_keys`), and one
  for the evaluations during training (every :data:`EVAL_KEYS` present,
  with markers), each with
  the raw values (thin, faint) and a debiased EMA (`smoothing`) against step
  (the learning rate is drawn raw only: a schedule is not noisy).
  Losses use a log y axis when all values are positive. Keys absent from the
  file get no panel; a file with none of them gives a PNG that says so.

  Args:
    metrics_jsonl_path: the file `MetricWriter` writes.
    out_png: output path (parent directories are created).
    smoothing: EMA weight in [0, 1); 0 = no smoothing.
    extra_keys: more scalar names to plot.

  Returns:
    The keys plotted, in panel order.
  """
  import matplotlib
  matplotlib.use("Agg", force=False)
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records = read_metrics_jsonl(metrics_jsonl_path)
  wanted = [(k, (k,)) for k in LOSS_KEYS]
  wanted += [("lr", LR_KEYS), ("images/s", THROUGHPUT_KEYS)]
  wanted += [(k, (k,)) for k in extra_keys]
  panels = []
  for title, names in wanted:
    key, steps, vals = _series(records, names)
    if key is not None:
      panels.append((title, key, steps, vals))
  evals = [s for s in (_series(records, (k,)) for k in EVAL_KEYS)
           if s[0] is not None]
  if evals:
    panels.append(("evaluation", None, None, evals))

  ncols = 3 if len(panels) > 4 else max(1, min(2, len(panels)))
  nrows = max(1, math.ceil(len(panels) / ncols))
  fig = Figure(figsize=(5 * ncols, 3.3 * nrows), dpi=100)
  FigureCanvasAgg(fig)
  if not panels:
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.text(0.5, 0.5, f"no metrics in {os.fspath(metrics_jsonl_path)}",
            ha="center", va="center")
  for n, (title, key, steps, vals) in enumerate(panels):
    ax = fig.add_subplot(nrows, ncols, n + 1)
    if key is None:   # the evaluation panel: several series with markers
      for j, (k, st, v) in enumerate(vals):
        ax.plot(st, v, marker="o", markersize=3, color=f"C{j}", label=k)
        if len(v) and j == 0:
          ax.annotate(f"{v[-1]:.3f}", (st[-1], v[-1]), fontsize=8,
                      textcoords="offset points", xytext=(2, 2))
      ax.set_title("evaluation during training", fontsize=10)
      ax.set_xlabel("step")
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=8)
      continue
    color = f"C{n % 10}"
    smooth = smoothing > 0 and len(vals) > 1 and title != "lr"
    ax.plot(steps, vals, color=color, alpha=0.3 if smooth else 1.0,
            linewidth=0.8 if smooth else 1.4, label="raw")
    if smooth:
      ax.plot(steps, ema_smooth(vals, smoothing), color=color, linewidth=1.6,
              label=f"EMA {smoothing:g}")
    finite = vals[np.isfinite(vals)]
    if title.startswith("loss") and finite.size and np.all(finite > 0):
      ax.set_yscale("log")
    ax.set_title(key if key == title else f"{title} ({key})", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if n == 0:
      ax.legend(fontsize=8)
  fig.tight_layout()
  out_png = os.fspath(out_png)
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, format="png")
  keys = []
  for _, key, _, vals in panels:
    keys += [k for k, _, _ in vals] if key is None else [key]
  return keys
