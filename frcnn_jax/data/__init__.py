"""Data: sources (COCO, VOC, TFDS, synthetic shapes) -> fixed-shape batches.

Importing this package has no side effects (no processes, no files, no
flags), so it is safe under grain's spawn start method.

The modules, bottom up: ``class_names`` and ``images`` (decoding, file
checks), ``records`` (Record, DropStats, DetectionSource, box sanitising;
imports no reader), the readers ``coco``, ``voc``, ``tfds``, ``shapes``,
``datasets`` (name -> reader, ``default_data_config``), ``transforms``
(resize, crop, flip, pad) and ``loader`` (grain pipelines). This package
re-exports the entry points:

  default_data_config()            the ``config.data`` sub-dict, documented
  build_source(data_config, split) -> DetectionSource
  build_train_loader(data_config, *, seed, global_batch_size, ...)
  build_eval_loader(data_config, split, *, batch_size, ...)
  ensure_shapes_dataset(root, shapes_config, seed)
"""

from __future__ import annotations

from frcnn_jax.data.datasets import build_source
from frcnn_jax.data.datasets import default_data_config
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import ImageLoadError
from frcnn_jax.data.loader import build_eval_loader
from frcnn_jax.data.loader import build_train_loader
from frcnn_jax.data.loader import EvalLoader
from frcnn_jax.data.loader import TrainLoader
from frcnn_jax.data.records import DetectionSource
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record
from frcnn_jax.data.shapes import default_shapes_config
from frcnn_jax.data.shapes import ensure_shapes_dataset

__all__ = [
    'build_eval_loader', 'build_source', 'build_train_loader', 'DataError',
    'default_data_config', 'default_shapes_config', 'DetectionSource',
    'DropStats', 'ensure_shapes_dataset', 'EvalLoader', 'ImageLoadError',
    'Record', 'TrainLoader',
]
