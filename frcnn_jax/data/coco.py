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
``box_crowd``) and stay in ``coco_gt()`` (the json as-is) for ``COCOeval``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import numbers
import os

import numpy as np

from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record
from ops import boxes as box_ops

log = logging.getLogger(__name__)

_IMAGE_DIR = {'minival2014': 'val2014', 'valminusminival2014': 'val2014',
              'val35k2014': 'val2014'}


def load_json(path: str, what: str = 'annotation file') -> dict:
  """Reads a json file; malformed json is a ``DataError`` naming the spot."""
  try:
    with open(path, 'rb') as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise DataError(f'{path}: {what} not found') from e
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: malformed json at line {e.lineno} column '
                    f'{e.colno}: {e.msg}') from e
  except (UnicodeDecodeError, OSError) as e:
    raise DataError(f'{path}: cannot read {what}: {e}') from e


def _need(d, key, where, types, ann_file):
  if not isinstance(d, dict):
    raise DataError(f'{ann_file}: {where}: expected an object, got '
                    f'{type(d).__name__}')
  if key not in d:
    raise DataError(f'{ann_file}: {where}: missing field {key!r}')
  v = d[key]
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
  d = load_json(ann_file)
  name = name or ann_file
  if not isinstance(d, dict):
    raise DataError(f'{ann_file}: top level must be an object with images, '
                    f'annotations, categories')
  images = _need(d, 'images', 'top level', list, ann_file)
  cats = _need(d, 'categories', 'top level', list, ann_file)
  has_annotations = 'annotations' in d
  anns = d.get('annotations', [])
  if not isinstance(anns, list):
    raise DataError(f'{ann_file}: top level: field "annotations" must be a '
                    'list')
  stats = DropStats()
  if not has_annotations:
    log.warning('%s has no "annotations": an image list (like COCO\'s '
                'image_info_test-dev2017.json); it can be evaluated '
                '(detections are written for submission, no AP) but not '
                'trained on', ann_file)
  cat_ids, class_names = _read_categories(cats, ann_file)
  table = _read_images(images, image_dir, ann_file)
  ann = _read_annotations(anns, table, cat_ids, ann_file, stats)
  # After the checks above, so that their messages name the file's own ids.
  complete_annotations(anns, ann_file, stats)
  dropped = {}
  records = _records(table, ann, ann_file, stats, dropped)
  reader = images_lib.ImageReader(exif_transpose=exif_transpose)
  images_lib.check_files(records, verify_images, reader, name)
  return records_lib.DetectionSource(
      name=name, records=records, class_names=class_names, cat_ids=cat_ids,
      reader=reader, stats=stats,
      coco_gt_fn=functools.partial(_coco_gt_from_file, ann_file),
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
  paths: list[str]
  index_of: dict[int, int]


def _read_images(images: list, image_dir: str, ann_file: str) -> _ImageTable:
  t = _ImageTable(ids=np.zeros(len(images), np.int64),
                  heights=np.zeros(len(images), np.int64),
                  widths=np.zeros(len(images), np.int64), paths=[],
                  index_of={})
  for i, im in enumerate(images):
    iid = _need(im, 'id', f'images[{i}]', numbers.Integral, ann_file)
    where = f'images[{i}] (image_id {iid})'
    if not 0 <= iid <= records_lib.INT32_MAX:
      raise DataError(f'{ann_file}: {where}: field "id" must be in '
                      f'[0, 2**31): batches carry int32 image ids')
    if iid in t.index_of:
      raise DataError(f'{ann_file}: {where}: duplicate image id')
    fn = _need(im, 'file_name', where, str, ann_file)
    for key, arr in (('height', t.heights), ('width', t.widths)):
      v = _need(im, key, where, numbers.Real, ann_file)
      if not (np.isfinite(v) and v >= 1 and float(v).is_integer()):
        raise DataError(f'{ann_file}: {where}: field {key!r} must be a '
                        f'positive integer, got {v!r}')
      arr[i] = int(v)
    t.index_of[iid] = i
    t.ids[i] = iid
    t.paths.append(os.path.join(image_dir, fn))
  return t


@dataclasses.dataclass
class _Annotations:
  """The ``annotations`` of a COCO file as arrays (index j = annotations[j])."""
  image: np.ndarray      # int64 [m] index into the image table
  cls: np.ndarray        # int64 [m] contiguous class
  crowd: np.ndarray      # bool [m]
  ok: np.ndarray         # bool [m] known image and category
  unknown_cat: np.ndarray  # bool [m] known image, unknown category
  ids: list              # the file's annotation ids (for messages)
  boxes: np.ndarray      # float64 [m, 4] inclusive corners, unchecked


def _read_annotations(anns: list, table: _ImageTable, cat_ids: list[int],
                      ann_file: str, stats: DropStats) -> _Annotations:
  """Checks every annotation's fields; unknown images/categories dropped."""
  contiguous = {c: i + 1 for i, c in enumerate(cat_ids)}
  a = _Annotations(image=np.zeros(len(anns), np.int64),
                   cls=np.zeros(len(anns), np.int64),
                   crowd=np.zeros(len(anns), bool),
                   ok=np.ones(len(anns), bool),
                   unknown_cat=np.zeros(len(anns), bool), ids=[], boxes=None)
  bboxes = []
  for j, an in enumerate(anns):
    aid = an.get('id', j) if isinstance(an, dict) else j
    a.ids.append(aid)
    where = f'annotations[{j}] (annotation id {aid})'
    iid = _need(an, 'image_id', where, numbers.Integral, ann_file)
    where = f'annotations[{j}] (annotation id {aid}, image_id {iid})'
    cid = _need(an, 'category_id', where, numbers.Integral, ann_file)
    bb = _need(an, 'bbox', where, (list, tuple), ann_file)
    if len(bb) != 4:
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}')
    try:
      bboxes.append([np.nan if v is None else float(v) for v in bb])
    except (TypeError, ValueError):
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}') from None
    crowd = an.get('iscrowd', 0)
    if crowd not in (0, 1, True, False):
      raise DataError(f'{ann_file}: {where}: field "iscrowd" must be 0 or 1, '
                      f'got {crowd!r}')
    if iid not in table.index_of:
      stats.add('annotation_unknown_image', example=f'{ann_file}: {where}: '
                'field image_id names no image of the file')
      a.ok[j] = False
      continue
    if cid not in contiguous:
      stats.add('box_unknown_category', example=f'{ann_file}: {where}: field '
                f'category_id {cid} is not in categories')
      a.ok[j] = False
      a.unknown_cat[j] = True
      a.image[j] = table.index_of[iid]
      continue
    a.image[j] = table.index_of[iid]
    a.cls[j] = contiguous[cid]
    a.crowd[j] = bool(crowd)
  a.boxes = box_ops.xywh_to_xyxy(np.asarray(bboxes, np.float64).reshape(-1, 4))
  return a


