"""COCO-format detection datasets (real COCO and the synthetic shapes set).

Layout under ``data.root`` (the one the COCO downloads unpack to)::

  annotations/instances_<split>.json    e.g. instances_train2017.json
  <split>/<file_name>                   e.g. train2017/000000000009.jpg

``minival2014`` / ``valminusminival2014`` / ``val35k2014`` read their images
from ``val2014/``. Splits joined with ``+`` are concatenated
(``train2014+valminusminival2014``).

Conversion, once, here: ``[x, y, w, h]`` -> inclusive-pixel
``(x, y, x + w - 1, y + h - 1)``; the inverse (``w = x2 - x1 + 1``) is what
evaluation writes, so a perfect detection has IoU 1 with its ground truth.
Categories sorted by id become contiguous classes ``1..K-1``.
``iscrowd`` boxes are kept out of the training targets (counted as
``box_crowd``) and stay in ``coco_gt()`` (the file's ground truth, read once,
``coco_gt.py``) for ``COCOeval``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import numbers
import os
from typing import Any

import numpy as np

from frcnn_jax.data import coco_gt as coco_gt_lib
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import json_columns
from frcnn_jax.data import records as records_lib
from frcnn_jax.data.json_columns import Columns
from frcnn_jax.data.json_columns import columns_of
from frcnn_jax.data.json_columns import MISSING
from frcnn_jax.data.json_columns import NotAnObject
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record
from ops import boxes as box_ops

log = logging.getLogger(__name__)

_IMAGE_DIR = {'minival2014': 'val2014', 'valminusminival2014': 'val2014',
              'val35k2014': 'val2014'}


# The fields read, with their json_columns kinds.
IMAGE_FIELDS = {'id': 'int', 'file_name': 'any', 'height': 'int',
                'width': 'int'}
ANNOTATION_FIELDS = {'id': 'int', 'image_id': 'int', 'category_id': 'int',
                     'bbox': 'float4', 'iscrowd': 'int', 'area': 'float'}


def load_json(path: str, what: str = 'annotation file',
              arrays: dict[str, dict[str, str]] | None = None) -> Any:
  """Reads a json file; malformed json is a ``DataError`` naming the spot.

  With ``arrays`` (top-level key -> {field: kind}), those top-level arrays come back
  as ``json_columns.Columns`` of just those fields (see
  :func:`json_columns.read_columns`: one pass, a fraction of the memory).
  """
  try:
    if arrays:
      return json_columns.read_columns(path, arrays)
    return json.loads(json_columns.read_text(path))
  except FileNotFoundError as e:
    raise DataError(f'{path}: {what} not found') from e
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: malformed json at line {e.lineno} column '
                    f'{e.colno}: {e.msg}') from e
  except (UnicodeDecodeError, OSError) as e:
    raise DataError(f'{path}: cannot read {what}: {e}') from e


def _need(d, key, where, types, ann_file):
  """``d[key]`` checked against ``types``; a ``DataError`` naming it if not."""
  if not isinstance(d, dict):
    return _need_value(NotAnObject(d), key, where, types, ann_file)
  return _need_value(d.get(key, MISSING), key, where, types, ann_file)


def _need_value(v, key, where, types, ann_file):
  """The same for a value of a ``Columns`` column (``MISSING``, ...)."""
  if isinstance(v, NotAnObject):
    raise DataError(f'{ann_file}: {where}: expected an object, got '
                    f'{v.type_name}')
  if v is MISSING:
    raise DataError(f'{ann_file}: {where}: missing field {key!r}')
  if types is numbers.Integral and isinstance(v, float) and v.is_integer():
    v = int(v)
  if not isinstance(v, types) or isinstance(v, bool):
    raise DataError(f'{ann_file}: {where}: field {key!r} has the wrong type '
                    f'({type(v).__name__}: {v!r})')
  return v


def read_coco(ann_file: str, image_dir: str, *, name: str = '',
              exif_transpose: bool = True,
              verify_images: str = 'exists') -> records_lib.DetectionSource:
  """Reads a COCO instances json into a ``DetectionSource``.

  The file is read and parsed once, keeping only the fields used here
  (``json_columns``: segmentations and other fields are skipped entry by
  entry, never all held). Every field the detector or ``COCOeval`` uses is
  checked, for all images / annotations at once; when something is off, a
  per-entry pass finds the first bad entry and the message names it. What
  evaluation needs (``coco_gt()``: image ids and sizes, annotation ids,
  image and category ids, boxes, areas, crowd flags) is kept as arrays
  (about 60 bytes per annotation), so evaluation does not read the file
  again.

  Args:
    ann_file: ``instances_<split>.json``.
    image_dir: folder the ``file_name`` s are relative to.
    name: description for messages (default: the json path).
    exif_transpose: apply EXIF orientation when decoding (annotations refer
      to the displayed image).
    verify_images: ``'none'``, ``'exists'``, ``'header'`` or ``'full'``; see
      ``images.check_files``.

  Raises:
    DataError: malformed json, a missing or mistyped field (the message names
      the file, the image id or annotation id and the field), duplicate ids.
    ImageLoadError: missing image files (verify_images != 'none').
  """
  d = load_json(ann_file, arrays={'images': IMAGE_FIELDS,
                                  'annotations': ANNOTATION_FIELDS})
  name = name or ann_file
  if not isinstance(d, dict):
    raise DataError(f'{ann_file}: top level must be an object with images, '
                    f'annotations, categories')
  if isinstance(d.get('images'), list):  # (read_columns converts lists)
    d['images'] = columns_of(d['images'], IMAGE_FIELDS)
  images = _need(d, 'images', 'top level', Columns, ann_file)
  cats = _need(d, 'categories', 'top level', list, ann_file)
  has_annotations = 'annotations' in d
  anns = d.get('annotations', columns_of([], ANNOTATION_FIELDS))
  if not isinstance(anns, Columns):
    raise DataError(f'{ann_file}: top level: field "annotations" must be a '
                    'list')
  del d
  stats = DropStats()
  if not has_annotations:
    log.warning('%s has no "annotations": an image list (like COCO\'s '
                'image_info_test-dev2017.json); it can be evaluated '
                '(detections are written for submission, no AP) but not '
                'trained on', ann_file)
  cat_ids, class_names = _read_categories(cats, ann_file)
  table = _read_images(images, image_dir, ann_file)
  del images
  ann = _read_annotations(anns, table, cat_ids, ann_file, stats)
  # After the checks above, so that their messages name the file's own ids.
  gt = coco_gt_lib.ground_truth(
      anns, ann_ids=ann.ids, image_id=ann.image_id,
      category_id=ann.category_id, xywh=ann.xywh, crowd=ann.crowd,
      image_ids=table.ids, heights=table.heights, widths=table.widths,
      file_names=table.file_names, categories=cats, ann_file=ann_file,
      stats=stats, has_annotations=has_annotations)
  del anns
  dropped = {}
  records = _records(table, ann, ann_file, stats, dropped)
  reader = images_lib.ImageReader(exif_transpose=exif_transpose)
  images_lib.check_files(records, verify_images, reader, name)
  return records_lib.DetectionSource(
      name=name, records=records, class_names=class_names, cat_ids=cat_ids,
      reader=reader, stats=stats,
      coco_gt_fn=functools.partial(coco_gt_lib.to_coco, gt),
      has_annotations=has_annotations, dropped=dropped)


def _read_categories(cats: list, ann_file: str) -> tuple[list[int],
                                                        list[str]]:
  """(category ids sorted, their names): contiguous class k+1 is entry k."""
  cat_list = []
  for i, c in enumerate(cats):
    cid = _need(c, 'id', f'categories[{i}]', numbers.Integral, ann_file)
    cname = _need(c, 'name', f'categories[{i}] (id {cid})', str, ann_file)
    cat_list.append((int(cid), cname))
  cat_list.sort()
  cat_ids = [c for c, _ in cat_list]
  if len(set(cat_ids)) != len(cat_ids):
    raise DataError(f'{ann_file}: categories: duplicate category ids')
  return cat_ids, [n for _, n in cat_list]


@dataclasses.dataclass
class _ImageTable:
  """The ``images`` of a COCO file, as arrays (index i = images[i])."""
  ids: np.ndarray        # int64 [n]
  heights: np.ndarray    # int64 [n]
  widths: np.ndarray     # int64 [n]
  file_names: list[str]
  paths: list[str]


def _only(values: list, *types) -> bool:
  """Every value's type is exactly one of ``types`` (so no bool for int)."""
  return set(map(type, values)) <= set(types)


