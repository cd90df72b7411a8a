"""Evaluates a checkpoint: python -m frcnn_jax.eval --workdir=runs/shapes

The same program as ``frcnn-eval`` and the repository's ``eval.py``.
Without ``--config`` it uses the config the workdir recorded (its data,
wherever you run it); ``--config.<key>=`` overrides apply to it.

Restores the newest (or --step) checkpoint of the workdir, runs batched
inference over the split on every device and prints the COCO table
(pycocotools) and/or VOC07 / area mAP with per-class AP. Writes
``<out>/detections.json`` (COCO results), ``<out>/metrics.json`` and, with
``--vis=N``, N images with their detections under ``<out>/vis``.
"""

from absl import flags

from frcnn_jax import cli
from frcnn_jax import eval_lib

cli.define_common_flags(reads_checkpoint=True)
flags.DEFINE_string("split", "", "Dataset split (default: config.data."
                    "val_split).")
flags.DEFINE_integer("max_images", 0, "Evaluate only the first N images "
                     "(0 = all).")
flags.DEFINE_integer("vis", 0, "Write N images with drawn detections.")
flags.DEFINE_string("out", "", "Output folder (default: <workdir>/eval/"
                    "<split>_step<N>).")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def main(argv):
  cli.setup(FLAGS, argv)
  workdir = cli.workdir(FLAGS, must_exist=True)
  config = cli.load_config(FLAGS, workdir=workdir)
  eval_lib.run(config, workdir, split=FLAGS.split or None,
               step=None if FLAGS.step < 0 else FLAGS.step,
               out_dir=FLAGS.out or None, max_images=FLAGS.max_images or None,
               vis_images=FLAGS.vis)


def run():
  """The console script ``frcnn-eval``."""
  cli.run_tool(main)


if __name__ == "__main__":
  run()
