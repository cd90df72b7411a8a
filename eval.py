"""Evaluates a checkpoint: python eval.py --config=configs/shapes.py --workdir=runs/shapes

A thin wrapper of ``python -m frcnn_jax.eval`` (``frcnn-eval`` once
installed); see frcnn_jax/eval.py for the flags.
"""

from absl import app

from frcnn_jax.eval import main

if __name__ == "__main__":
  app.run(main)
