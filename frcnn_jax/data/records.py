"""Detection records and sources: types, box sanitising, the bad-input policy.

A *source* (``DetectionSource``) is one split of one dataset: a list of
``Record`` s (one per image, ground truth in ORIGINAL image pixels), the class
list, the mapping between contiguous class ids and the dataset's category ids,
an image loader and the ground truth as a pycocotools ``COCO`` object for
evaluation. ``coco.py``, ``voc.py``, ``tfds.py`` build sources; ``shapes.py``
writes a COCO-format dataset that ``coco.py`` reads.

Boxes are ``(x1, y1, x2, y2)`` float32 with the inclusive-pixel convention of
faster-rcnn.pytorch: ``w = x2 - x1 + 1``. Conversions happen once, in the
readers: COCO ``[x, y, w, h]`` -> ``(x, y, x + w - 1, y + h - 1)``; VOC 1-based
``xmin..xmax`` -> ``(xmin - 1, ..., xmax - 1)``; TFDS normalized ``xmin, xmax``
-> ``(xmin * W, xmax * W - 1)``. Classes are contiguous ``1..K-1`` (0 is
background).

Bad input never crashes deep in training and never produces NaN:

* structural problems (malformed json/xml, a missing field, a non-numeric
  value, duplicate image ids, a missing image file) raise ``DataError`` when
  the source is built; the message names the file, the image id and the field;
* numerical problems of single boxes are *counted, logged drops* (see
  ``sanitize_boxes``): non-finite, inverted (``x2 < x1``), zero area (width
  or height under one pixel), wholly outside the image; boxes partly outside are
  clipped and counted as ``box_clipped``; unknown categories are dropped and
  counted; crowd boxes are kept out of the training targets and counted;
* an image that cannot be decoded (truncated, not an image, size differing
  from the annotation) raises ``ImageLoadError`` naming the file and image id
  when it is loaded; ``verify_images='header'`` or ``'full'`` finds all such
  files when the source is built instead.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import logging
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from frcnn_jax.data.class_names import BACKGROUND
from ops import boxes as box_ops

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1


class DataError(ValueError):
  """A dataset file is malformed; the message names file, image id, field."""


class ImageLoadError(DataError):
  """An image file is missing, unreadable or inconsistent with its record."""


# How many example messages per drop reason are kept and logged.
_MAX_EXAMPLES = 5

@dataclasses.dataclass
class Record:
  """Ground truth of one image, in original image pixels.

  Attributes:
    image_id: dataset image id (int, ``0 <= id < 2**31``; -1 is reserved for
      padding images in eval batches).
    path: image file path, or ``None`` for TFDS records.
    index: TFDS example index, or ``None`` for file records.
    height: image height in pixels, as annotated (after EXIF orientation).
    width: image width in pixels.
    boxes: float32 ``[n, 4]`` inclusive-pixel ``(x1, y1, x2, y2)``, finite,
      ``0 <= x1 <= x2 <= width - 1`` (same for y).
    classes: int32 ``[n]`` contiguous class ids in ``1..K-1``.
    difficult: bool ``[n]`` (VOC ``difficult``; all False elsewhere).
  """
  image_id: int
  path: str | None
  index: int | None
  height: int
  width: int
  boxes: np.ndarray
  classes: np.ndarray
  difficult: np.ndarray

  @property
  def name(self) -> str:
    """Human-readable location used in error messages."""
    if self.path is not None:
      return f'{self.path} (image_id {self.image_id})'
    return f'TFDS example {self.index} (image_id {self.image_id})'

@dataclasses.dataclass
class DroppedBox:
  """A ground-truth box the reader kept out of the records, and why.

  Attributes:
    box: float64 ``[4]`` inclusive ``(x1, y1, x2, y2)`` original pixels as
      annotated (not clipped; may be inverted or non-finite).
    class_id: contiguous class, 0 when the category is unknown.
    reason: the ``DropStats`` reason (``box_non_finite``, ``box_inverted``,
      ``box_zero_area``, ``box_outside``, ``box_unknown_category``,
      ``box_crowd``).
  """
  box: np.ndarray
  class_id: int
  reason: str


def add_dropped(dropped: dict[int, list[DroppedBox]], image_id: int,
                boxes: np.ndarray, classes: np.ndarray,
                reasons: Sequence[str]) -> None:
  """Appends ``DroppedBox`` es of one image (rows with reason '' skipped)."""
  for b, c, r in zip(np.asarray(boxes, np.float64).reshape(-1, 4),
                     np.asarray(classes).reshape(-1), reasons):
    if r:
      dropped.setdefault(int(image_id), []).append(
          DroppedBox(box=b.copy(), class_id=int(c), reason=str(r)))


class DropStats:
  """Counts of everything dropped, clipped or skipped, with reasons.

  ``stats['box_inverted']`` is the count for a reason (0 if never seen);
  ``as_dict()`` gives all counts (JSON-serializable); ``examples`` keeps the
  first few messages per reason, which are also logged as warnings.
  """

  def __init__(self):
    self.counts: dict[str, int] = collections.OrderedDict()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def add(self, reason: str, n: int = 1, example: str | None = None,
          level: int = logging.WARNING) -> None:
    if n <= 0:
      return
    self.counts[reason] = self.counts.get(reason, 0) + n
    if example is not None and len(self.examples[reason]) < _MAX_EXAMPLES:
      self.examples[reason].append(example)
      log.log(level, '%s: %s', reason, example)

  def update(self, other: 'DropStats') -> None:
    for k, v in other.counts.items():
      self.counts[k] = self.counts.get(k, 0) + v
    for k, v in other.examples.items():
      room = _MAX_EXAMPLES - len(self.examples[k])
      self.examples[k].extend(v[:max(room, 0)])

  def __getitem__(self, reason: str) -> int:
    return self.counts.get(reason, 0)

  def __contains__(self, reason: str) -> bool:
    return reason in self.counts

  def as_dict(self) -> dict[str, int]:
    return dict(self.counts)

  def summary(self) -> str:
    if not self.counts:
      return 'nothing dropped'
    return ', '.join(f'{k}={v}' for k, v in self.counts.items())

  def __repr__(self) -> str:
    return f'DropStats({self.summary()})'

BOX_DROP_REASONS = ('box_non_finite', 'box_inverted', 'box_zero_area',
                    'box_outside')


def box_drop_reasons(boxes: np.ndarray, height, width) -> np.ndarray:
  """Why each box is unusable: object ``[n]`` of ``BOX_DROP_REASONS``
  entries (the first that applies, in that order), '' for a usable box.

  ``box_non_finite``: a NaN or infinite coordinate; ``box_inverted``:
  negative extent, ``x2 - x1 + 1 < 0`` (or in y); ``box_zero_area``: extent
  in ``[0, 1)``; ``box_outside``: no pixel inside the ``width x height``
  image (scalars or ``[n]``).
  """
  n = boxes.shape[0]
  reasons = np.full(n, '', dtype=object)
  if n == 0:
    return reasons
  height = np.broadcast_to(np.asarray(height, np.float64), (n,))
  width = np.broadcast_to(np.asarray(width, np.float64), (n,))
  with np.errstate(invalid='ignore'):
    bw = boxes[:, 2] - boxes[:, 0] + 1
    bh = boxes[:, 3] - boxes[:, 1] + 1
    tests = (~np.isfinite(boxes).all(axis=1), (bw < 0) | (bh < 0),
             (bw < 1) | (bh < 1),
             (boxes[:, 2] < 0) | (boxes[:, 3] < 0) |
             (boxes[:, 0] > width - 1) | (boxes[:, 1] > height - 1))
  for reason, hit in zip(BOX_DROP_REASONS, tests):
    reasons[hit & (reasons == '')] = reason
  return reasons


def sanitize_boxes(boxes: np.ndarray, height, width, stats: DropStats,
                   where: Callable[[int], str], *,
                   with_reasons: bool = False):
  """Validates boxes (of one image or many); returns the mask of boxes to keep.

  Boxes are modified in place: those partly outside their image are clipped
  to ``[0, width - 1] x [0, height - 1]``.

  Drop reasons (:func:`box_drop_reasons`; counted in ``stats``, first
  examples logged): ``box_non_finite``, ``box_inverted`` (a negative COCO
  width/height, VOC ``xmax < xmin - 1``), ``box_zero_area`` (COCO width 0
  or 0.4, VOC ``xmax = xmin - 1``, TFDS ``xmax = xmin``), ``box_outside``;
  and ``box_clipped`` counts the boxes kept after clipping.

  Args:
    boxes: float64 ``[n, 4]`` inclusive-pixel boxes (modified in place).
    height, width: image size in pixels, scalars or ``[n]`` (per box).
    stats: where counts go.
    where: box index -> "file, image id, annotation id" for the messages.
    with_reasons: also return the reasons.

  Returns:
    bool ``[n]`` keep mask (and, ``with_reasons``, object ``[n]`` reasons,
    '' for kept boxes).
  """
  n = boxes.shape[0]
  reasons = box_drop_reasons(boxes, height, width)
  keep = reasons == ''
  if n == 0:
    return (keep, reasons) if with_reasons else keep
  height = np.broadcast_to(np.asarray(height, np.float64), (n,))
  width = np.broadcast_to(np.asarray(width, np.float64), (n,))
  what = {
      'box_non_finite': lambda i: f'field bbox = {boxes[i].tolist()}',
      'box_inverted': lambda i: (f'field bbox has negative width or height: '
                                 f'{boxes[i].tolist()} (x1,y1,x2,y2)'),
      'box_zero_area': lambda i: (f'field bbox is under one pixel wide or '
                                  f'high: {boxes[i].tolist()} (x1,y1,x2,y2)'),
      'box_outside': lambda i: (f'field bbox {boxes[i].tolist()} '
                                f'(x1,y1,x2,y2) is outside the '
                                f'{width[i]:.0f}x{height[i]:.0f} image'),
  }
  for reason in BOX_DROP_REASONS:
    for i in np.flatnonzero(reasons == reason):
      stats.add(reason, example=f'{where(i)}: {what[reason](i)}')
  with np.errstate(invalid='ignore'):
    hi = np.stack([width - 1, height - 1, width - 1, height - 1], axis=1)
    clipped = np.clip(boxes, 0.0, hi)
    changed = keep & (clipped != boxes).any(axis=1)
  for i in np.flatnonzero(changed):
    stats.add('box_clipped', example=f'{where(i)}: field bbox '
              f'{boxes[i].tolist()} (x1,y1,x2,y2) clipped to the '
              f'{width[i]:.0f}x{height[i]:.0f} image', level=logging.INFO)
  boxes[keep] = clipped[keep]
  return (keep, reasons) if with_reasons else keep

def group_boxes(image_index: np.ndarray, num_images: int, *arrays):
  """Splits per-box arrays into per-image lists (stable: input order kept)."""
  order = np.argsort(image_index, kind='stable')
  counts = np.bincount(image_index, minlength=num_images)
  splits = np.cumsum(counts)[:-1]
  return [np.split(a[order], splits) for a in arrays]

def count_image_stats(records: Sequence[Record], stats: DropStats,
                      crowd_counts: np.ndarray | None = None) -> None:
  """Counts images without usable boxes (``image_empty``, ``image_crowd_only``).

  Not drops here: the train loader skips or keeps them (``skip_empty``).
  """
  for i, r in enumerate(records):
    if len(r.boxes) == 0:
      if crowd_counts is not None and crowd_counts[i] > 0:
        stats.add('image_crowd_only', example=f'{r.name}: only crowd boxes',
                  level=logging.DEBUG)
      else:
        stats.add('image_empty', example=f'{r.name}: no usable boxes',
                  level=logging.DEBUG)

class DetectionSource:
  """One split of one detection dataset.

  Attributes:
    records: list of ``Record``, one per image, in the dataset's order.
    class_names: ``K`` names, index 0 is ``'__background__'``.
    num_classes: ``K`` (background included).
    cat_ids: ``K`` dataset category ids for the contiguous ids (entry 0 is 0).
    stats: ``DropStats`` of everything dropped while reading.
    name: a short description (dataset and split).
    has_annotations: False for an image list without ground truth (a COCO
      json without ``annotations``, like ``image_info_test-dev2017.json``):
      evaluation writes detections but computes no AP; training refuses it.
    dropped: ``image_id -> [DroppedBox]``: the boxes of each image that
      are not in its record, with the reason (crowd boxes included).
  """

  def __init__(self, *, name: str, records: list[Record],
               class_names: Sequence[str], cat_ids: Sequence[int],
               reader: Callable[[Record], np.ndarray], stats: DropStats,
               coco_gt_fn: Callable[[], Any] | None = None,
               has_annotations: bool = True,
               dropped: dict[int, list[DroppedBox]] | None = None):
    if class_names[0] != BACKGROUND:
      class_names = [BACKGROUND] + list(class_names)
      cat_ids = [0] + list(cat_ids)
    self.name = name
    self.records = records
    self.class_names = list(class_names)
    self.cat_ids = [int(c) for c in cat_ids]
    self.reader = reader
    self.stats = stats
    self._coco_gt_fn = coco_gt_fn
    self._coco_gt = None
    self.has_annotations = bool(has_annotations)
    self.dropped = dict(dropped or {})

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def cat_id(self, contiguous: int) -> int:
    """Dataset category id of contiguous class ``contiguous`` (1..K-1)."""
    if not 1 <= contiguous < self.num_classes:
      raise ValueError(f'class {contiguous} outside 1..{self.num_classes - 1}')
    return self.cat_ids[contiguous]

  def contiguous_id(self, cat_id: int) -> int:
    """Contiguous class (1..K-1) of dataset category id ``cat_id``."""
    try:
      return self.cat_ids.index(int(cat_id), 1)
    except ValueError:
      raise ValueError(f'unknown category id {cat_id}') from None

  def load_image(self, record: Record) -> np.ndarray:
    """uint8 ``[height, width, 3]`` RGB pixels of ``record``.

    Raises:
      ImageLoadError: naming the file and image id.
    """
    return self.reader(record)

  def coco_gt(self):
    """Ground truth of this split as a ``pycocotools.coco.COCO`` object.

    In ORIGINAL image pixels with dataset category ids. For COCO-format
    datasets it is the annotation json as-is (crowd regions kept, so
    ``COCOeval`` treats them as usual). For VOC and TFDS it is built in
    memory; VOC ``difficult`` boxes get ``iscrowd=1`` so that ``COCOeval``
    ignores detections matching them, as VOC evaluation does.
    """
    if self._coco_gt is None:
      if self._coco_gt_fn is None:
        self._coco_gt = coco_from_dict(records_to_coco_dict(
            self.records, self.class_names, self.cat_ids))
      else:
        self._coco_gt = self._coco_gt_fn()
    return self._coco_gt

  def __len__(self) -> int:
    return len(self.records)

  def __repr__(self) -> str:
    return (f'DetectionSource({self.name}: {len(self.records)} images, '
            f'{self.num_classes} classes; {self.stats.summary()})')

def coco_from_dict(d: dict):
  """A pycocotools ``COCO`` from an in-memory dataset dict (quietly)."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  c = COCO()
  c.dataset = d
  with contextlib.redirect_stdout(io.StringIO()):
    c.createIndex()
  return c

