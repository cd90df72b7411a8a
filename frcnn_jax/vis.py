"""Drawing detections on images and plotting training curves (host side).

Boxes are (x1, y1, x2, y2) float pixels of the image being drawn on, in the
inclusive-pixel convention (w = x2 - x1 + 1): the outline covers columns x1
and x2 and rows y1 and y2. Images are uint8 [H, W, 3] RGB.

Pillow draws; matplotlib (Agg backend, no display) is imported only by
`plot_loss_curves`.
"""
from __future__ import annotations

import colorsys
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
    font_size: label font size (default: ~image size / 50, >= 10).

  Returns:
    [H, W, 3] uint8, a new array. Boxes are drawn low score first, so the
    most confident ones end on top; boxes are clipped to the image; rows
    with non-finite values, background class or inverted corners (x2 < x1
    or y2 < y1) are skipped. The input image is never modified.
  """
  img = _to_uint8_rgb(image)
  h, w = img.shape[:2]
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

  pil = Image.fromarray(img)
  draw = ImageDraw.Draw(pil)
  lw = line_width or max(2, int(round(max(h, w) / 300)))
  font = _font(font_size or max(10, int(round(max(h, w) / 50))))
  for i in idx:
    c = int(classes[i])
    color = class_color(c)
    x1, y1, x2, y2 = boxes[i]
    x1, x2 = np.clip([x1, x2], 0, w - 1)
    y1, y2 = np.clip([y1, y2], 0, h - 1)
    if isinstance(class_names, Mapping):
      name = class_names.get(c, str(c))
    elif class_names is not None and 0 <= c < len(class_names):
      name = class_names[c]
    else:
      name = str(c)
    draw.rectangle([float(x1), float(y1), float(x2), float(y2)],
                   outline=color, width=lw)
    label = f"{name} {scores_arr[i]:.2f}" if show_score else str(name)
    l, t, r, b = draw.textbbox((0, 0), label, font=font)
    tw, th = r - l + 4, b - t + 4
    # Above the box when there is room, else just inside its top edge.
    ty = y1 - th if y1 - th >= 0 else y1
    tx = min(float(x1), max(0.0, w - tw))
    draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=color)
    draw.text((tx + 2 - l, ty + 2 - t), label, fill=_text_color(color), font=font)
  return np.asarray(pil)


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
  """Plots losses, learning rate and images/s from metrics.jsonl into one PNG.

  One panel each for loss_rpn_cls, loss_rpn_box, loss_cls, loss_box,
  loss_total, the learning rate and images/s (then `extra_keys`), each with
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
  return [key for _, key, _, _ in panels]
