"""Trains a detector: python -m frcnn_jax.train --config=shapes --workdir=runs/shapes

The same program as ``frcnn-train`` and the repository's ``train.py``.

Restarting the same command resumes from the newest checkpoint in
``workdir/checkpoints``. Config values are overridden on the command line,
e.g. ``--config.train.batch_size=8 --config.optimizer.lr=8e-3``.

``--config`` is a built-in config's name or a config file; paths in the
config are made absolute (against the current directory) before anything is
read or recorded.

Several hosts (GPU nodes, TPU pods) run the same command on every host, with
``--distributed`` (automatic on TPU pods and SLURM) or with
``--coordinator_address``, ``--num_processes`` and ``--process_id``.
"""

from absl import flags

from frcnn_jax import cli
from frcnn_jax import train_lib

cli.define_common_flags(reads_checkpoint=False)
flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose checkpoints were trained with another config "
    "(learning rate, schedule, thresholds, sizes, paths...). Keys the "
    "checkpoints depend on (network, anchors, classes, training split, seed, "
    "batch size) never change: use a new --workdir.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def main(argv):
  cli.setup(FLAGS, argv)
  config = cli.load_config(FLAGS)
  workdir = cli.workdir(FLAGS)
  last = train_lib.train(config, workdir,
                         allow_config_change=FLAGS.allow_config_change)
  cli.print_summary(last, workdir)


def run():
  """The console script ``frcnn-train``."""
  cli.run_tool(main, runtime_errors=(train_lib.NonFiniteLossError,))


if __name__ == "__main__":
  run()
