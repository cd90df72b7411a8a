"""Datasets by name: ``config.data`` -> the reader of its dataset.

``data.name`` picks the reader: ``'coco'`` (the COCO layout under ``root``,
or any json + image folder named by ``train_json`` / ``val_json``),
``'shapes'`` (the synthetic set, generated under ``root`` on first use, then
read as COCO), ``'voc'`` (a ``VOCdevkit`` or a single VOC-style folder),
``'tfds'``, or a name registered from Python (``catalog.register_dataset``).
:func:`default_data_config` documents every ``config.data`` key.
"""

from __future__ import annotations

import os

import ml_collections

from frcnn_jax.data import catalog
from frcnn_jax.data import coco
from frcnn_jax.data import shapes
from frcnn_jax.data import tfds
from frcnn_jax.data import voc
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DetectionSource


def named_coco_files(data_config, split: str) -> tuple[str, str] | None:
  """``(json, image folder)`` that ``data.<train|val>_json`` names for
  ``split`` (when it is ``data.train_split`` / ``data.val_split``), else None.

  The image folder is ``data.<train|val>_images``, or the json's folder.
  """
  for which in ('train', 'val'):
    ann = data_config.get(f'{which}_json', '')
    if ann and split == data_config.get(f'{which}_split'):
      return ann, data_config.get(f'{which}_images', '') or os.path.dirname(ann)
  return None


def _coco_source(data_config, split: str) -> DetectionSource:
  files = named_coco_files(data_config, split)
  if files is None:
    return coco.build_coco_source(data_config, split)
  ann, image_dir = files
  return coco.read_coco(
      ann, image_dir, name=f'coco:{split} ({ann})',
      exif_transpose=bool(data_config.get('exif_transpose', True)),
      verify_images=str(data_config.get('verify_images', 'exists')))


def _shapes_source(data_config, split: str, *,
                   generate: bool = True) -> DetectionSource:
  seed = int(data_config.shapes.seed)
  if generate:
    shapes.ensure_shapes_dataset(data_config.root, data_config.shapes,
                                 seed=seed)
  elif not shapes.has_shapes_dataset(data_config.root, data_config.shapes,
                                     seed=seed):
    raise DataError(
        f'data.root={data_config.root} holds no synthetic shapes dataset of '
        'this config (data.shapes, seed); only training writes one. Name the '
        'folder the model was trained with (--config.data.root=...), or '
        'leave out --config to use the config recorded in the workdir.')
  return coco.build_coco_source(data_config, split)


READERS = {
    'coco': _coco_source,
    'shapes': _shapes_source,
    'voc': voc.build_voc_source,
    'tfds': tfds.build_tfds_source,
}


def build_source(data_config, split: str, *,
                 generate: bool = True) -> DetectionSource:
  """Builds the ``DetectionSource`` of ``split`` from ``config.data``.

  ``data_config.name`` picks the reader: ``'coco'`` (``root`` holds
  ``annotations/instances_<split>.json`` and ``<split>/``, unless
  ``train_json`` / ``val_json`` name the json of ``train_split`` /
  ``val_split``), ``'shapes'`` (the synthetic dataset, generated under
  ``root`` on first use, then read by the COCO reader), ``'voc'`` (``root``
  is the ``VOCdevkit`` folder, split e.g. ``'2007_trainval+2012_trainval'``,
  or a single VOC-style folder, split e.g. ``'trainval'``), ``'tfds'``
  (``tfds_name`` prepared in ``tfds_data_dir`` in array_record format), or a
  dataset registered with ``catalog.register_dataset``.

  Args:
    data_config: ``config.data``.
    split: the split to read.
    generate: the synthetic dataset may be written under ``data.root``
      (training); False (evaluation) raises ``DataError`` instead when it is
      not there, so that nothing is written where the user did not say.
  """
  if data_config.name == 'shapes':
    return _shapes_source(data_config, split, generate=generate)
  reader = READERS.get(data_config.name)
  if reader is None:
    return catalog.build_registered_source(data_config, split)
  return reader(data_config, split)


def known_names() -> list[str]:
  """Every valid ``data.name``: the readers and the registered datasets."""
  return sorted(READERS) + catalog.registered_datasets()


