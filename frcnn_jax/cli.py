"""What train.py, eval.py and demo.py share: flags, devices, config loading."""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from frcnn_jax import config_lib


_CHECKPOINT_WORKDIR_HELP = (
    "Train workdir (default: runs/<config name>), or a folder written by "
    "`python -m frcnn_jax.weights convert`.")


def define_common_flags(*, reads_checkpoint: bool) -> None:
  """--config, --workdir (and --step for tools that read a checkpoint),
  plus the device / distributed flags."""
  config_flags.DEFINE_config_file(
      "config", "configs/shapes.py", "Config file (ml_collections).",
      lock_config=True)
  if reads_checkpoint:
    flags.DEFINE_string("workdir", "", _CHECKPOINT_WORKDIR_HELP)
    flags.DEFINE_integer("step", -1, "Checkpoint step; -1 = the newest.")
  else:
    flags.DEFINE_string("workdir", "", "Where checkpoints, logs and plots go "
                        "(default: runs/<config file name>).")
  define_distributed_flags()


def define_distributed_flags() -> None:
  flags.DEFINE_bool(
      "distributed", False,
      "Call jax.distributed.initialize() with no arguments (TPU pods, SLURM, "
      "...: the cluster tells every process its role).")
  flags.DEFINE_string(
      "coordinator_address", "",
      "host:port of process 0, for a multi-process run on machines without "
      "auto-detection; with --num_processes and --process_id.")
  flags.DEFINE_integer("num_processes", 1, "Processes in the run.")
  flags.DEFINE_integer("process_id", 0, "This process's index.")
  flags.DEFINE_integer(
      "num_cpu_devices", 0,
      "If > 0, split the CPU into this many JAX devices (testing data "
      "parallelism on one machine).")
  flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning"],
                    "Python logging level.")


def setup(f, argv) -> None:
  """Checks argv; logging, fake CPU devices, jax.distributed, before jax is used.

  Args:
    f: the parsed absl FLAGS.
    argv: what absl left of the command line (the program name only; anything
      else is a usage error).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(
      level=getattr(logging, f.log_level.upper()), stream=sys.stderr,
      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "grain", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # pylint: disable-next=g-import-not-at-top
  import jax
  if f.num_cpu_devices > 0:
    jax.config.update("jax_num_cpu_devices", f.num_cpu_devices)
  multi = f.distributed or f.coordinator_address
  if multi:
    if jax.config.jax_platforms in ("cpu",) or os.environ.get(
        "JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if f.coordinator_address:
      jax.distributed.initialize(coordinator_address=f.coordinator_address,
                                 num_processes=f.num_processes,
                                 process_id=f.process_id)
    else:
      jax.distributed.initialize()
  logging.getLogger("frcnn_jax").info(
      "process %d/%d, %d local / %d global devices (%s)",
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), jax.devices()[0].platform)


def load_config(f, *, check_paths: bool = True):
  """The --config (with overrides), validated."""
  config = f.config
  config_lib.validate(config, check_paths=check_paths)
  return config


def workdir(f) -> str:
  """--workdir, or runs/<config file name without .py>."""
  if f.workdir:
    return f.workdir
  path = config_flags.get_config_filename(f["config"])
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  return os.path.join("runs", name)


def exit_with_message(error: BaseException, code: int) -> None:
  """Ends the program with ``error``'s message (no traceback) and ``code``."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(code)


def print_summary(last: dict, workdir_path: str) -> None:
  # pylint: disable-next=g-import-not-at-top
  import jax
  if jax.process_index() != 0:
    return
  losses = {k: round(v, 4) for k, v in last.items()
            if isinstance(v, float) and k.startswith("loss")}
  print(f"done: {workdir_path}  {losses}")
