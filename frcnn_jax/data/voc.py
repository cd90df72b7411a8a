"""Pascal VOC detection datasets (VOC2007, VOC2012, their unions, your own).

Layout: ``data.root`` is the ``VOCdevkit`` folder::

  VOC2007/ImageSets/Main/<set>.txt   image names, one per line
  VOC2007/Annotations/<name>.xml
  VOC2007/JPEGImages/<name>.jpg
  VOC2012/...                         the same

Splits are ``<year>_<set>`` joined with ``+``: ``'2007_trainval'``,
``'2007_test'``, ``'2007_trainval+2012_trainval'``.

Your own data in VOC's layout (what labelImg and CVAT export): ``data.root``
is one folder holding ``Annotations/``, ``ImageSets/Main/<set>.txt`` and
``JPEGImages/`` (``.jpg``, or another image extension), and the split is the
set's name (``'trainval'``, ``'test'``). The classes are ``data.class_names``
when given, else the 20 VOC classes in a ``VOCdevkit`` and every object name
found in the folder's ``Annotations/*.xml`` (sorted) in a single folder, so
that every split of one folder has the same classes.

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


_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                     '.webp', '.JPG', '.JPEG', '.PNG')


def is_single_folder(root: str) -> bool:
  """``root`` is one VOC-style folder (not a ``VOCdevkit``)."""
  return os.path.isdir(os.path.join(root, 'ImageSets', 'Main'))


def _split_folder(root: str, part: str) -> tuple[str, str]:
  """(folder holding Annotations/ ImageSets/ JPEGImages/, image set)."""
  if is_single_folder(root):
    return root, part
  year, sep, image_set = part.partition('_')
  if not sep or not year.isdigit():
    raise ValueError(
        f"VOC split must look like '2007_trainval' (data.root a VOCdevkit) "
        f"or name a set of {root}/ImageSets/Main (a single VOC-style "
        f"folder), got {part!r}")
  return os.path.join(root, f'VOC{year}'), image_set


def folder_class_names(root: str) -> tuple[str, ...]:
  """Every object name in ``root/Annotations/*.xml``, sorted (lower case)."""
  ann_dir = os.path.join(root, 'Annotations')
  names = set()
  for f in sorted(os.listdir(ann_dir)) if os.path.isdir(ann_dir) else []:
    if f.endswith('.xml'):
      path = os.path.join(ann_dir, f)
      names.update(c for c, _, _ in parse_voc_xml(path, f'file {f}')[2])
  if not names:
    raise DataError(f'{ann_dir}: no objects in any annotation file: cannot '
                    'tell the classes (set data.class_names)')
  return tuple(sorted(names))


def _image_path(folder: str, name: str, single: bool) -> str:
  path = os.path.join(folder, 'JPEGImages', f'{name}.jpg')
  if single and not os.path.exists(path):
    for ext in _IMAGE_EXTENSIONS:
      other = os.path.join(folder, 'JPEGImages', name + ext)
      if os.path.exists(other):
        return other
  return path


def read_voc(root: str, split: str, *, exif_transpose: bool = True,
             verify_images: str = 'exists',
             class_names=None) -> records_lib.DetectionSource:
  """Reads VOC split(s) ``'2007_trainval'`` / ``'2007_trainval+2012_trainval'``
  of a VOCdevkit, or ``'trainval'`` of a single VOC-style folder.

  Args:
    class_names: the classes in training order (background excluded);
      None: the 20 VOC classes (VOCdevkit) or the names found in the
      folder's annotations (single folder).

  Raises:
    DataError: a missing ImageSets file, malformed xml, a missing field (the
      message names the file, the image and the field).
    ImageLoadError: missing image files.
  """
  single = is_single_folder(root)
  if class_names is None:
    class_names = folder_class_names(root) if single else VOC_CLASSES
  class_names = tuple(c.lower() for c in class_names)
  entries = []  # (name, year-folder)
  for part in [p for p in split.split('+') if p]:
    folder, image_set = _split_folder(root, part)
    set_file = os.path.join(folder, 'ImageSets', 'Main', f'{image_set}.txt')
    try:
      with open(set_file) as f:
        names = [ln.split()[0] for ln in f if ln.strip()]
    except FileNotFoundError:
      raise DataError(f'{set_file}: VOC image set not found (data.root must '
                      'be the VOCdevkit folder holding VOC<year>/, or one '
                      'folder holding Annotations/, ImageSets/Main/, '
                      'JPEGImages/)') from None
    entries.extend((n, folder) for n in names)
  ids = _image_ids([n for n, _ in entries])
  contiguous = {c: i + 1 for i, c in enumerate(class_names)}
  stats = DropStats()
  reader = images_lib.ImageReader(exif_transpose=exif_transpose)
  records, dropped = [], {}
  for (name, folder), iid in zip(entries, ids):
    xml_path = os.path.join(folder, 'Annotations', f'{name}.xml')
    img_path = _image_path(folder, name, single)
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
  names = tuple(data_config.get('class_names', ()) or ()) or None
  return read_voc(
      data_config.root, split,
      exif_transpose=bool(data_config.get('exif_transpose', True)),
      verify_images=str(data_config.get('verify_images', 'exists')),
      class_names=names)
