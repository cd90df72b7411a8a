"""Data: sources (COCO, VOC, TFDS, synthetic shapes) -> fixed-shape batches.

Importing this package has no side effects (no processes, no files, no
flags), so it is safe under grain's spawn start method.

Entry points:
  default_data_config()            the ``config.data`` sub-dict, documented
  build_source(data_config, split) -> DetectionSource
  build_train_loader(data_config, *, seed, global_batch_size, ...)
  build_eval_loader(data_config, split, *, batch_size, ...)
  ensure_shapes_dataset(root, shapes_config, seed)
"""

from __future__ import annotations

import ml_collections

from frcnn_jax.data.loader import build_eval_loader
from frcnn_jax.data.loader import build_train_loader
from frcnn_jax.data.loader import EvalLoader
from frcnn_jax.data.loader import TrainLoader
from frcnn_jax.data.shapes import default_shapes_config
from frcnn_jax.data.shapes import ensure_shapes_dataset
from frcnn_jax.data.source import build_source
from frcnn_jax.data.source import DataError
from frcnn_jax.data.source import DetectionSource
from frcnn_jax.data.source import DropStats
from frcnn_jax.data.source import ImageLoadError
from frcnn_jax.data.source import Record


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
  c.shapes = ml_collections.ConfigDict(default_shapes_config())
  return c


__all__ = [
    'build_eval_loader', 'build_source', 'build_train_loader', 'DataError',
    'default_data_config', 'default_shapes_config', 'DetectionSource',
    'DropStats', 'ensure_shapes_dataset', 'EvalLoader', 'ImageLoadError',
    'Record', 'TrainLoader',
]
