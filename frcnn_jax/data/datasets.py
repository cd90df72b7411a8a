"""Datasets by name: ``config.data`` -> the reader of its dataset.

``data.name`` picks the reader: ``'coco'`` and ``'shapes'`` (the synthetic
set, generated under ``root`` on first use, then read as COCO), ``'voc'``,
``'tfds'``. :func:`default_data_config` documents every ``config.data`` key.
"""

from __future__ import annotations

import ml_collections

from frcnn_jax.data import coco
from frcnn_jax.data import shapes
from frcnn_jax.data import tfds
from frcnn_jax.data import voc
from frcnn_jax.data.records import DetectionSource


def _shapes_source(data_config, split: str) -> DetectionSource:
  shapes.ensure_shapes_dataset(data_config.root, data_config.shapes,
                               seed=int(data_config.shapes.seed))
  return coco.build_coco_source(data_config, split)


READERS = {
    'coco': coco.build_coco_source,
    'shapes': _shapes_source,
    'voc': voc.build_voc_source,
    'tfds': tfds.build_tfds_source,
}


def build_source(data_config, split: str) -> DetectionSource:
  """Builds the ``DetectionSource`` of ``split`` from ``config.data``.

  ``data_config.name`` picks the reader: ``'coco'`` (``root`` holds
  ``annotations/instances_<split>.json`` and ``<split>/``), ``'shapes'`` (the
  synthetic dataset, generated under ``root`` on first use, then read by the
  COCO reader), ``'voc'`` (``root`` is the ``VOCdevkit`` folder, split e.g.
  ``'2007_trainval+2012_trainval'``), ``'tfds'`` (``tfds_name`` prepared in
  ``tfds_data_dir`` in array_record format).
  """
  reader = READERS.get(data_config.name)
  if reader is None:
    raise ValueError(f'data.name must be one of {sorted(READERS)}, got '
                     f'{data_config.name!r}')
  return reader(data_config, split)


def default_data_config() -> ml_collections.ConfigDict:
  """``config.data`` with documented defaults (the synthetic dataset).

  Keys:
    name: ``'shapes'`` | ``'coco'`` | ``'voc'`` | ``'tfds'``.
    root: dataset folder. COCO: holds ``annotations/instances_<split>.json``
      and ``<split>/``; VOC: the ``VOCdevkit`` folder; shapes: where the
      synthetic set is written on first use.
    train_split, val_split: COCO ``'train2017'``/``'val2017'`` (``+`` joins
      splits); VOC ``'2007_trainval'``, ``'2007_test'``,
      ``'2007_trainval+2012_trainval'``; TFDS ``'train'``/``'validation'``;
      shapes ``'train'``/``'val'``.
    tfds_name, tfds_data_dir: TFDS dataset (``'coco/2017'``, ``'voc/2007'``)
      prepared in array_record format in ``tfds_data_dir`` (``''`` = TFDS's
      default folder).
    scale, max_size: resize so the short side is ``scale`` and the long side
      at most ``max_size`` (the seed: 600/1000; 800/1200 with ``--ls``).
    resize: ``'seed'`` (the seed's rounding, PIL bilinear, uint8 images) or
      ``'torchvision'`` (torchvision's detection resize: floor sizes, torch's
      bilinear without antialiasing, float32 images; the FPN configs).
    buckets: ``(H, W)`` canvases, multiples of 16; an image goes to the
      smallest one that holds it; a batch holds one bucket. Must hold every
      resized image (checked when a loader is built).
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
  c.tfds_name = ''
  c.tfds_data_dir = ''
  c.scale = 600
  c.max_size = 1000
  c.resize = 'seed'
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