def _read_images(images: Columns, image_dir: str,
                 ann_file: str) -> _ImageTable:
  """The image table; fields checked for all images at once (fast path)."""
  n = len(images)
  ids, heights, widths = (images.array('id'), images.array('height'),
                          images.array('width'))
  file_names = images.values('file_name')
  if (ids is None or heights is None or widths is None
      or not _only(file_names, str)
      or n and ((ids < 0).any() or (ids > records_lib.INT32_MAX).any()
                or (heights < 1).any() or (widths < 1).any())
      or len(np.unique(ids)) != n):
    return _read_images_one_by_one(images, image_dir, ann_file)
  return _ImageTable(ids=ids, heights=heights, widths=widths,
                     file_names=file_names,
                     paths=[os.path.join(image_dir, fn) for fn in file_names])


def _read_images_one_by_one(images: Columns, image_dir: str,
                            ann_file: str) -> _ImageTable:
  """Per-image checks: raises on the first bad image, naming it."""
  n = len(images)
  t = _ImageTable(ids=np.zeros(n, np.int64), heights=np.zeros(n, np.int64),
                  widths=np.zeros(n, np.int64), file_names=[], paths=[])
  cols = {f: images.values(f) for f in IMAGE_FIELDS}
  seen = set()
  for i in range(n):
    iid = _need_value(cols['id'][i], 'id', f'images[{i}]',
                      numbers.Integral, ann_file)
    where = f'images[{i}] (image_id {iid})'
    if not 0 <= iid <= records_lib.INT32_MAX:
      raise DataError(f'{ann_file}: {where}: field "id" must be in '
                      f'[0, 2**31): batches carry int32 image ids')
    if iid in seen:
      raise DataError(f'{ann_file}: {where}: duplicate image id')
    seen.add(iid)
    fn = _need_value(cols['file_name'][i], 'file_name', where, str,
                     ann_file)
    for key, arr in (('height', t.heights), ('width', t.widths)):
      v = _need_value(cols[key][i], key, where, numbers.Real, ann_file)
      if not (np.isfinite(v) and v >= 1 and float(v).is_integer()):
        raise DataError(f'{ann_file}: {where}: field {key!r} must be a '
                        f'positive integer, got {v!r}')
      arr[i] = int(v)
    t.ids[i] = iid
    t.file_names.append(fn)
    t.paths.append(os.path.join(image_dir, fn))
  return t


