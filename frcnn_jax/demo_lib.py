"""Detections on a folder of images, a video file or a webcam (demo.py).

* A folder: every readable image (the ``extensions``) gives
  ``<out>/<the same file name>``, drawn, in its own format (a JPEG stays a
  JPEG, quality 95; a PNG a PNG), so names never collide; plus
  ``<out>/detections.json``: ``{file name: [{"box", "score", "class",
  "class_id"}]}``.
* A video file or a webcam index (``'0'``): frames are read with OpenCV
  (``pip install opencv-python-headless``; not required otherwise), run
  ``test.batch_size`` at a time, and written drawn to
  ``<out>/<name>_detections.<ext>`` at the source's frame rate (mp4v for
  ``.mp4``/``.mov``/webcams, MJPG otherwise), with ``detections.json``:
  ``{"source", "fps", "frames": [{"frame": i, "detections": [...]}]}``.

Boxes are ``x1, y1, x2, y2`` in the original image's pixels (inclusive), and
only detections scoring at least ``score_thresh`` are drawn or written.
Pictures with a long side under ``SMALL_SIDE`` (320) pixels are drawn
enlarged with margins for the labels (the json stays in original pixels).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from frcnn_jax import eval_lib
from frcnn_jax import vis
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg",
                    ".m4v", ".wmv")
# Pictures whose long side is shorter are drawn enlarged (nearest
# neighbour, integer factor) with margins, so that labels do not cover them.
SMALL_SIDE = 320
# What PIL writes for an extension (JPEG quality high: a demo is looked at).
_SAVE = {".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
         ".png": ("PNG", {}), ".bmp": ("BMP", {}), ".gif": ("GIF", {}),
         ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}),
         ".webp": ("WEBP", {"quality": 95}), ".ppm": ("PPM", {})}


class OutputIsInputError(ValueError):
  """The output folder is the image folder: the drawings would replace the
  images (same file names)."""


def source_kind(source: str) -> str:
  """``'webcam'`` (an integer), ``'video'`` (a file with a video extension),
  ``'folder'`` (a directory) or ``'image'`` (any other file)."""
  if source.isdigit():
    return "webcam"
  if os.path.isdir(source):
    return "folder"
  if source.lower().endswith(VIDEO_EXTENSIONS):
    return "video"
  return "image"


def _detect(model: eval_lib.Predictor,
            items: Iterable[tuple[Any, np.ndarray]]
            ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
  """``(key, {'boxes', 'scores', 'classes'})`` of the valid detections of
  each ``(key, RGB array)`` (keys come back grouped by canvas)."""
  for key, out, j in model.predict_images(items):
    v = np.asarray(out["valid"][j], bool)
    yield key, {k: np.asarray(out[k][j])[v]
                for k in ("boxes", "scores", "classes")}


def _as_json(model: eval_lib.Predictor, dets: dict[str, np.ndarray],
             score_thresh: float) -> list[dict]:
  keep = dets["scores"] >= score_thresh
  return [{"box": [round(float(x), 2) for x in b], "score": round(float(s), 5),
           "class": vis.class_label(model.class_names, int(c)),
           "class_id": int(c)}
          for b, s, c in zip(dets["boxes"][keep], dets["scores"][keep],
                             dets["classes"][keep])]


def _draw(model: eval_lib.Predictor, image: np.ndarray,
          dets: dict[str, np.ndarray], score_thresh: float) -> np.ndarray:
  small = max(image.shape[:2]) < SMALL_SIDE   # Enlarged, with margins.
  return vis.draw_detections(image, dets["boxes"], dets["classes"],
                             dets["scores"], list(model.class_names),
                             score_threshold=score_thresh,
                             min_side=SMALL_SIDE, margin=small)


def save_image(path: str, image: np.ndarray) -> None:
  """Writes ``image`` in the format its extension names (PNG otherwise)."""
  fmt, kwargs = _SAVE.get(os.path.splitext(path)[1].lower(), ("PNG", {}))
  Image.fromarray(np.ascontiguousarray(image)).save(path, fmt, **kwargs)


def run(config, workdir: str, source: str, out_dir: str, *, step=None,
        score_thresh: float = 0.5, extensions=IMAGE_EXTENSIONS,
        max_frames: int = 0) -> dict:
  """Detections on ``source`` (folder, image, video file or webcam index)
  drawn into ``out_dir`` with ``detections.json``; returns what the json
  holds.

  Raises:
    FileNotFoundError: ``source`` does not exist, or holds no image.
    OutputIsInputError (a ValueError): ``out_dir`` is the image folder
      itself (the pictures would replace the inputs).
    ImportError: a video or webcam without OpenCV.
  """
  kind = source_kind(source)
  if kind != "webcam" and not os.path.exists(source):
    raise FileNotFoundError(f"{source}: no such file or folder")
  if kind in ("folder", "image"):
    folder = source if kind == "folder" else os.path.dirname(source) or "."
    if os.path.realpath(folder) == os.path.realpath(out_dir):
      raise OutputIsInputError(f"the output folder {out_dir} is the image "
                               f"folder: the drawings would replace the "
                               f"images; pick another --out")
    files = ([f for f in sorted(os.listdir(source))
              if f.lower().endswith(tuple(extensions))]
             if kind == "folder" else [os.path.basename(source)])
    if not files:
      raise FileNotFoundError(f"no images ({', '.join(extensions)}) in "
                              f"{source}")
    model = eval_lib.Predictor.restore(config, workdir, step=step)
    results = _run_images(model, folder, files, out_dir, score_thresh)
    what = f"{len(results)} images"
  else:
    model = eval_lib.Predictor.restore(config, workdir, step=step)
    results = _run_video(model, source, kind, out_dir, score_thresh,
                         max_frames)
    what = f"{len(results['frames'])} frames -> {results['output']}"
  with open(os.path.join(out_dir, "detections.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  print(f"{what} -> {out_dir} (step {model.step}; detections.json: scores "
        f">= {score_thresh})")
  return results


def _run_images(model: eval_lib.Predictor, folder: str, files: list[str],
                out_dir: str, score_thresh: float) -> dict[str, list[dict]]:
  images = {}
  for f in files:
    path = os.path.join(folder, f)
    try:
      images[f] = images_lib.decode_image(path, where=path)
    except records_lib.ImageLoadError as e:
      log.warning("skipped: %s", e)
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  with tqdm(total=len(images), desc="demo", unit="image",
            disable=None) as bar:   # No bar off a terminal.
    for f, dets in _detect(model, images.items()):
      results[f] = _as_json(model, dets, score_thresh)
      save_image(os.path.join(out_dir, f),
                 _draw(model, images[f], dets, score_thresh))
      bar.update(1)
  return {f: results[f] for f in sorted(results)}


def _open_capture(source: str, kind: str):
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        f"reading {'a webcam' if kind == 'webcam' else source} needs OpenCV: "
        f"pip install opencv-python-headless") from None
  cap = cv2.VideoCapture(int(source) if kind == "webcam" else source)
  if not cap.isOpened():
    raise FileNotFoundError(
        f"{'webcam ' + source if kind == 'webcam' else source}: OpenCV "
        f"cannot open it")
  return cv2, cap


def _frames(cv2, cap, max_frames: int) -> Iterator[np.ndarray]:
  n = 0
  while not max_frames or n < max_frames:
    ok, frame = cap.read()
    if not ok:
      return
    n += 1
    yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _run_video(model: eval_lib.Predictor, source: str, kind: str,
               out_dir: str, score_thresh: float, max_frames: int
               ) -> dict[str, Any]:
  cv2, cap = _open_capture(source, kind)
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
  total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "video" else 0
  if max_frames:
    total = min(total, max_frames) if total else max_frames
  stem, ext = (f"webcam{source}", ".mp4") if kind == "webcam" else (
      os.path.splitext(os.path.basename(source)))
  ext = ext.lower()
  fourcc = "mp4v" if ext in (".mp4", ".mov", ".m4v") else "MJPG"
  if fourcc == "MJPG":
    ext = ".avi"
  os.makedirs(out_dir, exist_ok=True)
  out_path = os.path.join(out_dir, f"{stem}_detections{ext}")
  writer, frames_out = None, []
  chunk = model.batch_size
  try:
    with tqdm(total=total or None, desc="demo", unit="frame",
              disable=None) as bar:
      buffer: list[tuple[int, np.ndarray]] = []
      for i, frame in enumerate(_frames(cv2, cap, max_frames)):
        buffer.append((i, frame))
        if len(buffer) < chunk:
          continue
        writer = _write_frames(model, cv2, buffer, writer, out_path, fourcc,
                               fps, frames_out, score_thresh)
        bar.update(len(buffer))
        buffer = []
      if buffer:
        writer = _write_frames(model, cv2, buffer, writer, out_path, fourcc,
                               fps, frames_out, score_thresh)
        bar.update(len(buffer))
  except KeyboardInterrupt:  # A webcam runs until stopped.
    log.info("stopped after %d frames", len(frames_out))
  finally:
    cap.release()
    if writer is not None:
      writer.release()
  if not frames_out:
    raise FileNotFoundError(f"{source}: no frame could be read")
  return {"source": source, "fps": fps, "output": out_path,
          "frames": frames_out}


def _write_frames(model, cv2, buffer, writer, out_path, fourcc, fps,
                  frames_out, score_thresh):
  frames = dict(buffer)
  dets = dict(_detect(model, buffer))
  for i, _ in buffer:   # Frame order (detect groups by canvas).
    drawn = _draw(model, frames[i], dets[i], score_thresh)
    if writer is None:
      h, w = drawn.shape[:2]
      writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*fourcc), fps,
                               (w, h))
    writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    frames_out.append({"frame": i, "detections": _as_json(
        model, dets[i], score_thresh)})
  return writer
