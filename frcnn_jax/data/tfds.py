"""TFDS detection datasets already prepared in array_record format.

Read with ``tfds.data_source`` (random access, no TensorFlow needed; nothing is
downloaded: ``download=False``). Prepare the dataset once where TensorFlow is
installed (``tfds build coco/2017 --file_format=array_record``) or copy the
prepared folder ``<tfds_data_dir>/<name>/<config>/<version>/`` here.

Expected features (those of ``coco/2017`` and ``voc/2007``): ``image``,
``objects/bbox`` (``BBoxFeature``: normalized ``[ymin, xmin, ymax, xmax]``),
``objects/label`` (``ClassLabel``; contiguous class = label + 1, and the
"dataset category id" used by ``coco_gt()`` is the same number),
optional ``objects/is_crowd`` (kept out of training, ``iscrowd=1`` in
``coco_gt()``), ``objects/is_difficult`` (as VOC), ``image/id`` (else the
numeric ``image/filename``, else the example index).

Coordinates: ``x1 = xmin * W``, ``x2 = xmax * W - 1`` (same in y), so a TFDS
``coco/2017`` box equals the box the COCO reader gives for the same
annotation. TFDS's VOC builder stores VOC's 1-based ``xmin / W``, so for
``voc/*`` the left/top edge is ``xmin * W - 1`` and coordinates are rounded to
whole pixels: the boxes equal those of ``voc.py``.

Building the source reads every example once (image bytes are not decoded:
only the header gives the size): about a minute per 10^5 images from local
disk.
"""

from __future__ import annotations

import concurrent.futures
import logging

import numpy as np

from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record

log = logging.getLogger(__name__)


def _open(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if split not in builder.info.splits:
      raise DataError(f'TFDS {name} in {data_dir}: no split {split!r} (have '
                      f'{sorted(builder.info.splits)})')
    ds = tfds.data_source(name, split=split, data_dir=data_dir,
                          download=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f'TFDS {name} split {split!r} in data_dir {data_dir!r}: cannot open '
        f'the prepared array_record dataset ({type(e).__name__}: {e}). It '
        'must be prepared beforehand (nothing is downloaded here).') from e
  return builder, ds


class TfdsImageReader(images_lib.ImageReader):
  """Reads the encoded image of a record from the TFDS data source."""

  def __init__(self, data_source, exif_transpose: bool = True):
    super().__init__(exif_transpose)
    self.data_source = data_source

  def read_bytes(self, record: Record) -> bytes:
    try:
      return self.data_source[record.index]['image']
    except Exception as e:  # pylint: disable=broad-except
      raise records_lib.ImageLoadError(
          f'{record.name}: cannot read the example (field image): '
          f'{type(e).__name__}: {e}') from e


def _as_str(v) -> str:
  return v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)


def read_tfds(name: str, split: str, data_dir: str | None = None, *,
              exif_transpose: bool = True, verify_images: str = 'none',
              one_based: bool | None = None,
              num_threads: int = 8) -> records_lib.DetectionSource:
  """Builds a ``DetectionSource`` from a prepared TFDS detection dataset.

  Args:
    name: TFDS name, e.g. ``'coco/2017'``.
    split: TFDS split, e.g. ``'train'``.
    data_dir: folder holding the prepared dataset (None: TFDS's default).
    exif_transpose: apply the EXIF orientation of the encoded images.
    verify_images: ``'full'`` decodes every image now; else headers only.
    one_based: the normalized boxes hold VOC's 1-based ``xmin / W`` (TFDS's
      VOC builder); None: True for ``voc/*`` names.
    num_threads: threads reading the examples.
  """
  builder, ds = _open(name, split, data_dir)
  feats = builder.info.features
  label_names = _label_names(feats, name)
  if one_based is None:
    one_based = name.split('/')[0].split(':')[0] == 'voc'
  what = f'tfds:{name}:{split}'
  stats = DropStats()
  reader = TfdsImageReader(ds, exif_transpose)

  def scan(i):
    ex = ds[i]
    where = f'TFDS {name} {split} example {i}'
    h, w, _ = images_lib.image_size(ex['image'], exif_transpose=exif_transpose,
                                    where=where)
    return i, ex, h, w

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    scanned = list(pool.map(scan, range(len(ds))))
  fnames = [_as_str(ex.get('image/filename', '')) for _, ex, _, _ in scanned]
  ids = _image_ids(scanned, fnames, 'image/id' in feats, what)
  records, crowd, dropped = [], {}, {}
  for (i, ex, h, w), iid, fname in zip(scanned, ids, fnames):
    where = f'TFDS {name} {split} example {i} ({fname}, image_id {iid})'
    rec, crowd_boxes = _example_record(ex['objects'], i, iid, h, w,
                                       len(label_names), one_based, where,
                                       stats, dropped)
    records.append(rec)
    if crowd_boxes is not None:
      crowd[iid] = crowd_boxes
  records_lib.count_image_stats(
      records, stats, np.asarray([len(crowd.get(r.image_id, ((),))[0])
                                  for r in records]))
  if verify_images == 'full':
    images_lib.check_files(records, 'full', reader, what)
  class_names = [records_lib.BACKGROUND] + label_names
  cat_ids = list(range(len(class_names)))

  def coco_gt():
    return records_lib.coco_from_dict(records_lib.records_to_coco_dict(
        records, class_names, cat_ids, crowd=crowd))

  return records_lib.DetectionSource(
      name=what, records=records, class_names=class_names, cat_ids=cat_ids,
      reader=reader, stats=stats, coco_gt_fn=coco_gt, dropped=dropped)