@dataclasses.dataclass
class _Annotations:
  """The ``annotations`` of a COCO file as arrays (index j = annotations[j])."""
  image_id: np.ndarray   # int64 [m] as in the file
  category_id: np.ndarray  # int64 [m] as in the file
  xywh: np.ndarray       # float64 [m, 4] as in the file (null -> NaN)
  crowd: np.ndarray      # bool [m]
  ids: list | np.ndarray  # the file's annotation ids (MISSING if absent)
  image: np.ndarray | None = None  # int64 [m] index into the image table
  cls: np.ndarray | None = None    # int64 [m] contiguous class
  ok: np.ndarray | None = None     # bool [m] known image and category
  unknown_cat: np.ndarray | None = None  # bool [m] known image, unknown cat.


def _read_annotations(anns: Columns, table: _ImageTable, cat_ids: list[int],
                      ann_file: str, stats: DropStats) -> _Annotations:
  """Checks every annotation's fields; unknown images/categories dropped."""
  m = len(anns)
  a = None
  image_id, category_id, xywh = (anns.array('image_id'),
                                 anns.array('category_id'), anns.array('bbox'))
  if image_id is not None and category_id is not None and xywh is not None:
    crowd = anns.array('iscrowd')
    if crowd is None:  # Missing (0), or booleans.
      crowd = anns.values('iscrowd')
      try:
        crowd = (np.array([c is not MISSING and bool(c) for c in crowd])
                 if set(crowd) <= {0, 1, True, False, MISSING} else None)
      except TypeError:  # Unhashable values.
        crowd = None
    elif ((crowd != 0) & (crowd != 1)).any():
      crowd = None
    if crowd is not None:
      a = _Annotations(image_id=image_id, category_id=category_id,
                       xywh=xywh, crowd=np.asarray(crowd, bool).reshape(m),
                       ids=anns.array('id'))
  if a is None:  # Something is off: find it (or accept ints given as x.0).
    a = _read_annotations_one_by_one(anns, ann_file)
  if a.ids is None:
    a.ids = anns.values('id')
  a.image, known_image = _lookup(table.ids, a.image_id)
  cpos, known_cat = _lookup(np.asarray(cat_ids, np.int64), a.category_id)
  a.ok = known_image & known_cat
  a.unknown_cat = known_image & ~known_cat
  a.cls = np.where(a.ok, cpos + 1, 0)
  for j in np.flatnonzero(~a.ok):
    where = (f'annotations[{j}] (annotation id {_ann_id(a, j)}, image_id '
             f'{a.image_id[j]})')
    if not known_image[j]:
      stats.add('annotation_unknown_image', example=f'{ann_file}: {where}: '
                'field image_id names no image of the file')
    else:
      stats.add('box_unknown_category', example=f'{ann_file}: {where}: field '
                f'category_id {a.category_id[j]} is not in categories')
  return a