def records_to_coco_dict(records: Iterable[Record], class_names: Sequence[str],
                         cat_ids: Sequence[int],
                         crowd: dict[int, tuple[np.ndarray, np.ndarray]]
                         | None = None) -> dict:
  """COCO ground-truth dict of records (inclusive boxes -> ``[x, y, w, h]``).

  ``difficult`` boxes and the optional ``crowd`` boxes (image_id ->
  (boxes, classes)) become ``iscrowd=1``.
  """
  images, anns = [], []
  for r in records:
    images.append({'id': int(r.image_id), 'width': int(r.width),
                   'height': int(r.height),
                   'file_name': os.path.basename(r.path) if r.path else
                   str(r.index)})
    lists = [(r.boxes, r.classes, r.difficult)]
    if crowd and r.image_id in crowd:
      cb, cc = crowd[r.image_id]
      lists.append((cb, cc, np.ones(len(cb), bool)))
    for boxes, classes, flags in lists:
      for xywh, c, f in zip(box_ops.xyxy_to_xywh(boxes).reshape(-1, 4),
                            classes, flags):
        anns.append({'id': len(anns) + 1, 'image_id': int(r.image_id),
                     'category_id': int(cat_ids[int(c)]),
                     'bbox': [float(v) for v in xywh],
                     'area': float(xywh[2] * xywh[3]),
                     'iscrowd': int(bool(f))})
  cats = [{'id': int(cat_ids[i]), 'name': class_names[i]}
          for i in range(1, len(class_names))]
  return {'images': images, 'annotations': anns, 'categories': cats}