def _label_names(feats, name: str) -> list[str]:
  """The dataset's class names; checks the features a detector needs."""
  if 'objects' not in feats or 'image' not in feats:
    raise DataError(f'TFDS {name}: expected features "image" and "objects" '
                    f'(bbox, label), got {list(feats.keys())}')
  obj_feats = feats['objects'].feature if hasattr(
      feats['objects'], 'feature') else feats['objects']
  for key in ('bbox', 'label'):
    if key not in obj_feats:
      raise DataError(f'TFDS {name}: missing feature objects/{key}')
  return list(obj_feats['label'].names)


def _image_ids(scanned, fnames: list[str], has_id: bool,
               what: str) -> list[int]:
  """Image ids: image/id, else numeric file names, else example indices."""
  n = len(scanned)
  if has_id:
    ids = [int(ex['image/id']) for _, ex, _, _ in scanned]
  else:
    stems = [f.rsplit('/', 1)[-1].split('.')[0].replace('_', '')
             for f in fnames]
    ids = ([int(s) for s in stems] if all(s.isdigit() for s in stems)
           else list(range(n)))
  if (len(set(ids)) != n or
      not all(0 <= i <= records_lib.INT32_MAX for i in ids)):
    log.info('%s: image ids not distinct int32: using example indices', what)
    ids = list(range(n))
  return ids


def _example_record(objs, index: int, iid: int, h: int, w: int,
                    num_labels: int, one_based: bool, where: str,
                    stats: DropStats, dropped: dict):
  """(Record, crowd (boxes, classes) or None) of one example's objects;
  the boxes left out go to ``dropped`` with their reason.

  Normalized ``[ymin, xmin, ymax, xmax]`` -> inclusive pixels
  ``(xmin * W, ymin * H, xmax * W - 1, ymax * H - 1)``; VOC's 1-based
  coordinates are shifted back by one.
  """
  bb = np.asarray(objs['bbox'], np.float64).reshape(-1, 4)
  labels = np.asarray(objs['label'], np.int64).reshape(-1)
  nobj = len(bb)
  is_crowd = np.asarray(objs.get('is_crowd', np.zeros(nobj)), bool)
  difficult = np.asarray(objs.get('is_difficult', np.zeros(nobj)), bool)
  with np.errstate(invalid='ignore'):
    boxes = np.stack([bb[:, 1] * w, bb[:, 0] * h,
                      bb[:, 3] * w - 1, bb[:, 2] * h - 1], axis=1)
    if one_based:
      boxes[:, :2] -= 1
      boxes = np.round(boxes)
  known = (labels >= 0) & (labels < num_labels)
  for k in np.flatnonzero(~known):
    stats.add('box_unknown_category', example=f'{where}, object {k}: field '
              f'objects/label {labels[k]} outside 0..{num_labels - 1}')
  original = boxes.copy()
  keep, reasons = records_lib.sanitize_boxes(
      boxes, h, w, stats, lambda k: f'{where}, object {k}', with_reasons=True)
  reasons[~known] = 'box_unknown_category'
  keep &= known
  reasons[keep & is_crowd] = 'box_crowd'
  records_lib.add_dropped(dropped, iid, np.where(keep[:, None], boxes,
                                                 original),
                          np.where(known, labels + 1, 0), reasons)
  crowd = None
  n_crowd = int((keep & is_crowd).sum())
  if n_crowd:
    stats.add('box_crowd', n_crowd, level=logging.DEBUG,
              example=f'{where}: {n_crowd} crowd boxes kept out of training')
    crowd = (boxes[keep & is_crowd].astype(np.float32),
             (labels[keep & is_crowd] + 1).astype(np.int32))
  use = keep & ~is_crowd
  return Record(image_id=iid, path=None, index=index, height=h, width=w,
                boxes=boxes[use].astype(np.float32),
                classes=(labels[use] + 1).astype(np.int32),
                difficult=difficult[use]), crowd


def build_tfds_source(data_config, split: str) -> records_lib.DetectionSource:
  if not data_config.get('tfds_name'):
    raise ValueError("data.tfds_name must name a prepared TFDS dataset, e.g. "
                     "'coco/2017' or 'voc/2007'")
  return read_tfds(
      data_config.tfds_name, split, data_config.get('tfds_data_dir') or None,
      exif_transpose=bool(data_config.get('exif_transpose', True)),
      verify_images=str(data_config.get('verify_images', 'none')))
