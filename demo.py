"""Detections on images, a video or a webcam, drawn, plus a JSON of boxes.

  python demo.py --config=configs/shapes.py --workdir=runs/shapes \
      --images=path/to/images --out=runs/shapes/demo

A thin wrapper of ``python -m frcnn_jax.demo`` (``frcnn-demo`` once
installed); see frcnn_jax/demo.py for the flags.
"""

from frcnn_jax.demo import run

if __name__ == "__main__":
  run()
