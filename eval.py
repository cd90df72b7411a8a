"""Evaluates a checkpoint: python eval.py --config=configs/shapes.py --workdir=runs/shapes

A thin wrapper of ``python -m frcnn_jax.eval`` (``frcnn-eval`` once
installed); see frcnn_jax/eval.py for the flags.
"""

from frcnn_jax.eval import run

if __name__ == "__main__":
  run()
