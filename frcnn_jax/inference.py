"""The Python API: a trained detector in three lines.

  from frcnn_jax import Detector
  det = Detector.load("runs/shapes")   # a train workdir or converted folder
  result = det("photo.jpg")            # a path, PIL image or HxWx3 array
  result.boxes, result.scores, result.class_ids, result.labels

``Detector.load`` reads the config the folder recorded (a training run's
checkpoint meta / ``config.json``; for a converted faster-rcnn.pytorch folder
the matching built-in config, ``config_lib.converted_detector_config``) and
restores the newest checkpoint (``eval_lib.load_for_inference``, which also
checks the config against the checkpoint). ``Detector.from_config`` builds a
fresh model (random, or ``config.init_from``'s weights).

Calling it on one image returns one :class:`Detections`, on a list a list.
Images are resized as evaluation resizes them (``data.scale`` /
``max_size``), grouped by canvas bucket and run ``test.batch_size`` at a
time (``data.loader.image_batches``) through one ``jax.jit`` of the
detector's ``predict`` (``eval_lib.Predictor``, which demo.py runs too) over
a mesh of every device JAX has: one compilation per bucket, reused by every
later call.
Boxes come back in the pixels of the image as given (inclusive ``(x1, y1,
x2, y2)``, the package's convention), sorted by score.

This module is on the inference side of the package: it never imports
training code (``tests/test_layers.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from frcnn_jax import config_lib
from frcnn_jax import detections as detections_lib
from frcnn_jax import eval_lib
from frcnn_jax import parallel
from frcnn_jax import paths
from frcnn_jax import weights
from frcnn_jax.data import class_names as class_names_lib
from frcnn_jax.data import shapes as shapes_lib
from frcnn_jax.detections import Detections
from frcnn_jax.modeling import detector as detector_lib

log = logging.getLogger(__name__)

__all__ = ["Detections", "Detector"]

BACKGROUND = class_names_lib.BACKGROUND


@contextlib.contextmanager
def _quiet(logger_name: str):
  """Only errors from ``logger_name`` while the block runs."""
  logger = logging.getLogger(logger_name)
  level = logger.level
  logger.setLevel(max(level, logging.ERROR))
  try:
    yield
  finally:
    logger.setLevel(level)


def _resolve_config(config, overrides: Mapping[str, Any] | None
                    ) -> ml_collections.ConfigDict:
  if isinstance(config, (str, os.PathLike)):
    return config_lib.load_config(os.fspath(config), overrides)
  config = paths.resolve_paths(config)
  for key, value in (overrides or {}).items():
    config_lib.set_override(config, key, value)
  return config


class Detector(eval_lib.Predictor):
  """A detector ready to run on images (see the module docstring).

  Attributes (from ``eval_lib.Predictor``, whose ``predict_batch`` it
  keeps):
    config: its config (test-time settings: ``config.test``; resizing:
      ``config.data.scale``, ``max_size``, ``buckets``).
    class_names: ``K`` names, background first.
    step: the checkpoint step it was restored from (None: fresh).
    path: the folder it was loaded from (None: fresh).
    batch_size: images per batch (``test.batch_size`` rounded up to a
      multiple of the device count).
    mesh: the ``data`` mesh over every device.
    graphdef, params, rest: the model as ``nnx.split`` splits it (what
      ``frcnn_jax.exporting`` serialises).
  """

  # -- construction --------------------------------------------------------

  @classmethod
  def load(cls, path: str | os.PathLike, *, config=None,
           overrides: Mapping[str, Any] | None = None,
           step: int | None = None) -> 'Detector':
    """Restores a train workdir or a converted faster-rcnn.pytorch folder.

    Args:
      path: the workdir (``runs/shapes``), its ``checkpoints`` folder, or a
        folder of ``python -m frcnn_jax.weights convert``.
      config: None (default): the config the folder recorded; or a config
        name / file / ``ConfigDict`` (it must build the same network).
      overrides: ``{'test.score_thresh': 0.05, 'test.batch_size': 16}``.
      step: a checkpoint step; default the newest readable one.

    Raises:
      FileNotFoundError: no checkpoint in ``path``.
      ValueError: no recorded config and none given; a config that does not
        fit the checkpoint (``ConfigMismatchError``, naming the overrides).
    """
    path = os.path.abspath(os.fspath(path))
    if config is None:
      config = config_lib.recorded_config(path)
      if config is None:
        raise ValueError(
            f"{path} records no config (no checkpoint meta with a config, "
            f"no config.json, not a converted detector): pass "
            f"config='<built-in name or file>'")
    config = _resolve_config(config, overrides)
    with _quiet("absl"):   # orbax's notes about read-only checkpoint folders
      return cls.restore(config, path, step=step)

  @classmethod
  def from_config(cls, config="shapes", *,
                  class_names: Sequence[str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> 'Detector':
    """A fresh detector: random weights, or ``config.init_from``'s.

    Args:
      config: a config name / file / ``ConfigDict``.
      class_names: the object classes (background excluded); default: the
        synthetic dataset's classes for ``data.name='shapes'``.
      overrides: config overrides, as in :meth:`load`.
    """
    config = _resolve_config(config, overrides)
    if class_names is None:
      if config.data.name != "shapes":
        raise ValueError("class_names=[...] is needed for a fresh detector "
                         f"of data.name={config.data.name!r}")
      class_names = tuple(config.data.shapes.get(
          "classes", shapes_lib.default_shapes_config()["classes"]))
    names = [BACKGROUND] + [c for c in class_names if c != BACKGROUND]
    model = detector_lib.build_detector(config, len(names))
    weights.initialize_model(model, config)
    graphdef, params, rest = detector_lib.split_model(model)
    mesh = parallel.create_mesh(config.mesh.num_devices)
    params, rest = jax.device_put((params, rest), parallel.replicated(mesh))
    return cls(config, graphdef, params, rest, names, mesh=mesh)

  # -- running ---------------------------------------------------------------

  def __call__(self, images, *, score_threshold: float = 0.0,
               keep_images: bool = True):
    """Detections of one image (a :class:`Detections`) or of a list (a list).

    Args:
      images: a path, encoded bytes, PIL image or ``[h, w, 3]`` array, or a
        list / tuple of them (see ``detections.as_rgb_image``).
      score_threshold: drop detections scoring less (the model keeps its
        ``test.max_detections`` best above ``test.score_thresh``).
      keep_images: keep each decoded image in its result (for ``draw()``).
    """
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    exif = bool(self.config.data.get("exif_transpose", True))
    decoded = [detections_lib.as_rgb_image(x, exif_transpose=exif)
               for x in items]
    results: list[Detections | None] = [None] * len(decoded)
    for i, out, j in self.predict_images(
        (i, im) for i, (im, _) in enumerate(decoded)):
      image, source = decoded[i]
      results[i] = detections_lib.from_output(
          out, j, self.class_names, image if keep_images else None,
          source).above(score_threshold)
    return results[0] if single else results

  def __repr__(self) -> str:
    where = self.path or "fresh"
    return (f"Detector({where}, step {self.step}, {self.config.backbone.name},"
            f" {len(self.class_names) - 1} classes, {self.mesh.size} "
            f"device(s))")