def _lookup(keys: np.ndarray, values: np.ndarray):
  """``(index into keys, found)`` of each value; keys distinct, any order."""
  if not len(keys):
    return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
  order = np.argsort(keys, kind='stable')
  pos = np.minimum(np.searchsorted(keys[order], values), len(keys) - 1)
  found = keys[order][pos] == values
  return np.where(found, order[pos], 0), found


def _ann_id(a: _Annotations, j: int):
  return coco_gt_lib.ann_id(a.ids, j)


def _read_annotations_one_by_one(anns: Columns,
                                 ann_file: str) -> _Annotations:
  """Per-annotation checks: raises on the first bad one, naming it."""
  m = len(anns)
  cols = {f: anns.values(f) for f in ('image_id', 'category_id', 'bbox',
                                      'iscrowd')}
  a = _Annotations(image_id=np.zeros(m, np.int64),
                   category_id=np.zeros(m, np.int64),
                   xywh=np.zeros((m, 4)), crowd=np.zeros(m, bool),
                   ids=anns.values('id'))
  for j in range(m):
    where = f'annotations[{j}] (annotation id {_ann_id(a, j)})'
    iid = _need_value(cols['image_id'][j], 'image_id', where,
                      numbers.Integral, ann_file)
    where = f'annotations[{j}] (annotation id {_ann_id(a, j)}, image_id {iid})'
    cid = _need_value(cols['category_id'][j], 'category_id', where,
                      numbers.Integral, ann_file)
    bb = _need_value(cols['bbox'][j], 'bbox', where, (list, tuple), ann_file)
    if len(bb) != 4:
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}')
    try:
      a.xywh[j] = [np.nan if v is None else float(v) for v in bb]
    except (TypeError, ValueError):
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}') from None
    crowd = cols['iscrowd'][j]
    crowd = 0 if crowd is MISSING else crowd
    if crowd not in (0, 1, True, False):
      raise DataError(f'{ann_file}: {where}: field "iscrowd" must be 0 or 1, '
                      f'got {crowd!r}')
    for arr, v, key in ((a.image_id, iid, 'image_id'),
                        (a.category_id, cid, 'category_id')):
      if not -2**63 <= v < 2**63:
        raise DataError(f'{ann_file}: {where}: field {key!r} out of range')
      arr[j] = v
    a.crowd[j] = bool(crowd)
  return a


