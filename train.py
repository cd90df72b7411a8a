"""Trains a detector: python train.py --config=configs/shapes.py --workdir=runs/shapes

A thin wrapper of ``python -m frcnn_jax.train`` (``frcnn-train`` once
installed); see frcnn_jax/train.py for the flags.
"""

from frcnn_jax.train import run

if __name__ == "__main__":
  run()
