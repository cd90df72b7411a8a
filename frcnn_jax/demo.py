"""Detections on any folder of images, drawn to PNGs plus a JSON of boxes.

  python -m frcnn_jax.demo --workdir=runs/shapes --images=path/to/images \
      --out=runs/shapes/demo

The same program as ``frcnn-demo`` and the repository's ``demo.py``.
Without ``--config`` it uses the config the workdir recorded.

Every readable image (jpg, png, bmp, ...; EXIF orientation applied) is resized
as in evaluation (config.data.scale / max_size), placed on the smallest
canvas of config.data.buckets that holds it (or, if none does, on a canvas
rounded up to a multiple of 64 px: one extra compilation per new size), and
batched by canvas. Writes ``<out>/<name>.png`` and ``<out>/detections.json``:
``{file: [{"box": [x1, y1, x2, y2], "score", "class", "class_id"}]}`` in the
original image's pixels (inclusive convention).
"""

from absl import app
from absl import flags

from frcnn_jax import cli
from frcnn_jax import demo_lib

cli.define_common_flags(reads_checkpoint=True)
flags.DEFINE_string("images", None, "Folder of images.")
flags.DEFINE_string("out", "", "Output folder (default: <workdir>/demo).")
flags.DEFINE_float("score_thresh", -1.0, "Draw detections scoring at least "
                   "this (default: config.test.vis_score_thresh).")
flags.mark_flag_as_required("images")
FLAGS = flags.FLAGS

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
              ".webp", ".ppm")


def main(argv):
  cli.setup(FLAGS, argv)
  workdir = cli.workdir(FLAGS)
  config = cli.load_config(FLAGS, check_paths=False, workdir=workdir)
  demo_lib.run(config, workdir, FLAGS.images,
               FLAGS.out or f"{workdir}/demo",
               step=None if FLAGS.step < 0 else FLAGS.step,
               score_thresh=(FLAGS.score_thresh if FLAGS.score_thresh >= 0
                             else config.test.vis_score_thresh),
               extensions=EXTENSIONS)


def run():
  """The console script ``frcnn-demo``."""
  app.run(main)


if __name__ == "__main__":
  run()
