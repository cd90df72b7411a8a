"""Exports a trained detector: python -m frcnn_jax.export --workdir=runs/shapes --out=exported/shapes

The same program as ``frcnn-export``. Writes a folder that runs without the
model code (``frcnn_jax.exporting``): one serialized ``jax.export`` program
per canvas bucket with a symbolic batch dimension, the weights, the class
names and the preprocessing; ``frcnn_jax.load_exported(out)`` runs it.
``--tf_saved_model`` also writes a TensorFlow SavedModel (needs
tensorflow). Without ``--config`` the workdir's recorded config is used;
``--config.test.<key>=`` overrides change the test-time settings baked in.
"""

from absl import flags

from frcnn_jax import cli
from frcnn_jax import exporting
from frcnn_jax.inference import Detector

cli.define_common_flags(reads_checkpoint=True)
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_list("platforms", [], "Platforms to lower for (cpu, cuda, rocm, "
                  "tpu); default: the one JAX runs on.")
flags.DEFINE_bool("tf_saved_model", False, "Also write <out>/saved_model "
                  "(TensorFlow SavedModel via jax2tf; needs tensorflow).")
flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --out.")
flags.mark_flag_as_required("out")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def main(argv):
  cli.setup(FLAGS, argv)
  workdir = cli.workdir(FLAGS, must_exist=True)
  config = cli.load_config(FLAGS, check_paths=False, workdir=workdir)
  detector = Detector.load(workdir, config=config,
                           step=None if FLAGS.step < 0 else FLAGS.step)
  out = exporting.export_detector(
      detector, FLAGS.out, platforms=FLAGS.platforms or None,
      tf_saved_model=FLAGS.tf_saved_model, overwrite=FLAGS.overwrite)
  print(f"exported {workdir} step {detector.step} -> {out} (buckets "
        f"{[tuple(b) for b in config.data.buckets]}; load it with "
        f"frcnn_jax.load_exported({out!r}))")


def run():
  """The console script ``frcnn-export``."""
  cli.run_tool(main, runtime_errors=(ImportError,))


if __name__ == "__main__":
  run()
