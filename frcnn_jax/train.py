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

from absl import app
from absl import flags

from frcnn_jax import checkpoints
from frcnn_jax import cli
from frcnn_jax import run_lock
from frcnn_jax import train_lib
from frcnn_jax.data import records as data_records

cli.define_common_flags(reads_checkpoint=False)
FLAGS = flags.FLAGS


def main(argv):
  cli.setup(FLAGS, argv)
  config = cli.load_config(FLAGS)
  workdir = cli.workdir(FLAGS)
  try:
    last = train_lib.train(config, workdir)
  except run_lock.WorkdirLockedError as e:
    cli.exit_with_message(e, code=2)
  except (train_lib.NonFiniteLossError, checkpoints.CheckpointMismatchError,
          data_records.DataError) as e:
    cli.exit_with_message(e, code=1)
  cli.print_summary(last, workdir)


def run():
  """The console script ``frcnn-train``."""
  app.run(main)


if __name__ == "__main__":
  run()