def combine_sources(sources: Sequence[DetectionSource],
                    name: str) -> DetectionSource:
  """Concatenates splits of one dataset (``'2007_trainval+2012_trainval'``).

  Raises:
    DataError: different class lists, or an image id in two splits.
  """
  if len(sources) == 1:
    return sources[0]
  first = sources[0]
  seen = {}
  records = []
  stats = DropStats()
  dropped = {}
  for s in sources:
    if s.class_names != first.class_names or s.cat_ids != first.cat_ids:
      raise DataError(f'{name}: {s.name} and {first.name} have different '
                      'category lists')
    for r in s.records:
      if r.image_id in seen:
        raise DataError(f'{name}: image_id {r.image_id} is in both '
                        f'{seen[r.image_id]} and {s.name} ({r.name})')
      seen[r.image_id] = s.name
    records.extend(s.records)
    stats.update(s.stats)
    dropped.update(s.dropped)
  return DetectionSource(
      name=name, records=records, class_names=first.class_names,
      cat_ids=first.cat_ids, reader=first.reader, stats=stats,
      coco_gt_fn=functools.partial(_merged_coco_gt, list(sources)),
      has_annotations=all(s.has_annotations for s in sources),
      dropped=dropped)

def _merged_coco_gt(sources: Sequence[DetectionSource]):
  images, anns = [], []
  cats = None
  for s in sources:
    d = s.coco_gt().dataset
    images.extend(d['images'])
    cats = cats or d['categories']
    for a in d.get('annotations', []):
      a = dict(a)
      a['id'] = len(anns) + 1
      anns.append(a)
  return coco_from_dict({'images': images, 'annotations': anns,
                         'categories': cats})
