"""Trains a detector: python train.py --config=configs/shapes.py --workdir=runs/shapes

Restarting the same command resumes from the newest checkpoint in
``workdir/checkpoints``. Config values are overridden on the command line,
e.g. ``--config.train.batch_size=8 --config.optimizer.lr=8e-3``.

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
  except (train_lib.NonFiniteLossError,
          checkpoints.CheckpointMismatchError) as e:
    cli.exit_with_message(e, code=1)
  cli.print_summary(last, workdir)


if __name__ == "__main__":
  app.run(main)
