"""Detections on a folder of arbitrary images (what demo.py runs)."""

from __future__ import annotations

import collections
import json
import logging
import os

import jax
import numpy as np
from tqdm import tqdm

from frcnn_jax import eval_lib
from frcnn_jax import train_lib
from frcnn_jax import vis
from frcnn_jax.data import source as source_lib
from frcnn_jax.data import transforms

log = logging.getLogger(__name__)


def canvas_for(h: int, w: int, buckets) -> tuple[int, int]:
  """The config's smallest bucket holding ``h x w``, else a 64-px multiple."""
  i = transforms.choose_bucket(h, w, [tuple(b) for b in buckets])
  if i >= 0:
    return tuple(buckets[i])
  return (-(-h // 64) * 64, -(-w // 64) * 64)


def prepare(image: np.ndarray, data_config):
  """Resize as evaluation does; returns ``(resized, im_info)``."""
  h, w = image.shape[:2]
  s = transforms.compute_scale(h, w, data_config.scale, data_config.max_size)
  rh, rw = transforms.resized_size(h, w, s)
  return transforms.resize_image(image, rh, rw), np.array([rh, rw, s],
                                                          np.float32)


def run(config, workdir: str, image_dir: str, out_dir: str, *, step=None,
        score_thresh: float = 0.5, extensions=(".jpg", ".png")) -> dict:
  """Writes ``out_dir/<name>.png`` per image and ``out_dir/detections.json``.

  Returns the detections dict that was written.
  """
  files = sorted(f for f in os.listdir(image_dir)
                 if f.lower().endswith(tuple(extensions)))
  if not files:
    raise FileNotFoundError(f"no images ({', '.join(extensions)}) in "
                            f"{image_dir}")
  mesh = train_lib.create_mesh(config.mesh.num_devices)
  graphdef, params, rest, step, names = eval_lib.load_for_inference(
      config, workdir, step=step, mesh=mesh)
  predict_fn = eval_lib.make_predict_fn(graphdef, mesh)
  groups = collections.defaultdict(list)
  images = {}
  for f in files:
    try:
      img = source_lib.decode_image(os.path.join(image_dir, f),
                                    where=os.path.join(image_dir, f))
    except source_lib.ImageLoadError as e:
      log.warning("skipped: %s", e)
      continue
    resized, info = prepare(img, config.data)
    images[f] = img
    groups[canvas_for(resized.shape[0], resized.shape[1],
                      config.data.buckets)].append((f, resized, info))
  os.makedirs(out_dir, exist_ok=True)
  bs = config.test.batch_size
  results = {}
  with tqdm(total=len(images), desc="demo", unit="image") as bar:
    for (ch, cw), items in groups.items():
      for i in range(0, len(items), bs):
        chunk = items[i:i + bs]
        batch = np.zeros((bs, ch, cw, 3), np.uint8)
        info = np.tile(np.array([ch, cw, 1.0], np.float32), (bs, 1))
        for j, (_, im, inf) in enumerate(chunk):
          batch[j, :im.shape[0], :im.shape[1]] = im
          info[j] = inf
        ids = np.where(np.arange(bs) < len(chunk), np.arange(bs), -1).astype(
            np.int32)
        g = train_lib.global_batch(dict(image=batch, im_info=info,
                                        image_id=ids), mesh)
        out = jax.device_get(predict_fn(params, rest, g["image"],
                                        g["im_info"], g["image_id"]))
        for j, (f, _, _) in enumerate(chunk):
          v = out["valid"][j]
          dets = [dict(box=[round(float(x), 2) for x in b],
                       score=round(float(s), 5), class_id=int(c),
                       **{"class": names[int(c)] if names else str(int(c))})
                  for b, s, c in zip(out["boxes"][j][v], out["scores"][j][v],
                                     out["classes"][j][v])]
          results[f] = dets
          drawn = vis.draw_detections(
              images[f], out["boxes"][j], out["classes"][j], out["scores"][j],
              names or [str(k) for k in range(out["classes"].max() + 1)],
              score_threshold=score_thresh, valid=v)
          vis.save_png(os.path.join(out_dir, os.path.splitext(f)[0] + ".png"),
                       drawn)
          bar.update(1)
  with open(os.path.join(out_dir, "detections.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  print(f"{len(results)} images -> {out_dir} (step {step}; detections.json)")
  return results
