"""Detections on images, a video or a webcam, drawn, plus a JSON of boxes.

  python -m frcnn_jax.demo --workdir=runs/shapes --images=path/to/images \
      --out=runs/shapes/demo
  python -m frcnn_jax.demo --workdir=runs/shapes --video=clip.mp4   # or --video=0

The same program as ``frcnn-demo`` and the repository's ``demo.py``.
Without ``--config`` it uses the config the workdir recorded.

``--images``: a folder (or one image file); every readable image (jpg, png,
bmp, ...; EXIF orientation applied) is resized as in evaluation, placed on the
smallest canvas of config.data.buckets that holds it (or, if none does, on a
canvas rounded up to a multiple of 64 px: one extra compilation per new
size), and batched by canvas. Writes ``<out>/<file name>`` (drawn, in the
input's format) and ``<out>/detections.json``: ``{file: [{"box": [x1, y1,
x2, y2], "score", "class", "class_id"}]}`` in the original image's pixels
(inclusive convention). ``--video``: a video file or a webcam index, read
with OpenCV (optional: pip install opencv-python-headless); writes
``<out>/<name>_detections.<ext>`` and per-frame detections. Only detections
scoring at least ``--score_thresh`` are drawn and written.
"""

import os

from absl import flags

from frcnn_jax import cli
from frcnn_jax import demo_lib

cli.define_common_flags(reads_checkpoint=True)
flags.DEFINE_string("images", None, "Folder of images, or one image file.")
flags.DEFINE_string("video", None, "A video file, or a webcam index (0, 1, "
                    "...); needs OpenCV.")
flags.DEFINE_integer("max_frames", 0, "Video/webcam: stop after N frames "
                     "(0 = the whole video; a webcam runs until Ctrl-C).")
flags.DEFINE_string("out", "", "Output folder (default: <workdir>/demo).")
flags.DEFINE_float("score_thresh", -1.0, "Draw and write detections scoring "
                   "at least this (default: config.test.vis_score_thresh).")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS

EXTENSIONS = demo_lib.IMAGE_EXTENSIONS


def main(argv):
  cli.setup(FLAGS, argv)
  if (FLAGS.images is None) == (FLAGS.video is None):
    raise cli.UserError("give one of --images=<folder or image> or "
                        "--video=<file or webcam index>")
  source = FLAGS.images if FLAGS.images is not None else FLAGS.video
  if FLAGS.images is not None and not os.path.exists(source):
    raise cli.UserError(f"--images={source}: no such folder or file")
  if FLAGS.video is not None and not source.isdigit() and not os.path.isfile(
      source):
    raise cli.UserError(f"--video={source}: no such file (or give a webcam "
                        f"index such as 0)")
  workdir = cli.workdir(FLAGS, must_exist=True)
  config = cli.load_config(FLAGS, check_paths=False, workdir=workdir)
  try:
    demo_lib.run(config, workdir, source, FLAGS.out or f"{workdir}/demo",
                 step=None if FLAGS.step < 0 else FLAGS.step,
                 score_thresh=(FLAGS.score_thresh if FLAGS.score_thresh >= 0
                               else config.test.vis_score_thresh),
                 extensions=EXTENSIONS, max_frames=FLAGS.max_frames)
  except demo_lib.OutputIsInputError as e:
    raise cli.UserError(str(e)) from None


def run():
  """The console script ``frcnn-demo``."""
  cli.run_tool(main, runtime_errors=(ImportError,))


if __name__ == "__main__":
  run()
