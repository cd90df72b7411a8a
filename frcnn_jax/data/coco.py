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

import functools
import json
import logging
import numbers
import os

import numpy as np

from frcnn_jax.data import source as source_lib
from frcnn_jax.data.source import DataError, DropStats, Record

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
              verify_images: str = 'exists') -> source_lib.DetectionSource:
  """Reads a COCO instances json into a ``DetectionSource``.

  Args:
    ann_file: ``instances_<split>.json``.
    image_dir: folder the ``file_name`` s are relative to.
    name: description for messages (default: the json path).
    exif_transpose: apply EXIF orientation when decoding (annotations refer
      to the displayed image).
    verify_images: ``'none'``, ``'exists'``, ``'header'`` or ``'full'``; see
      ``source.check_files``.

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

  # Categories -> contiguous ids, sorted by category id.
  cat_list = []
  for i, c in enumerate(cats):
    cid = _need(c, 'id', f'categories[{i}]', numbers.Integral, ann_file)
    cname = _need(c, 'name', f'categories[{i}] (id {cid})', str, ann_file)
    cat_list.append((int(cid), cname))
  cat_list.sort()
  cat_ids = [c for c, _ in cat_list]
  if len(set(cat_ids)) != len(cat_ids):
    raise DataError(f'{ann_file}: categories: duplicate category ids')
  contiguous = {c: i + 1 for i, c in enumerate(cat_ids)}

  # Images.
  index_of = {}
  heights = np.zeros(len(images), np.int64)
  widths = np.zeros(len(images), np.int64)
  ids = np.zeros(len(images), np.int64)
  paths = []
  for i, im in enumerate(images):
    iid = _need(im, 'id', f'images[{i}]', numbers.Integral, ann_file)
    where = f'images[{i}] (image_id {iid})'
    if not 0 <= iid <= source_lib.INT32_MAX:
      raise DataError(f'{ann_file}: {where}: field "id" must be in '
                      f'[0, 2**31): batches carry int32 image ids')
    if iid in index_of:
      raise DataError(f'{ann_file}: {where}: duplicate image id')
    fn = _need(im, 'file_name', where, str, ann_file)
    for key, arr in (('height', heights), ('width', widths)):
      v = _need(im, key, where, numbers.Real, ann_file)
      if not (np.isfinite(v) and v >= 1 and float(v).is_integer()):
        raise DataError(f'{ann_file}: {where}: field {key!r} must be a '
                        f'positive integer, got {v!r}')
      arr[i] = int(v)
    index_of[iid] = i
    ids[i] = iid
    paths.append(os.path.join(image_dir, fn))

  # Annotations: fields, then numbers (vectorized over all of them).
  a_img = np.zeros(len(anns), np.int64)
  a_cls = np.zeros(len(anns), np.int64)
  a_crowd = np.zeros(len(anns), bool)
  a_ok = np.ones(len(anns), bool)
  a_id = []
  bboxes = []
  for j, a in enumerate(anns):
    aid = a.get('id', j) if isinstance(a, dict) else j
    a_id.append(aid)
    where = f'annotations[{j}] (annotation id {aid})'
    iid = _need(a, 'image_id', where, numbers.Integral, ann_file)
    where = f'annotations[{j}] (annotation id {aid}, image_id {iid})'
    cid = _need(a, 'category_id', where, numbers.Integral, ann_file)
    bb = _need(a, 'bbox', where, (list, tuple), ann_file)
    if len(bb) != 4:
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}')
    try:
      bboxes.append([np.nan if v is None else float(v) for v in bb])
    except (TypeError, ValueError):
      raise DataError(f'{ann_file}: {where}: field "bbox" must have 4 '
                      f'numbers [x, y, w, h], got {bb!r}') from None
    crowd = a.get('iscrowd', 0)
    if crowd not in (0, 1, True, False):
      raise DataError(f'{ann_file}: {where}: field "iscrowd" must be 0 or 1, '
                      f'got {crowd!r}')
    if iid not in index_of:
      stats.add('annotation_unknown_image', example=f'{ann_file}: {where}: '
                'field image_id names no image of the file')
      a_ok[j] = False
      continue
    if cid not in contiguous:
      stats.add('box_unknown_category', example=f'{ann_file}: {where}: field '
                f'category_id {cid} is not in categories')
      a_ok[j] = False
      continue
    a_img[j] = index_of[iid]
    a_cls[j] = contiguous[cid]
    a_crowd[j] = bool(crowd)

  # After the checks above, so that their messages name the file's own ids.
  complete_annotations(anns, ann_file, stats)
  xywh = np.asarray(bboxes, np.float64).reshape(-1, 4)
  with np.errstate(invalid='ignore', over='ignore'):
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], 1)

  def where_of(sub):
    def f(k):
      j = sub[k]
      iid = ids[a_img[j]]
      return (f'{ann_file}: annotation id {a_id[j]}, image_id {iid} '
              f'({paths[a_img[j]]})')
    return f

  sel = np.flatnonzero(a_ok)
  sub_boxes = boxes[sel]  # A copy; sanitize_boxes clips it in place.
  keep = source_lib.sanitize_boxes(sub_boxes, heights[a_img[sel]],
                                   widths[a_img[sel]], stats, where_of(sel))
  crowd_sel = a_crowd[sel]
  n_crowd = int((keep & crowd_sel).sum())
  if n_crowd:
    stats.add('box_crowd', n_crowd, example=f'{ann_file}: {n_crowd} iscrowd '
              'boxes kept out of the training targets (kept for evaluation)',
              level=logging.INFO)
  crowd_counts = np.bincount(a_img[sel][keep & crowd_sel],
                             minlength=len(images))
  use = keep & ~crowd_sel
  per_boxes, per_cls = source_lib.group_boxes(
      a_img[sel][use], len(images), sub_boxes[use].astype(np.float32),
      a_cls[sel][use].astype(np.int32))

  records = [
      Record(image_id=int(ids[i]), path=paths[i], index=None,
             height=int(heights[i]), width=int(widths[i]),
             boxes=per_boxes[i].reshape(-1, 4), classes=per_cls[i],
             difficult=np.zeros(len(per_cls[i]), bool))
      for i in range(len(images))]
  source_lib.count_image_stats(records, stats, crowd_counts)
  reader = source_lib.ImageReader(exif_transpose=exif_transpose)
  source_lib.check_files(records, verify_images, reader, name)
  class_names = [n for _, n in cat_list]
  return source_lib.DetectionSource(
      name=name, records=records, class_names=class_names, cat_ids=cat_ids,
      reader=reader, stats=stats,
      coco_gt_fn=functools.partial(_coco_gt_from_file, ann_file),
      has_annotations=has_annotations)


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
  return source_lib.coco_from_dict(d)


def coco_paths(root: str, split: str) -> tuple[str, str]:
  """(annotation json, image folder) of one COCO split under ``root``."""
  ann = os.path.join(root, 'annotations', f'instances_{split}.json')
  return ann, os.path.join(root, _IMAGE_DIR.get(split, split))


def build_coco_source(data_config, split: str) -> source_lib.DetectionSource:
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
  return source_lib.combine_sources(sources, f'{data_config.name}:{split}')
