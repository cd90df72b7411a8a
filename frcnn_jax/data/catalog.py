"""Datasets registered from Python: any list of records, by name.

For data that is neither COCO json nor VOC xml (a CSV, a database, another
library's format), register a function that returns the records of a split
and point ``config.data.name`` at it, as detectron2's ``DatasetCatalog``::

  from frcnn_jax import register_dataset

  def my_split(split):                      # 'train', 'val', ...
    return [{'file_name': 'img/0001.jpg',   # relative to image_root
             'boxes': [[10, 20, 110, 90]],  # x1, y1, x2, y2 (inclusive px)
             'labels': ['cat']},            # names, or class ids 1..K-1
            ...]

  register_dataset('pets', my_split, class_names=['cat', 'dog'],
                   image_root='/data/pets')
  # then: config.data.name = 'pets'; config.data.train_split = 'train' ...

A record is a dict with ``file_name`` (required), ``image_id`` (int;
default: the position in the split), ``height`` / ``width`` (default: read
from the image header), ``boxes`` ``[n, 4]`` and ``labels`` ``[n]``
(default: none), and optionally ``difficult`` / ``iscrowd`` ``[n]`` bools
(kept out of training, ignored by evaluation as VOC's difficult boxes).
Boxes are ``(x1, y1, x2, y2)`` in the package's inclusive-pixel convention
(``w = x2 - x1 + 1``) or, with ``box_format='xywh'``, COCO's ``[x, y, w,
h]``. Bad boxes are dropped and counted like those of the COCO and VOC
readers (:func:`records.sanitize_boxes`).

The registry lives in the process that registers: register before the
config is loaded (a config file may do it itself), in the process that
trains or evaluates. grain's worker processes never need it (they receive
the records, not the function).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record
from ops import boxes as box_ops

log = logging.getLogger(__name__)

# data.name values of the built-in readers (datasets.READERS).
RESERVED = ('coco', 'shapes', 'voc', 'tfds')
BOX_FORMATS = ('xyxy', 'xywh')


@dataclasses.dataclass(frozen=True)
class _Entry:
  records: Callable[[str], Iterable[Mapping[str, Any]]]
  class_names: tuple[str, ...]
  image_root: str
  box_format: str


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str,
                     records: Callable[[str], Iterable[Mapping[str, Any]]]
                     | Mapping[str, Iterable[Mapping[str, Any]]],
                     class_names: Sequence[str], *, image_root: str = '',
                     box_format: str = 'xyxy',
                     overwrite: bool = False) -> None:
  """Makes ``config.data.name = name`` read ``records(split)``.

  Args:
    name: the dataset's name (not one of the built-in readers).
    records: ``split -> iterable of record dicts`` (see the module
      docstring), or a dict ``{split: records}``.
    class_names: the object classes, background excluded; a record's
      integer label ``k`` is ``class_names[k - 1]``.
    image_root: folder relative ``file_name`` s are relative to (default:
      the current directory at registration), made absolute now.
    box_format: ``'xyxy'`` (inclusive corners, this package's convention) or
      ``'xywh'`` (COCO: ``x2 = x + w - 1``).
    overwrite: replace an earlier registration of ``name``.
  """
  if name in RESERVED:
    raise ValueError(f'{name!r} is a built-in reader (data.name); register '
                     f'under another name')
  if name in _REGISTRY and not overwrite:
    raise ValueError(f'dataset {name!r} is already registered (pass '
                     f'overwrite=True to replace it)')
  if box_format not in BOX_FORMATS:
    raise ValueError(f'box_format must be one of {BOX_FORMATS}, got '
                     f'{box_format!r}')
  names = tuple(str(c) for c in class_names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f'class_names must be distinct and not empty, got '
                     f'{list(class_names)}')
  if records_lib.BACKGROUND in names:
    raise ValueError(f'class_names: leave out {records_lib.BACKGROUND!r} '
                     '(class 0 is implied)')
  fn = _split_table(name, records) if isinstance(records, Mapping) else records
  if not callable(fn):
    raise TypeError('records must be a function of the split or a dict '
                    '{split: records}')
  _REGISTRY[name] = _Entry(fn, names, os.path.abspath(image_root or '.'),
                           box_format)


def _split_table(name: str, records: Mapping[str, Any]):
  table = dict(records)

  def fn(split):
    if split not in table:
      raise DataError(f'dataset {name!r} has no split {split!r} (it has '
                      f'{sorted(table)})')
    return table[split]
  return fn


def unregister_dataset(name: str) -> None:
  """Forgets ``name`` (no error if it was not registered)."""
  _REGISTRY.pop(name, None)


def registered_datasets() -> list[str]:
  """The names registered in this process."""
  return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
  return name in _REGISTRY


def _array(rec: Mapping[str, Any], key: str, shape_tail: tuple, dtype,
           n: int | None, where: str) -> np.ndarray:
  value = rec.get(key, [])
  try:
    arr = np.asarray(value, dtype=dtype)
  except (TypeError, ValueError):
    raise DataError(f'{where}: field {key!r} must be numbers, got '
                    f'{value!r}') from None
  if arr.size == 0:
    arr = arr.reshape((0,) + shape_tail)
  if arr.shape[1:] != shape_tail or (n is not None and len(arr) != n):
    want = f'[{n if n is not None else "n"}' + ''.join(
        f', {d}' for d in shape_tail) + ']'
    raise DataError(f'{where}: field {key!r} must have shape {want}, got '
                    f'{list(arr.shape)}')
  return arr


class _Converter:
  """Record dicts of one split -> ``Record`` s, with the drop counts."""

  def __init__(self, name: str, split: str, entry: _Entry, exif: bool):
    self.name, self.split, self.entry, self.exif = name, split, entry, exif
    self.index = {c: i + 1 for i, c in enumerate(entry.class_names)}
    self.stats = DropStats()
    self.seen: dict[int, str] = {}

  def labels(self, rec, n, where) -> tuple[np.ndarray, np.ndarray]:
    """(contiguous class ids [n], known mask [n])."""
    raw = list(rec.get('labels', []))
    if len(raw) != n:
      raise DataError(f'{where}: fields boxes and labels differ in length '
                      f'({n} vs {len(raw)})')
    k = len(self.entry.class_names)
    out = np.zeros(n, np.int32)
    known = np.ones(n, bool)
    for j, lab in enumerate(raw):
      if isinstance(lab, str):
        c = self.index.get(lab, 0)
      elif isinstance(lab, (int, np.integer)) and not isinstance(lab, bool):
        c = int(lab) if 1 <= int(lab) <= k else 0
      else:
        raise DataError(f'{where}: labels[{j}] = {lab!r}: a class name or an '
                        f'id in 1..{k}')
      if c == 0:
        known[j] = False
        self.stats.add('box_unknown_category', example=f'{where}: labels[{j}]'
                       f' = {lab!r} is not one of the registered classes')
      out[j] = c
    return out, known

  def __call__(self, i: int, rec: Mapping[str, Any]) -> Record:
    if not isinstance(rec, Mapping) or 'file_name' not in rec:
      raise DataError(f'dataset {self.name!r}, split {self.split!r}, record '
                      f'{i}: a dict with at least "file_name" is needed, got '
                      f'{type(rec).__name__}')
    path = os.path.join(self.entry.image_root, os.fspath(rec['file_name']))
    image_id = int(rec.get('image_id', i))
    where = f'{self.name}:{self.split} record {i} ({path}, image_id {image_id})'
    if not 0 <= image_id <= records_lib.INT32_MAX:
      raise DataError(f'{where}: field image_id must be in [0, 2**31)')
    if image_id in self.seen:
      raise DataError(f'{where}: duplicate image_id (also {self.seen[image_id]})')
    self.seen[image_id] = path
    if 'height' in rec and 'width' in rec:
      height, width = int(rec['height']), int(rec['width'])
    else:
      height, width, _ = images_lib.image_size(path, exif_transpose=self.exif,
                                               where=where)
    boxes = _array(rec, 'boxes', (4,), np.float64, None, where)
    if self.entry.box_format == 'xywh':
      boxes = box_ops.xywh_to_xyxy(boxes)
    n = len(boxes)
    classes, known = self.labels(rec, n, where)
    flags = np.zeros(n, bool)
    for key in ('difficult', 'iscrowd'):
      if key in rec:
        flags |= _array(rec, key, (), bool, n, where)
    keep = known & records_lib.sanitize_boxes(
        boxes, height, width, self.stats, lambda j: f'{where}, box {j}')
    return Record(image_id=image_id, path=path, index=None, height=height,
                  width=width, boxes=boxes[keep].astype(np.float32),
                  classes=classes[keep], difficult=flags[keep])


def build_registered_source(data_config, split: str
                            ) -> records_lib.DetectionSource:
  """The ``DetectionSource`` of a registered dataset's split."""
  name = data_config.name
  if name not in _REGISTRY:
    raise ValueError(f'data.name={name!r} is neither a built-in reader '
                     f'({", ".join(RESERVED)}) nor a registered dataset '
                     f'(registered: {registered_datasets() or "none"}); '
                     'see frcnn_jax.register_dataset')
  entry = _REGISTRY[name]
  exif = bool(data_config.get('exif_transpose', True))
  convert = _Converter(name, split, entry, exif)
  records = [convert(i, r) for i, r in enumerate(entry.records(split))]
  if not records:
    raise DataError(f'dataset {name!r}: split {split!r} has no records')
  records_lib.count_image_stats(records, convert.stats)
  reader = images_lib.ImageReader(exif_transpose=exif)
  images_lib.check_files(records, str(data_config.get('verify_images',
                                                      'exists')),
                         reader, f'{name}:{split}')
  log.info('dataset %s:%s: %d images, %d classes', name, split, len(records),
           len(entry.class_names))
  return records_lib.DetectionSource(
      name=f'{name}:{split}', records=records,
      class_names=list(entry.class_names),
      cat_ids=list(range(1, len(entry.class_names) + 1)), reader=reader,
      stats=convert.stats)
