"""Detections on any folder of images, drawn to PNGs plus a JSON of boxes.

  python demo.py --config=configs/shapes.py --workdir=runs/shapes \
      --images=path/to/images --out=runs/shapes/demo

A thin wrapper of ``python -m frcnn_jax.demo`` (``frcnn-demo`` once
installed); see frcnn_jax/demo.py for the flags.
"""

from absl import app

from frcnn_jax.demo import main

if __name__ == "__main__":
  app.run(main)