def _records(t: _ImageTable, a: _Annotations, ann_file: str,
             stats: DropStats, dropped: dict) -> list[Record]:
  """Sanitised boxes (vectorised over all annotations) grouped by image;
  the boxes left out go to ``dropped`` with their reason."""
  def where_of(sub):
    def f(k):
      j = sub[k]
      return (f'{ann_file}: annotation id {_ann_id(a, j)}, image_id '
              f'{t.ids[a.image[j]]} ({t.paths[a.image[j]]})')
    return f

  sel = np.flatnonzero(a.ok)
  sub_boxes = box_ops.xywh_to_xyxy(a.xywh[sel])  # sanitize_boxes clips it.
  keep, reasons = records_lib.sanitize_boxes(
      sub_boxes, t.heights[a.image[sel]], t.widths[a.image[sel]], stats,
      where_of(sel), with_reasons=True)
  crowd_sel = a.crowd[sel]
  reasons[keep & crowd_sel] = 'box_crowd'
  for k in np.flatnonzero(reasons != ''):
    j = sel[k]
    box = sub_boxes[k] if keep[k] else box_ops.xywh_to_xyxy(a.xywh[j:j + 1])
    records_lib.add_dropped(dropped, t.ids[a.image[j]], box, [a.cls[j]],
                            [reasons[k]])
  for j in np.flatnonzero(a.unknown_cat):
    records_lib.add_dropped(dropped, t.ids[a.image[j]],
                            box_ops.xywh_to_xyxy(a.xywh[j:j + 1]), [0],
                            ['box_unknown_category'])
  n_crowd = int((keep & crowd_sel).sum())
  if n_crowd:
    stats.add('box_crowd', n_crowd, example=f'{ann_file}: {n_crowd} iscrowd '
              'boxes kept out of the training targets (kept for evaluation)',
              level=logging.INFO)
  n = len(t.ids)
  crowd_counts = np.bincount(a.image[sel][keep & crowd_sel], minlength=n)
  use = keep & ~crowd_sel
  per_boxes, per_cls = records_lib.group_boxes(
      a.image[sel][use], n, sub_boxes[use].astype(np.float32),
      a.cls[sel][use].astype(np.int32))
  ids, heights, widths = (t.ids.tolist(), t.heights.tolist(),
                          t.widths.tolist())
  records = [
      Record(image_id=ids[i], path=t.paths[i], index=None,
             height=heights[i], width=widths[i],
             boxes=per_boxes[i].reshape(-1, 4), classes=per_cls[i],
             difficult=np.zeros(len(per_cls[i]), bool))
      for i in range(n)]
  records_lib.count_image_stats(records, stats, crowd_counts)
  return records


def coco_paths(root: str, split: str) -> tuple[str, str]:
  """(annotation json, image folder) of one COCO split under ``root``."""
  ann = os.path.join(root, 'annotations', f'instances_{split}.json')
  return ann, os.path.join(root, _IMAGE_DIR.get(split, split))


def build_coco_source(data_config, split: str) -> records_lib.DetectionSource:
  """COCO-format source of ``split`` (``'a+b'`` joins splits) under root."""
  parts = [s for s in split.split('+') if s]
  if not parts:
    raise ValueError(f'empty COCO split {split!r}')
  sources = []
  for part in parts:
    ann, img_dir = coco_paths(data_config.root, part)
    sources.append(read_coco(
        ann, img_dir, name=f'{data_config.name}:{part} ({ann})',
        exif_transpose=bool(data_config.get('exif_transpose', True)),
        verify_images=str(data_config.get('verify_images', 'exists'))))
  return records_lib.combine_sources(sources, f'{data_config.name}:{split}')
