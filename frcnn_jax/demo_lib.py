"""Detections on a folder of arbitrary images (what demo.py runs)."""

from __future__ import annotations

import json
import logging
import os

import jax
from tqdm import tqdm

from frcnn_jax import eval_lib
from frcnn_jax import parallel
from frcnn_jax import vis
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import loader
from frcnn_jax.data import records as records_lib

log = logging.getLogger(__name__)


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
  mesh = parallel.create_mesh(config.mesh.num_devices)
  graphdef, params, rest, step, names = eval_lib.load_for_inference(
      config, workdir, step=step, mesh=mesh)
  predict_fn = eval_lib.make_predict_fn(graphdef, mesh)
  images = {}
  for f in files:
    try:
      images[f] = images_lib.decode_image(os.path.join(image_dir, f),
                                          where=os.path.join(image_dir, f))
    except records_lib.ImageLoadError as e:
      log.warning("skipped: %s", e)
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  with tqdm(total=len(images), desc="demo", unit="image") as bar:
    for keys, batch in loader.image_batches(list(images.items()), config.data,
                                            config.test.batch_size):
      g = parallel.global_batch(batch, mesh)
      out = jax.device_get(predict_fn(params, rest, g["image"],
                                      g["im_info"], g["image_id"]))
      for j, f in enumerate(keys):
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