def _records(t: _ImageTable, a: _Annotations, ann_file: str,
             stats: DropStats, dropped: dict) -> list[Record]:
  """Sanitised boxes (vectorised over all annotations) grouped by image;
  the boxes left out go to ``dropped`` with their reason."""
  def where_of(sub):
    def f(k):
      j = sub[k]
      return (f'{ann_file}: annotation id {a.ids[j]}, image_id '
              f'{t.ids[a.image[j]]} ({t.paths[a.image[j]]})')
    return f

  sel = np.flatnonzero(a.ok)
  sub_boxes = a.boxes[sel]  # A copy; sanitize_boxes clips it in place.
  keep, reasons = records_lib.sanitize_boxes(
      sub_boxes, t.heights[a.image[sel]], t.widths[a.image[sel]], stats,
      where_of(sel), with_reasons=True)
  crowd_sel = a.crowd[sel]
  reasons[keep & crowd_sel] = 'box_crowd'
  for k in np.flatnonzero(reasons != ''):
    j = sel[k]
    records_lib.add_dropped(dropped, t.ids[a.image[j]],
                            sub_boxes[k] if keep[k] else a.boxes[j],
                            [a.cls[j]], [reasons[k]])
  for j in np.flatnonzero(a.unknown_cat):
    records_lib.add_dropped(dropped, t.ids[a.image[j]], a.boxes[j], [0],
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
  records = [
      Record(image_id=int(t.ids[i]), path=t.paths[i], index=None,
             height=int(t.heights[i]), width=int(t.widths[i]),
             boxes=per_boxes[i].reshape(-1, 4), classes=per_cls[i],
             difficult=np.zeros(len(per_cls[i]), bool))
      for i in range(n)]
  records_lib.count_image_stats(records, stats, crowd_counts)
  return records


def complete_annotations(anns: list, ann_file: str,
                         stats: DropStats | None = None) -> None:
  """Fills in place what COCO tools need and exported files often lack.

  * ``area`` missing -> the box's ``w * h`` (``annotation_area_from_box``);
    ``COCOeval`` uses it for the small / medium / large ranges.
  * ``iscrowd`` missing -> 0 (``annotation_iscrowd_default``).
  * ``id`` missing or repeated -> every annotation renumbered 1..n in file
    order (``annotation_id_missing`` / ``annotation_id_duplicate``).
    ``COCOeval`` matches ground truth to detections by annotation id, so
    repeated ids would silently corrupt the AP; the ids mean nothing outside
    the file (detections refer to images and categories), so renumbering is
    safe, and it is what a user of an exported dataset wants.

  Each reason is counted in ``stats`` and logged once, with the first
  annotation it applies to. Entries that are not objects are left for the
  reader to report.
  """
  missing_area, missing_crowd, missing_id = [], [], []
  seen, dup = set(), []
  for j, a in enumerate(anns):
    if not isinstance(a, dict):
      continue
    if 'id' not in a:
      missing_id.append(j)
    elif a['id'] in seen:
      dup.append(a['id'])
    else:
      seen.add(a['id'])
    if 'area' not in a:
      missing_area.append(j)
      bb = a.get('bbox')
      try:
        a['area'] = float(bb[2]) * float(bb[3])
      except (TypeError, ValueError, IndexError):
        a['area'] = 0.0   # the reader reports the bad box itself
    if 'iscrowd' not in a:
      missing_crowd.append(j)
      a['iscrowd'] = 0
  if missing_id or dup:
    for j, a in enumerate(a for a in anns if isinstance(a, dict)):
      a['id'] = j + 1
  if stats is None:
    return
  for reason, items, what in (
      ('annotation_area_from_box', missing_area,
       'no field "area": computed from the box (w * h)'),
      ('annotation_iscrowd_default', missing_crowd,
       'no field "iscrowd": taken as 0'),
      ('annotation_id_missing', missing_id,
       'no field "id": annotations renumbered 1..n for evaluation'),
  ):
    if items:
      stats.add(reason, len(items), example=(
          f'{ann_file}: annotations[{items[0]}] and {len(items) - 1} more: '
          f'{what}'), level=logging.INFO if reason ==
                'annotation_iscrowd_default' else logging.WARNING)
  if dup:
    stats.add('annotation_id_duplicate', len(dup), example=(
        f'{ann_file}: field "id": {len(dup)} annotation(s) repeat an id '
        f'(first: {sorted(set(dup))[:10]}); COCOeval matches by id, so every '
        f'annotation was renumbered 1..n for evaluation'))


def _coco_gt_from_file(ann_file: str):
  d = load_json(ann_file)
  if isinstance(d.get('annotations'), list):
    complete_annotations(d['annotations'], ann_file)
  return records_lib.coco_from_dict(d)


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
