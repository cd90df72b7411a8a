"""One image's detections, and the images a user may pass.

:class:`Detections` is what ``frcnn_jax.Detector`` and an exported model
(``frcnn_jax.exported``) return for an image: boxes in the pixels of the
image as given, scores, class ids and names, with ``draw()`` and
``to_coco()``. :func:`as_rgb_image` turns a path, bytes, PIL image or array
into the uint8 RGB array the models read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from frcnn_jax import vis
from frcnn_jax.data import images as images_lib
from ops import boxes as box_ops


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


def from_output(out: Mapping[str, np.ndarray], j: int,
                class_names: Sequence[str], image: np.ndarray | None = None,
                source: str | None = None) -> Detections:
  """Slot ``j`` of a batch of model outputs (``boxes [B, Dt, 4]`` in
  original pixels, ``scores``, ``classes``, ``valid``), best first."""
  v = np.asarray(out["valid"][j], bool)
  scores = np.asarray(out["scores"][j], np.float32)[v]
  order = np.argsort(-scores, kind="stable")
  return Detections(
      boxes=np.asarray(out["boxes"][j], np.float32)[v][order],
      scores=scores[order],
      class_ids=np.asarray(out["classes"][j], np.int32)[v][order],
      class_names=tuple(class_names), image=image, source=source)
