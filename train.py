"""Trains a detector: python train.py --config=configs/shapes.py --workdir=runs/shapes

A thin wrapper of ``python -m frcnn_jax.train`` (``frcnn-train`` once
installed); see frcnn_jax/train.py for the flags.
"""

from absl import app

from frcnn_jax.train import main

if __name__ == "__main__":
  app.run(main)
