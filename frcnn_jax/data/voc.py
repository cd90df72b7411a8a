"""Pascal VOC detection datasets (VOC2007, VOC2012, and their unions).

Layout: ``data.root`` is the ``VOCdevkit`` folder::

  VOC2007/ImageSets/Main/<set>.txt   image names, one per line
  VOC2007/Annotations/<name>.xml
  VOC2007/JPEGImages/<name>.jpg
  VOC2012/...                         the same

Splits are ``<year>_<set>`` joined with ``+``: ``'2007_trainval'``,
``'2007_test'``, ``'2007_trainval+2012_trainval'``.

Coordinates: VOC's 1-based pixel indices become 0-based inclusive pixels in
float (``x1 = xmin - 1``, ``x2 = xmax - 1``), never unsigned integers (the
seed's uint16 wraps a ``0 - 1`` to 65535, a known NaN source).
``difficult`` is kept per box: training drops difficult boxes unless
``data.use_difficult``; ``coco_gt()`` marks them ``iscrowd=1`` so that
``COCOeval`` ignores detections on them, as VOC evaluation does.

Image ids: the numeric form of the image name (``000005`` -> 5,
``2008_000008`` -> 2008000008) when all names of the split give distinct ids
below 2**31, else 0..N-1 in split order (logged).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET

import numpy as np

from frcnn_jax.data import class_names
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record

log = logging.getLogger(__name__)

VOC_CLASSES = class_names.VOC_CLASSES


def _text(node, path, xml_path, where):
  el = node.find(path)
  if el is None or el.text is None or not el.text.strip():
    raise DataError(f'{xml_path}: {where}: missing field {path!r}')
  return el.text.strip()


def _number(node, path, xml_path, where):
  t = _text(node, path, xml_path, where)
  try:
    return float(t)
  except ValueError:
    raise DataError(f'{xml_path}: {where}: field {path!r} is not a number: '
                    f'{t!r}') from None


def parse_voc_xml(xml_path: str, where: str):
  """One annotation file -> (height|None, width|None, objects).

  objects: list of (class name, [xmin, ymin, xmax, ymax] as in the file,
  difficult).

  Raises:
    DataError: malformed xml, a missing or non-numeric field.
  """
  try:
    root = ET.parse(xml_path).getroot()
  except FileNotFoundError:
    raise DataError(f'{xml_path}: {where}: annotation file not found') from None
  except ET.ParseError as e:
    raise DataError(f'{xml_path}: {where}: malformed XML: {e}') from None
  height = width = None
  size = root.find('size')
  if size is not None and size.find('width') is not None:
    width = _number(size, 'width', xml_path, where)
    height = _number(size, 'height', xml_path, where)
    if not (width >= 1 and height >= 1):  # 0 or NaN: read the image instead.
      width = height = None
  objects = []
  for k, obj in enumerate(root.findall('object')):
    owhere = f'{where}, object {k}'
    cname = _text(obj, 'name', xml_path, owhere).lower()
    bb = obj.find('bndbox')
    if bb is None:
      raise DataError(f'{xml_path}: {owhere}: missing field "bndbox"')
    coords = [_number(bb, f, xml_path, owhere + ' bndbox')
              for f in ('xmin', 'ymin', 'xmax', 'ymax')]
    diff = obj.find('difficult')
    difficult = False
    if diff is not None and diff.text is not None and diff.text.strip():
      try:
        difficult = bool(int(float(diff.text.strip())))
      except ValueError:
        raise DataError(f'{xml_path}: {owhere}: field "difficult" is not 0/1: '
                        f'{diff.text!r}') from None
    objects.append((cname, coords, difficult))
  return height, width, objects


def _image_ids(names):
  ids = []
  for n in names:
    digits = n.replace('_', '')
    if not digits.isdigit():
      break
    ids.append(int(digits))
  if (len(ids) == len(names) and len(set(ids)) == len(ids) and
      all(0 <= i <= records_lib.INT32_MAX for i in ids)):
    return ids
  log.info('VOC image names are not all distinct numbers: ids are 0..N-1 in '
           'split order')
  return list(range(len(names)))


def read_voc(root: str, split: str, *, exif_transpose: bool = True,
             verify_images: str = 'exists',
             class_names=VOC_CLASSES) -> records_lib.DetectionSource:
  """Reads VOC split(s) ``'2007_trainval'`` / ``'2007_trainval+2012_trainval'``.

  Raises:
    DataError: a missing ImageSets file, malformed xml, a missing field (the
      message names the file, the image and the field).
    ImageLoadError: missing image files.
  """
  entries = []  # (name, year-folder)
  for part in [p for p in split.split('+') if p]:
    year, sep, image_set = part.partition('_')
    if not sep or not year.isdigit():
      raise ValueError(
          f"VOC split must look like '2007_trainval', got {part!r}")
    folder = os.path.join(root, f'VOC{year}')
    set_file = os.path.join(folder, 'ImageSets', 'Main', f'{image_set}.txt')
    try:
      with open(set_file) as f:
        names = [ln.split()[0] for ln in f if ln.strip()]
    except FileNotFoundError:
      raise DataError(f'{set_file}: VOC image set not found (data.root must '
                      'be the VOCdevkit folder holding VOC<year>/)') from None
    entries.extend((n, folder) for n in names)
  ids = _image_ids([n for n, _ in entries])
  contiguous = {c: i + 1 for i, c in enumerate(class_names)}
  stats = DropStats()
  reader = images_lib.ImageReader(exif_transpose=exif_transpose)
  records, dropped = [], {}
  for (name, folder), iid in zip(entries, ids):
    xml_path = os.path.join(folder, 'Annotations', f'{name}.xml')
    img_path = os.path.join(folder, 'JPEGImages', f'{name}.jpg')
    where = f'image {name} (image_id {iid})'
    height, width, objects = parse_voc_xml(xml_path, where)
    if height is None:
      h, w, _ = images_lib.image_size(img_path, exif_transpose=exif_transpose,
                                      where=f'{img_path} (image_id {iid})')
      height, width = h, w
      stats.add('size_from_image', example=f'{xml_path}: {where}: no usable '
                'size field, size read from the image', level=logging.INFO)
    boxes, classes, difficult, obj_index = [], [], [], []
    for k, (cname, c, diff) in enumerate(objects):
      if cname not in contiguous:
        stats.add('box_unknown_category', example=f'{xml_path}: {where}, '
                  f'object {k}: field name {cname!r} is not a class')
        records_lib.add_dropped(dropped, iid, [[v - 1 for v in c]], [0],
                                ['box_unknown_category'])
        continue
      boxes.append([c[0] - 1, c[1] - 1, c[2] - 1, c[3] - 1])
      classes.append(contiguous[cname])
      difficult.append(diff)
      obj_index.append(k)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keep, reasons = records_lib.sanitize_boxes(
        boxes, int(height), int(width), stats,
        lambda k: f'{xml_path}: {where}, object {obj_index[k]}',
        with_reasons=True)
    records_lib.add_dropped(dropped, iid, boxes, classes, reasons)
    records.append(Record(
        image_id=iid, path=img_path, index=None, height=int(height),
        width=int(width), boxes=boxes[keep].astype(np.float32),
        classes=np.asarray(classes, np.int32)[keep],
        difficult=np.asarray(difficult, bool)[keep]))
  records_lib.count_image_stats(records, stats)
  images_lib.check_files(records, verify_images, reader, f'voc:{split}')
  return records_lib.DetectionSource(
      name=f'voc:{split}', records=records, class_names=list(class_names),
      cat_ids=list(range(1, len(class_names) + 1)), reader=reader,
      stats=stats, dropped=dropped)


def build_voc_source(data_config, split: str) -> records_lib.DetectionSource:
  return read_voc(
      data_config.root, split,
      exif_transpose=bool(data_config.get('exif_transpose', True)),
      verify_images=str(data_config.get('verify_images', 'exists')))
