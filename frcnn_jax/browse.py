"""The dataset browser: the ground truth of any configured split, drawn.

  python -m frcnn_jax.browse --config=configs/voc07_res101.py \
      --split=2007_test --out=/tmp/browse [--num=50] [--start=0] \
      [--only_dropped] [--image_ids=5,9] [--config.data.root=...]

writes ``OUT/<image_id>.png`` for each image and ``OUT/index.txt`` (one
line per image: file, size, boxes, what was dropped). Every box of the
annotation file is drawn, marked by what the pipeline does with it:

* solid, in its class colour: a training box;
* dashed orange ``difficult``: a VOC difficult box (left out of training
  unless ``data.use_difficult``; ignored by the evaluation);
* dashed gray ``over max_num_box``: beyond ``data.max_num_box`` (dropped by
  the loader);
* dashed gray ``crowd``: a COCO crowd region (not a training target,
  ignored by the evaluation);
* dashed magenta with its reason: a box the reader dropped (``outside`` the
  image, ``zero area``, ``inverted`` corners, ``unknown category``); boxes
  with NaN / infinite coordinates cannot be drawn and are counted in the
  index.

Small images are enlarged (nearest neighbour) so that labels do not hide
them. The reader's counts of everything dropped are printed at the end.
Flags are parsed here with absl (``--helpshort`` lists them); the config
is any ``configs/*.py`` with the usual ``--config.<key>=value`` overrides.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from frcnn_jax import data as data_lib
from frcnn_jax import vis

KEPT = "kept"
DIFFICULT = "difficult"
OVER_MAX = "over_max_num_box"

# reason -> (colour, label, dashed)
STYLE = {
    DIFFICULT: ((255, 150, 0), "difficult", True),
    OVER_MAX: ((110, 110, 110), "over max_num_box", True),
    "box_crowd": ((160, 160, 160), "crowd", True),
    "box_outside": ((230, 0, 230), "outside", True),
    "box_zero_area": ((230, 0, 230), "zero area", True),
    "box_inverted": ((230, 0, 230), "inverted", True),
    "box_unknown_category": ((230, 0, 230), "unknown category", True),
}


def ground_truth_marks(record, dropped, class_names, *, max_num_box: int,
                       use_difficult: bool) -> tuple[list[vis.Mark],
                                                     dict[str, int]]:
  """The marks of one image's boxes and the count per reason.

  Args:
    record: the image's ``Record`` (its boxes in file order).
    dropped: the image's ``DroppedBox`` list (``source.dropped``).
    class_names: contiguous class names.
    max_num_box, use_difficult: the ``config.data`` values.

  Returns:
    ``(marks, counts)``: kept boxes last (on top); counts by reason,
    ``kept`` included, ``box_non_finite`` counted but not drawn.
  """
  marks, counts = [], {}
  name = lambda c: vis.class_label(class_names, int(c))  # noqa: E731

  def add(reason, box, label):
    counts[reason] = counts.get(reason, 0) + 1
    if reason in STYLE:
      color, what, dashed = STYLE[reason]
      marks.append(vis.Mark(tuple(box), color, f"{what}: {label}",
                            dashed=dashed))

  for d in dropped:
    if d.reason == "box_non_finite":
      counts[d.reason] = counts.get(d.reason, 0) + 1
      continue
    add(d.reason, d.box, name(d.class_id) if d.class_id else "?")
  kept = []
  for k, (box, c, diff) in enumerate(zip(record.boxes, record.classes,
                                         record.difficult)):
    if diff and not use_difficult:
      add(DIFFICULT, box, name(c))
    else:
      kept.append((box, c))
  for k, (box, c) in enumerate(kept):
    if k >= max_num_box:
      add(OVER_MAX, box, name(c))
    else:
      counts[KEPT] = counts.get(KEPT, 0) + 1
      marks.append(vis.Mark(tuple(box), vis.class_color(int(c)), name(c)))
  return marks, counts


def _legend(counts: dict[str, int]):
  entries = [(vis.class_color(1), False,
              f"training box, in its class colour ({counts.get(KEPT, 0)})")]
  for reason, (color, what, dashed) in STYLE.items():
    if counts.get(reason):
      entries.append((color, dashed, f"{what} ({counts[reason]})"))
  if counts.get("box_non_finite"):
    entries.append(((255, 255, 255), False,
                    f"{counts['box_non_finite']} box(es) with NaN/inf "
                    f"coordinates, not drawn"))
  return entries


def draw_ground_truth(image: np.ndarray, record, dropped, class_names, *,
                      max_num_box: int, use_difficult: bool,
                      min_side: int = 320) -> tuple[np.ndarray,
                                                    dict[str, int]]:
  """One image with every box of its annotation (see the module doc)."""
  marks, counts = ground_truth_marks(record, dropped, class_names,
                                     max_num_box=max_num_box,
                                     use_difficult=use_difficult)
  return vis.draw_marks(image, marks, min_side=min_side, margin=True,
                        legend=_legend(counts)), counts


def browse(data_config, split: str, out_dir: str, *, num: int = 20,
           start: int = 0, image_ids: Sequence[int] = (),
           only_dropped: bool = False, min_side: int = 320) -> list[str]:
  """Draws images of ``split``; returns the PNG paths (and writes index.txt).

  Args:
    data_config: ``config.data``.
    split: a split of that dataset (``train``, ``val2017``, ``2007_test``).
    out_dir: where the pictures go.
    num: at most this many images (0 = all).
    start: skip the first ``start`` images of the split.
    image_ids: only these images (then ``num`` / ``start`` do not apply).
    only_dropped: only images with a box that is not a training box.
    min_side: enlarge smaller images to this long side.
  """
  source = data_lib.build_source(data_config, split)
  records = source.records
  if image_ids:
    by_id = {r.image_id: r for r in records}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
      raise ValueError(f"image ids {missing} are not in {source.name}")
    records = [by_id[i] for i in image_ids]
  else:
    records = records[start:]
  max_num_box = int(data_config.max_num_box)
  use_difficult = bool(data_config.get("use_difficult", False))
  os.makedirs(out_dir, exist_ok=True)
  paths, lines = [], []
  for rec in records:
    if num and len(paths) >= num and not image_ids:
      break
    dropped = source.dropped.get(rec.image_id, [])
    if only_dropped and not dropped and not (
        (rec.difficult.any() and not use_difficult) or
        len(rec.boxes) > max_num_box):
      continue
    img, counts = draw_ground_truth(
        source.load_image(rec), rec, dropped, source.class_names,
        max_num_box=max_num_box, use_difficult=use_difficult,
        min_side=min_side)
    path = os.path.join(out_dir, f"{rec.image_id}.png")
    vis.save_png(path, img)
    paths.append(path)
    what = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no boxes"
    lines.append(f"{rec.image_id}.png  {rec.path or rec.name}  "
                 f"{rec.width}x{rec.height}  {what}")
  with open(os.path.join(out_dir, "index.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"{source.name}: {len(source.records)} images; drawn {len(paths)} "
        f"-> {out_dir} (index.txt)")
  print(f"the reader's counts for the whole split: "
        f"{source.stats.summary()}")
  return paths


_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/shapes.py", "Config file (ml_collections); "
    "--config.data.<key>=value overrides apply.", lock_config=True)
_SPLIT = flags.DEFINE_string("split", "", "Split to draw (default: "
                             "config.data.train_split).")
_OUT = flags.DEFINE_string("out", "", "Output folder (default: "
                           "runs/browse/<split>).")
_NUM = flags.DEFINE_integer("num", 20, "Images to draw (0 = all).")
_START = flags.DEFINE_integer("start", 0, "Skip the first N images.")
_IDS = flags.DEFINE_list("image_ids", [], "Only these image ids.")
_ONLY_DROPPED = flags.DEFINE_bool(
    "only_dropped", False, "Only images with a box that is not a training "
    "box (dropped, crowd, difficult, over max_num_box).")
_MIN_SIDE = flags.DEFINE_integer("min_side", 320, "Enlarge smaller images "
                                 "to this long side.")


def run(data_config, split: str, out: str, **kwargs) -> int:
  """:func:`browse` for the command line: a user error (a split, folder or
  image id that does not exist, a malformed file) is one line on stderr
  and exit code 2. Returns the exit code."""
  try:
    browse(data_config, split, out, **kwargs)
  except (data_lib.DataError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  split = _SPLIT.value or config.data.train_split
  out = _OUT.value or os.path.join("runs", "browse", split.replace("+", "_"))
  try:
    ids = [int(i) for i in _IDS.value]
  except ValueError:
    raise app.UsageError(f"--image_ids must be integers: {_IDS.value}")
  sys.exit(run(config.data, split, out, num=_NUM.value, start=_START.value,
               image_ids=ids, only_dropped=_ONLY_DROPPED.value,
               min_side=_MIN_SIDE.value))


if __name__ == "__main__":
  app.run(main)
