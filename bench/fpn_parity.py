"""Real-size parity: torchvision's FPN detectors vs ours at 800 x 1333.

  python -m bench.fpn_parity [--variants v1,v2] [--height 800 --width 1333]

The check of tests/modeling/test_detector_fpn.py (there at 320 x 480, to keep
the suite fast) at torchvision's test size, with its default settings (1000
proposals): torchvision's own ``fasterrcnn_resnet50_fpn[_v2]`` with random
weights, non-trivial BatchNorm statistics and peaked class scores, converted
with ``frcnn_jax.weights.torchvision_frcnn``; one image of the given size
(not resized), and a second copy of it placed on a larger canvas (a data
bucket) to show the canvas masks at work. Prints, per variant: how many
proposals / detections each side has, the smallest best-IoU of torchvision's
detections among ours, the largest score difference, label agreement, and
the time of each side (ours jitted, after compilation).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench import fpn_reference


def make_image(h: int, w: int) -> np.ndarray:
  """The test's image (bench.fpn_reference) at real size: more and larger
  rectangles."""
  return fpn_reference.make_image(h, w, rects=12, margin=80, rect_h=(40, 300),
                                  rect_w=(40, 400))


def compare(variant: str, h: int, w: int, canvas: tuple[int, int]) -> dict:
  # pylint: disable=import-outside-toplevel
  import jax
  import torch
  from flax import nnx
  from torchvision.models import detection
  from torchvision.ops import box_iou
  from frcnn_jax.weights import torchvision_frcnn as tvf
  # pylint: enable=import-outside-toplevel
  ctor = (detection.fasterrcnn_resnet50_fpn if variant == "v1" else
          detection.fasterrcnn_resnet50_fpn_v2)
  torch.manual_seed(0)
  tm = ctor(weights=None, weights_backbone=None, min_size=h, max_size=w)
  fpn_reference.randomize(tm, 1, 60.0)
  tm.eval()
  img = make_image(h, w)
  x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
  with torch.no_grad():
    t = time.perf_counter()
    want = tm([x])[0]
    t_torch = time.perf_counter() - t
  model = tvf.model_from_state_dict(tm.state_dict())
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda s, im, ii: nnx.merge(graphdef, s).inference(im, ii))
  out = {"variant": variant, "image": f"{h}x{w}",
         "torch_s": t_torch, "torch_dets": len(want["boxes"])}
  ext = (-(-h // 32) * 32, -(-w // 32) * 32)
  for name, size in (("extent", ext), ("canvas", canvas)):
    c = np.zeros((1,) + size + (3,), np.uint8)
    c[0, :h, :w] = img
    info = np.array([[h, w, 1.0]], np.float32)
    jax.block_until_ready(f(state, c, info))
    t = time.perf_counter()
    got = jax.device_get(f(state, c, info))
    out[f"ours_{name}_s"] = time.perf_counter() - t
    v = got["valid"][0]
    boxes = got["boxes_tv"][0][v]
    m = box_iou(want["boxes"], torch.from_numpy(boxes)).numpy()
    j = m.argmax(1)
    out[f"{name}_dets"] = int(v.sum())
    out[f"{name}_min_iou"] = float(m.max(1).min()) if len(m) else float("nan")
    out[f"{name}_max_score_diff"] = float(np.abs(
        got["scores"][0][v][j] - want["scores"].numpy()).max())
    out[f"{name}_labels_equal"] = bool(
        (got["classes"][0][v][j] == want["labels"].numpy()).all())
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variants", default="v1,v2", type=lambda s: s.split(","))
  p.add_argument("--height", type=int, default=800)
  p.add_argument("--width", type=int, default=1333)
  p.add_argument("--canvas", default="1088,1344",
                 type=lambda s: tuple(int(v) for v in s.split(",")))
  args = p.parse_args(argv)
  print(f"$ python -m bench.fpn_parity --variants {','.join(args.variants)} "
        f"--height {args.height} --width {args.width} "
        f"--canvas {args.canvas[0]},{args.canvas[1]}")
  keys = ["variant", "image", "torch_dets", "extent_dets", "extent_min_iou",
          "extent_max_score_diff", "extent_labels_equal", "canvas_dets",
          "canvas_min_iou", "canvas_max_score_diff", "canvas_labels_equal",
          "torch_s", "ours_extent_s", "ours_canvas_s"]
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for v in args.variants:
    r = compare(v, args.height, args.width, args.canvas)
    print("| " + " | ".join(
        f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k])
        for k in keys) + " |", flush=True)


if __name__ == "__main__":
  main()