def default_data_config() -> ml_collections.ConfigDict:
  """``config.data`` with documented defaults (the synthetic dataset).

  Keys:
    name: ``'shapes'`` | ``'coco'`` | ``'voc'`` | ``'tfds'`` | a dataset
      registered with ``frcnn_jax.register_dataset``.
    root: dataset folder. COCO: holds ``annotations/instances_<split>.json``
      and ``<split>/``; VOC: the ``VOCdevkit`` folder, or one folder holding
      ``Annotations/``, ``ImageSets/Main/`` and ``JPEGImages/``; shapes: where
      the synthetic set is written on first use. Paths are made absolute
      when a config is loaded (``frcnn_jax.paths``).
    train_json, train_images: COCO-format json and image folder of
      ``train_split`` anywhere (``''`` = the ``root`` layout; images default
      to the json's folder). ``val_json``, ``val_images``: the same for
      ``val_split``.
    class_names: VOC: the class names in training order; ``()`` = the 20
      VOC classes in a ``VOCdevkit``, or every name found in a single
      folder's ``Annotations/*.xml``, sorted. (COCO: the json's categories.)
    train_split, val_split: COCO ``'train2017'``/``'val2017'`` (``+`` joins
      splits); VOC ``'2007_trainval'``, ``'2007_test'``,
      ``'2007_trainval+2012_trainval'``; TFDS ``'train'``/``'validation'``;
      shapes ``'train'``/``'val'``.
    tfds_name, tfds_data_dir: TFDS dataset (``'coco/2017'``, ``'voc/2007'``)
      prepared in array_record format in ``tfds_data_dir`` (``''`` = TFDS's
      default folder).
    scale, max_size: resize so the short side is ``scale`` and, when
      ``max_size > 0``, the long side at most ``max_size`` (py-faster-rcnn /
      Detectron). ``max_size = 0``: no cap, the seed's effective rule (its
      cap is commented out; training images are bounded by the crop to
      ``w / h`` in [0.5, 2]).
    resize: ``'pil'`` (uint8 bilinear, antialiased when shrinking),
      ``'cv2'`` (the seed's float32 OpenCV ``INTER_LINEAR``; batches carry
      float32 images) or ``'torchvision'`` (torchvision's detection resize:
      ``min(scale / short, max_size / long)``, floor sizes, torch's bilinear
      without antialiasing, float32 images; the FPN configs).
    buckets: ``(H, W)`` canvases, multiples of 16; an image goes to the
      smallest one that holds it; a batch holds one bucket. Must hold every
      training image (checked when a loader is built); an evaluation image
      no bucket holds gets its own canvas (64-pixel multiples).
    max_num_box: ground-truth boxes per image (20 VOC, 50 COCO); more are
      dropped, counted and logged.
    flip: random horizontal flip in training.
    crop_extreme_ratios: the seed's crop of images with ``w / h`` outside
      ``[0.5, 2]`` (training only).
    skip_empty: training skips images without boxes (else: negatives).
      Evaluation always uses every image.
    use_difficult: train on VOC ``difficult`` boxes too.
    exif_transpose: apply the JPEG EXIF orientation; annotations refer to
      the image as displayed.
    verify_images: when a source is built: ``'exists'`` (every file exists),
      ``'header'`` (+ header and size match the annotation), ``'full'``
      (+ every image decodes), ``'none'``.
    num_workers: grain worker processes (0 = in the main process).
    num_threads: threads per process loading batches.
    shapes: the synthetic dataset (see ``shapes.default_shapes_config``).
  """
  c = ml_collections.ConfigDict()
  c.name = 'shapes'
  c.root = 'data/shapes'
  c.train_split = 'train'
  c.val_split = 'val'
  c.train_json = ''
  c.train_images = ''
  c.val_json = ''
  c.val_images = ''
  c.class_names = ()
  c.tfds_name = ''
  c.tfds_data_dir = ''
  c.scale = 600
  c.max_size = 1000
  c.resize = 'pil'
  c.buckets = ((608, 1008), (1008, 608))
  c.max_num_box = 20
  c.flip = True
  c.crop_extreme_ratios = True
  c.skip_empty = True
  c.use_difficult = False
  c.exif_transpose = True
  c.verify_images = 'exists'
  c.num_workers = 0
  c.num_threads = 2
  c.shapes = ml_collections.ConfigDict(shapes.default_shapes_config())
  return c
