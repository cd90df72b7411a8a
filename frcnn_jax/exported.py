"""Runs a folder written by ``python -m frcnn_jax.export`` (no model code).

  from frcnn_jax import load_exported
  det = load_exported("exported/shapes")
  result = det("photo.jpg")          # a Detections, as frcnn_jax.Detector's

Reads ``model.json`` (class names, preprocessing), ``params.npz`` (the
weights, put on the default device once) and, on first use of each canvas
bucket, its ``jax.export`` program. Nothing of flax, orbax, the model
definition or the configs is imported: the programs hold the whole network
and its post-processing (see ``frcnn_jax.exporting`` for their inputs and
outputs). Images are prepared as ``Detector`` prepares them (the same
``data.loader.prepare_image`` and bucket rule), grouped by canvas, and each
group runs as one batch: the programs' batch dimension is symbolic, so any
batch size works; it is rounded up to a power of two (at most the exported
``batch_size``, padding slots being empty canvases) so that few sizes are
ever compiled.
"""

from __future__ import annotations

import collections
import json
import os
import types
from typing import Any

import jax
import numpy as np

from frcnn_jax import detections as detections_lib
from frcnn_jax.data import loader as loader_lib
from frcnn_jax.detections import Detections

FORMAT = "frcnn_jax.exported/1"
MODEL_JSON = "model.json"
PARAMS = "params.npz"


def param_key(i: int) -> str:
  """Name of the ``i``-th weight array in ``params.npz``."""
  return f"p{i:05d}"


class ExportedDetector:
  """An exported detector (see the module docstring).

  Attributes:
    meta: ``model.json``.
    class_names: ``K`` names, background first.
    buckets: the ``(H, W)`` canvases with a program.
  """

  def __init__(self, folder: str):
    self.folder = os.path.abspath(folder)
    path = os.path.join(self.folder, MODEL_JSON)
    try:
      with open(path) as f:
        self.meta = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path} not found: not a folder written by "
                              f"python -m frcnn_jax.export") from None
    if self.meta.get("format") != FORMAT:
      raise ValueError(f"{path}: format {self.meta.get('format')!r}, this "
                       f"reader knows {FORMAT!r}")
    self.class_names = tuple(self.meta["class_names"])
    prep = self.meta["preprocessing"]
    self.buckets = [tuple(int(x) for x in bk) for bk in prep["buckets"]]
    # What loader.prepare_image / canvas_for read of a config.data.
    self._data = types.SimpleNamespace(
        scale=int(prep["scale"]), max_size=int(prep["max_size"]),
        buckets=tuple(self.buckets), resize=str(prep.get("resize", "pil")))
    self._exif = bool(prep.get("exif_transpose", True))
    self.batch_size = max(int(self.meta.get("batch_size", 8)), 1)
    with np.load(os.path.join(self.folder, self.meta["params"])) as z:
      self._params = [jax.device_put(z[param_key(i)])
                      for i in range(int(self.meta["num_params"]))]
    self._programs: dict[tuple[int, int], Any] = {}

  def program(self, canvas: tuple[int, int]):
    """The deserialized ``jax.export.Exported`` of canvas ``(H, W)``."""
    if canvas not in self._programs:
      name = self.meta["programs"].get(f"{canvas[0]}x{canvas[1]}")
      if name is None:
        raise ValueError(f"no exported program for a {canvas[0]}x"
                         f"{canvas[1]} canvas (exported: {self.buckets})")
      with open(os.path.join(self.folder, name), "rb") as f:
        self._programs[canvas] = jax.export.deserialize(bytearray(f.read()))
    return self._programs[canvas]

  def run(self, image: np.ndarray, im_info: np.ndarray) -> dict[str, np.ndarray]:
    """The raw program on prepared canvases.

    Args:
      image: ``[b, H, W, 3]`` (``(H, W)`` one of :attr:`buckets`), uint8
        (or float32 for an export of a float-resize config, e.g. the seed's).
      im_info: float32 ``[b, 3]``.

    Returns:
      NumPy ``boxes [b, D, 4]`` (original pixels), ``scores``, ``classes``,
      ``valid``.
    """
    exp = self.program((int(image.shape[1]), int(image.shape[2])))
    boxes, scores, classes, valid = exp.call(
        self._params, np.asarray(image, exp.in_avals[-2].dtype),
        np.asarray(im_info, np.float32))
    return {"boxes": np.asarray(boxes), "scores": np.asarray(scores),
            "classes": np.asarray(classes), "valid": np.asarray(valid)}

  def _padded_size(self, n: int) -> int:
    size = 1
    while size < n:
      size *= 2
    return max(min(size, self.batch_size), n)

  def __call__(self, images, *, score_threshold: float = 0.0,
               keep_images: bool = True):
    """Detections of one image (a ``Detections``) or of a list (a list),
    as ``frcnn_jax.Detector.__call__``."""
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    decoded = [detections_lib.as_rgb_image(x, exif_transpose=self._exif)
               for x in items]
    groups = collections.defaultdict(list)
    for i, (im, _) in enumerate(decoded):
      resized, info = loader_lib.prepare_image(im, self._data)
      canvas = loader_lib.canvas_for(resized.shape[0], resized.shape[1],
                                     self._data.buckets)
      groups[tuple(canvas)].append((i, resized, info))
    results: list[Detections | None] = [None] * len(decoded)
    for (ch, cw), members in groups.items():
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        b = self._padded_size(len(chunk))
        image = np.zeros((b, ch, cw, 3), chunk[0][1].dtype)
        info = np.tile(np.array([ch, cw, 1.0], np.float32), (b, 1))
        for j, (_, im, inf) in enumerate(chunk):
          image[j, :im.shape[0], :im.shape[1]] = im
          info[j] = inf
        out = self.run(image, info)
        for j, (i, _, _) in enumerate(chunk):
          im, source = decoded[i]
          results[i] = detections_lib.from_output(
              out, j, self.class_names, im if keep_images else None,
              source).above(score_threshold)
    return results[0] if single else results

  def __repr__(self) -> str:
    return (f"ExportedDetector({self.folder}, {len(self.class_names) - 1} "
            f"classes, buckets {self.buckets})")


def load(folder: str) -> ExportedDetector:
  """Loads a folder written by ``python -m frcnn_jax.export``."""
  return ExportedDetector(folder)
