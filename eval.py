"""Evaluates a checkpoint: python eval.py --config=configs/shapes.py --workdir=runs/shapes

Restores the newest (or --step) checkpoint of the workdir, runs batched
inference over the split on every device and prints the COCO table
(pycocotools) and/or VOC07 / area mAP with per-class AP. Writes
``<out>/detections.json`` (COCO results), ``<out>/metrics.json`` and, with
``--vis=N``, N images with their detections under ``<out>/vis``.
"""

from absl import app
from absl import flags

from frcnn_jax import cli

cli.define_common_flags(reads_checkpoint=True)
flags.DEFINE_string("split", "", "Dataset split (default: config.data."
                    "val_split).")
flags.DEFINE_integer("max_images", 0, "Evaluate only the first N images "
                     "(0 = all).")
flags.DEFINE_integer("vis", 0, "Write N images with drawn detections.")
flags.DEFINE_string("out", "", "Output folder (default: <workdir>/eval/"
                    "<split>_step<N>).")
FLAGS = flags.FLAGS


def main(argv):
  cli.setup(FLAGS, argv)
  # pylint: disable=g-import-not-at-top
  import os
  import jax
  from frcnn_jax import data as data_lib
  from frcnn_jax import eval_lib
  from frcnn_jax import train_lib
  # pylint: enable=g-import-not-at-top
  config = cli.load_config(FLAGS)
  workdir = cli.workdir(FLAGS)
  split = FLAGS.split or config.data.val_split
  mesh = train_lib.create_mesh(config.mesh.num_devices)
  loader = data_lib.build_eval_loader(
      config.data, split, batch_size=config.test.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  graphdef, params, rest, step, _ = eval_lib.load_for_inference(
      config, workdir, num_classes=loader.source.num_classes,
      step=None if FLAGS.step < 0 else FLAGS.step, mesh=mesh)
  out = FLAGS.out or os.path.join(workdir, "eval", f"{split}_step{step}")
  m = eval_lib.evaluate(
      eval_lib.make_predict_fn(graphdef, mesh), params, rest, loader, mesh,
      metric=config.test.metric, out_dir=out,
      max_images=FLAGS.max_images or None, vis_images=FLAGS.vis,
      vis_score_threshold=config.test.vis_score_thresh,
      desc=f"eval {split}")
  if jax.process_index() == 0:
    print(f"\n{workdir} step {step}, {split}: {m['num_images']} images, "
          f"{m['num_detections']} detections")
    print(eval_lib.format_metrics(m))
    print(f"\nwrote {out}/metrics.json, {out}/detections.json"
          + (f", {out}/vis/" if FLAGS.vis else ""))


if __name__ == "__main__":
  app.run(main)
