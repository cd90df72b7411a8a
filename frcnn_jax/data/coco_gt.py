"""The evaluation ground truth of a COCO file, kept as arrays.

``coco.read_coco`` reads an annotation file once. What ``COCOeval('bbox')``
reads of it is kept here as numpy arrays (:class:`GroundTruth`): image ids,
sizes and file names; per annotation its id, image id, category id,
``[x, y, w, h]`` box, area and crowd flag, all as the file gives them
(boxes and areas as the decoder's float64, so the values are identical).
About 60 bytes per annotation: 50 MB for COCO train2017, 2 MB for val2017,
held instead of the json's objects (GBs) or a second read of the file.
Segmentations are not kept: box evaluation does not read them.

:func:`to_coco` builds the pycocotools ``COCO`` object from it when
evaluation asks (``DetectionSource.coco_gt()``), with the same ids, boxes,
areas and crowd flags as the file, hence the same COCOeval numbers.
Completion of what COCO tools need and exported files often lack happens
once, in :func:`ground_truth`, counted in the source's ``DropStats``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from frcnn_jax.data import records as records_lib
from frcnn_jax.data.json_columns import Columns
from frcnn_jax.data.json_columns import MISSING
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats


@dataclasses.dataclass
class GroundTruth:
  """What ``COCOeval('bbox')`` reads of a COCO file, as arrays."""
  image_ids: np.ndarray     # int64 [n]
  heights: np.ndarray       # int64 [n]
  widths: np.ndarray        # int64 [n]
  file_names: list[str]
  categories: list[dict]    # the file's entries
  ann_ids: np.ndarray       # int64 [m] (renumbered 1..m when needed)
  ann_image_ids: np.ndarray  # int64 [m]
  ann_category_ids: np.ndarray  # int64 [m]
  xywh: np.ndarray          # float64 [m, 4] as in the file
  area: np.ndarray          # float64 [m] (w * h where absent)
  iscrowd: np.ndarray       # bool [m]
  has_annotations: bool     # False: the file has no "annotations" field


def ann_id(ids, j: int):
  """The id of annotation ``j`` for messages (its index when absent)."""
  v = ids[j]
  return j if v is MISSING or not isinstance(v, (int, np.integer, float,
                                                 str)) else v


def _only(values: list, *types) -> bool:
  return set(map(type, values)) <= set(types)


def ground_truth(anns: Columns, *, ann_ids, image_id: np.ndarray,
                 category_id: np.ndarray, xywh: np.ndarray,
                 crowd: np.ndarray, image_ids: np.ndarray,
                 heights: np.ndarray, widths: np.ndarray,
                 file_names: list[str], categories: list, ann_file: str,
                 stats: DropStats, has_annotations: bool) -> GroundTruth:
  """The evaluation ground truth, completed as COCO tools need it.

  * ``area`` missing -> the box's ``w * h`` (``annotation_area_from_box``;
    0 when that is not finite); ``COCOeval`` uses it for the small /
    medium / large ranges. A present area must be a number.
  * ``iscrowd`` missing -> 0 (``annotation_iscrowd_default``).
  * ``id`` missing or repeated -> every annotation renumbered 1..n in file
    order (``annotation_id_missing`` / ``annotation_id_duplicate``).
    ``COCOeval`` matches ground truth to detections by annotation id, so
    repeated ids would silently corrupt the AP; the ids mean nothing outside
    the file (detections refer to images and categories), so renumbering is
    safe, and it is what a user of an exported dataset wants.

  Each reason is counted in ``stats`` and logged once, with the first
  annotation it applies to.

  Args:
    anns: the annotations' columns (``area``, ``iscrowd`` are read here).
    ann_ids: the ``id`` column: an int64 array, or the values (``MISSING``
      where absent).
    image_id, category_id, xywh, crowd: checked annotation fields (arrays).
    image_ids, heights, widths, file_names: the checked image table.
    categories: the file's ``categories`` entries.
    ann_file: for messages.
    stats: where completions are counted.
    has_annotations: the file has an ``annotations`` field.

  Raises:
    DataError: an ``area`` that is not a number (naming the annotation).
  """
  m = len(anns)
  missing_area = []
  area = anns.array('area')
  if area is None:
    area_col = anns.values('area')
    if not _only(area_col, int, float, type(MISSING)):
      j = next(j for j, v in enumerate(area_col)
               if type(v) not in (int, float, type(MISSING)))
      raise DataError(f'{ann_file}: annotations[{j}] (annotation id '
                      f'{ann_id(ann_ids, j)}, image_id {image_id[j]}): field '
                      f'"area" must be a number, got {area_col[j]!r}')
    missing_area = [j for j, v in enumerate(area_col) if v is MISSING]
    with np.errstate(invalid='ignore', over='ignore'):
      from_box = xywh[:, 2] * xywh[:, 3]
    from_box[~np.isfinite(from_box)] = 0.0
    for j in missing_area:
      area_col[j] = from_box[j]
    try:
      area = np.array(area_col, np.float64).reshape(m)
    except OverflowError:
      raise DataError(f'{ann_file}: field "area": a value is out of the '
                      'float64 range') from None
    del area_col
  missing_crowd = []
  if anns.array('iscrowd') is None:
    missing_crowd = [j for j, v in enumerate(anns.values('iscrowd'))
                     if v is MISSING]
  missing_id, dup, ids = [], [], None
  if isinstance(ann_ids, np.ndarray):  # All ints.
    if len(np.unique(ann_ids)) == m:
      ids = ann_ids
    else:
      dup = _repeated(ann_ids.tolist())
  else:
    missing_id = [j for j, i in enumerate(ann_ids) if i is MISSING]
    dup = _repeated([i for i in ann_ids if i is not MISSING])
  if ids is None:  # Missing, repeated or not all ints: renumber.
    ids = np.arange(1, m + 1, dtype=np.int64)
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
        f'(first: {_sorted(set(dup))[:10]}); COCOeval matches by id, so '
        f'every annotation was renumbered 1..n for evaluation'))
  return GroundTruth(
      image_ids=image_ids, heights=heights, widths=widths,
      file_names=file_names, categories=list(categories), ann_ids=ids,
      ann_image_ids=image_id, ann_category_ids=category_id, xywh=xywh,
      area=area, iscrowd=crowd, has_annotations=has_annotations)


def _repeated(ids: list) -> list:
  """The entries of ``ids`` equal to an earlier one (in order)."""
  seen, dup = set(), []
  for i in ids:
    try:
      if i in seen:
        dup.append(i)
      seen.add(i)
    except TypeError:  # Unhashable (a list as id): can't match anything.
      dup.append(repr(i))
  return dup


def _sorted(values) -> list:
  try:
    return sorted(values)
  except TypeError:  # Mixed types.
    return sorted(values, key=repr)


def to_coco(gt: GroundTruth):
  """A pycocotools ``COCO`` of the ground truth (what the file says)."""
  images = [{'id': i, 'width': w, 'height': h, 'file_name': f}
            for i, w, h, f in zip(gt.image_ids.tolist(), gt.widths.tolist(),
                                  gt.heights.tolist(), gt.file_names)]
  anns = [{'id': i, 'image_id': im, 'category_id': c, 'bbox': b, 'area': ar,
           'iscrowd': int(cr)}
          for i, im, c, b, ar, cr in zip(
              gt.ann_ids.tolist(), gt.ann_image_ids.tolist(),
              gt.ann_category_ids.tolist(), gt.xywh.tolist(),
              gt.area.tolist(), gt.iscrowd.tolist())]
  d = {'images': images, 'annotations': anns, 'categories': gt.categories}
  if not gt.has_annotations:
    del d['annotations']  # An image list, as the file.
  return records_lib.coco_from_dict(d)
