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
detector's ``predict`` (``eval_lib.make_predict_fn``) over a mesh of every
device JAX has: one compilation per bucket, reused by every later call.
Boxes come back in the pixels of the image as given (inclusive ``(x1, y1,
x2, y2)``, the package's convention), sorted by score.

This module is on the inference side of the package: it never imports
training code (``tests/test_layers.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from frcnn_jax import config_lib
from frcnn_jax import eval_lib
from frcnn_jax import parallel
from frcnn_jax import paths
from frcnn_jax import vis
from frcnn_jax import weights
from frcnn_jax.data import class_names as class_names_lib
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import loader as loader_lib
from frcnn_jax.data import shapes as shapes_lib
from frcnn_jax.modeling import detector as detector_lib
from ops import boxes as box_ops

log = logging.getLogger(__name__)

BACKGROUND = class_names_lib.BACKGROUND


@dataclasses.dataclass
class Detections:
  """The detections of one image, best first.

  Attributes:
    boxes: float32 ``[n, 4]`` ``(x1, y1, x2, y2)`` in the pixels of the image
      as given, inclusive (``w = x2 - x1 + 1``).
    scores: float32 ``[n]``, descending.
    class_ids: int32 ``[n]`` in ``1..K-1`` (0 is background).
    class_names: the model's ``K`` class names, background first.
    image: the image as the model saw it before resizing (uint8 ``[h, w,
      3]`` RGB), for :meth:`draw`.
    source: the file it was read from, if any.
  """
  boxes: np.ndarray
  scores: np.ndarray
  class_ids: np.ndarray
  class_names: tuple[str, ...]
  image: np.ndarray | None = None
  source: str | None = None

  def __len__(self) -> int:
    return len(self.scores)

  @property
  def labels(self) -> list[str]:
    """The class name of each detection."""
    return [self.class_names[int(c)] for c in self.class_ids]

  def __getitem__(self, index) -> 'Detections':
    """The detections selected by a mask, slice or index array."""
    if isinstance(index, (int, np.integer)):
      index = [int(index)]
    return dataclasses.replace(self, boxes=self.boxes[index],
                               scores=self.scores[index],
                               class_ids=self.class_ids[index])

  def above(self, score_threshold: float) -> 'Detections':
    """The detections scoring at least ``score_threshold``."""
    return self[self.scores >= score_threshold]

  def draw(self, score_threshold: float = 0.5,
           image: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[h, w, 3]``: the image with the boxes scoring at least
    ``score_threshold``, their class names and scores drawn
    (``vis.save_png(path, result.draw())`` writes it)."""
    image = self.image if image is None else image
    if image is None:
      raise ValueError("no image kept with these detections: pass image=")
    return vis.draw_detections(image, self.boxes, self.class_ids, self.scores,
                               self.class_names,
                               score_threshold=score_threshold)

  def to_coco(self, image_id: int = 0,
              category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO results: ``[{image_id, category_id, bbox: [x, y, w, h], score}]``
    with ``w = x2 - x1 + 1`` (the inverse of the COCO reader).

    Args:
      image_id: the COCO image id to write.
      category_ids: the dataset category id of each class id (``K``
        entries, index 0 unused); default: the class id itself.
    """
    xywh = box_ops.xyxy_to_xywh(self.boxes).reshape(-1, 4)
    out = []
    for b, s, c in zip(xywh, self.scores, self.class_ids):
      cat = int(category_ids[int(c)]) if category_ids is not None else int(c)
      out.append({"image_id": int(image_id), "category_id": cat,
                  "bbox": [round(float(v), 2) for v in b],
                  "score": round(float(s), 5)})
    return out

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: ``{'boxes', 'scores', 'class_ids', 'labels', 'source'}``."""
    return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(),
            "class_ids": self.class_ids.tolist(), "labels": self.labels,
            "source": self.source}


def as_rgb_image(image, *, exif_transpose: bool = True
                 ) -> tuple[np.ndarray, str | None]:
  """``(uint8 [h, w, 3] RGB, source path or None)`` of what a user passes.

  Accepts a path (``str`` / ``os.PathLike``; EXIF orientation applied),
  encoded bytes, a PIL image (any mode) or an array ``[h, w]``, ``[h, w,
  3]`` or ``[h, w, 4]`` (alpha dropped) of uint8, or of floats in 0..255.
  """
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    return images_lib.decode_image(path, exif_transpose=exif_transpose,
                                   where=path), path
  if isinstance(image, (bytes, bytearray)):
    return images_lib.decode_image(bytes(image), exif_transpose=exif_transpose,
                                   where="<bytes>"), None
  if isinstance(image, Image.Image):
    return images_lib.pil_to_rgb(image), None
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or min(arr.shape[:2]) < 1:
    raise ValueError(f"an image must be a path, PIL image or array [h, w, 3] "
                     f"(RGB), got an array of shape {arr.shape}")
  arr = arr[..., :3]
  if arr.dtype != np.uint8:
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
      raise ValueError(f"image arrays must be uint8 or 0..255 numbers, got "
                       f"{arr.dtype}")
    arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(
        np.uint8)
  return np.ascontiguousarray(arr), None


def _resolve_config(config, overrides: Mapping[str, Any] | None
                    ) -> ml_collections.ConfigDict:
  if isinstance(config, (str, os.PathLike)):
    return config_lib.load_config(os.fspath(config), overrides)
  config = paths.resolve_paths(config)
  for key, value in (overrides or {}).items():
    config_lib.set_override(config, key, value)
  return config


class Detector:
  """A detector ready to run on images (see the module docstring).

  Attributes:
    config: its config (test-time settings: ``config.test``; resizing:
      ``config.data.scale``, ``max_size``, ``buckets``).
    class_names: ``K`` names, background first.
    step: the checkpoint step it was restored from (None: fresh).
    path: the folder it was loaded from (None: fresh).
    batch_size: images per batch (``test.batch_size`` rounded up to a
      multiple of the device count).
    mesh: the ``data`` mesh over every device.
    graphdef, params, rest: the model split as ``nnx.split`` (what
      ``frcnn_jax.exporting`` serialises).
  """

  def __init__(self, config: ml_collections.ConfigDict, graphdef, params,
               rest, class_names: Sequence[str], *, mesh,
               step: int | None = None, path: str | None = None):
    self.config = config
    self.graphdef, self.params, self.rest = graphdef, params, rest
    self.class_names = tuple(class_names)
    self.mesh = mesh
    self.step = step
    self.path = path
    n = mesh.size
    self.batch_size = -(-int(config.test.batch_size) // n) * n
    self._predict = eval_lib.make_predict_fn(graphdef, mesh)

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
    mesh = parallel.create_mesh(config.mesh.num_devices)
    graphdef, params, rest, step, names = eval_lib.load_for_inference(
        config, path, step=step, mesh=mesh)
    return cls(config, graphdef, params, rest, names, mesh=mesh, step=step,
               path=path)

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
        list / tuple of them (see :func:`as_rgb_image`).
      score_threshold: drop detections scoring less (the model keeps its
        ``test.max_detections`` best above ``test.score_thresh``).
      keep_images: keep each decoded image in its result (for ``draw()``).
    """
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    exif = bool(self.config.data.get("exif_transpose", True))
    decoded = [as_rgb_image(x, exif_transpose=exif) for x in items]
    results: list[Detections | None] = [None] * len(decoded)
    for keys, batch in loader_lib.image_batches(
        [(i, im) for i, (im, _) in enumerate(decoded)], self.config.data,
        self.batch_size):
      out = self.predict_batch(batch)
      for j, i in enumerate(keys):
        image, source = decoded[i]
        results[i] = self._detections(out, j, image if keep_images else None,
                                      source).above(score_threshold)
    return results[0] if single else results

  def predict_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
    """The raw model output of one prepared batch (``image_batches``).

    Returns:
      NumPy ``boxes [B, Dt, 4]`` (original pixels), ``scores``, ``classes``,
      ``valid``, ``image_id`` for the ``B = batch_size`` slots.
    """
    g = parallel.global_batch(
        {k: batch[k] for k in ("image", "im_info", "image_id")}, self.mesh)
    return jax.device_get(self._predict(self.params, self.rest, g["image"],
                                        g["im_info"], g["image_id"]))

  def _detections(self, out: dict, j: int, image, source) -> Detections:
    v = np.asarray(out["valid"][j], bool)
    scores = np.asarray(out["scores"][j], np.float32)[v]
    order = np.argsort(-scores, kind="stable")
    return Detections(
        boxes=np.asarray(out["boxes"][j], np.float32)[v][order],
        scores=scores[order],
        class_ids=np.asarray(out["classes"][j], np.int32)[v][order],
        class_names=self.class_names, image=image, source=source)

  def __repr__(self) -> str:
    where = self.path or "fresh"
    return (f"Detector({where}, step {self.step}, {self.config.backbone.name},"
            f" {len(self.class_names) - 1} classes, {self.mesh.size} "
            f"device(s))")
