"""What train, eval and demo share: flags, devices, config loading.

``--config`` takes a built-in config's name (``shapes``, ``voc07_res101``)
or a config file's path (``config_lib.find_config_file``), so the tools
work from any directory; its paths are made absolute at once
(``frcnn_jax.paths``). Tools that read a workdir (eval, demo, export) use
the config the workdir recorded when ``--config`` is not given, with the
``--config.<key>=`` overrides applied to it: the data it was trained with,
wherever the tool runs.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _config_flags_impl

from frcnn_jax import checkpoints
from frcnn_jax import config_lib
from frcnn_jax import paths
from frcnn_jax import run_config
from frcnn_jax import run_lock
from frcnn_jax import siblings
from frcnn_jax.data import records as data_records
from frcnn_jax.weights import compat

log = logging.getLogger("frcnn_jax")

_CHECKPOINT_WORKDIR_HELP = (
    "Train workdir (default: runs/<config name>), or a folder written by "
    "`python -m frcnn_jax.weights convert`.")
_CONFIG_HELP = (
    "Built-in config name (shapes, tiny, voc07_res101, coco_res101, ...) or "
    "a config file (ml_collections get_config()). ")


class _ConfigFileParser(_config_flags_impl.ConfigFileFlagParser):
  """ml_collections' config-file parser, given a name or a path."""

  def parse(self, path):
    name, sep, arg = path.partition(":")
    try:
      resolved = config_lib.find_config_file(name)
    except siblings.SiblingPackageError as e:
      if path != config_lib.DEFAULT_CONFIG:
        raise ValueError(str(e)) from None
      # The default, parsed when the flag is defined: fail only if used.
      return _config_flags_impl._ErrorConfig(e)  # pylint: disable=protected-access
    except FileNotFoundError as e:
      raise ValueError(str(e)) from None
    return super().parse(resolved + sep + arg)


def _define_config_flag(help_string: str) -> None:
  # config_flags.DEFINE_config_file with our parser (name or path). It reads
  # the --config.<key> overrides of sys.argv at once: a misspelt key is a
  # user error already here.
  try:
    flag = _config_flags_impl._ConfigFlag(  # pylint: disable=protected-access
        parser=_ConfigFileParser(name="config", lock_config=True),
        serializer=flags.ArgumentSerializer(), name="config",
        default=config_lib.DEFAULT_CONFIG, help_string=help_string,
        flag_values=flags.FLAGS)
  except (AttributeError, KeyError) as e:
    exit_with_message(_override_message(None, e), code=2)
  flags.DEFINE_flag(flag, flags.FLAGS)


def define_common_flags(*, reads_checkpoint: bool) -> None:
  """--config, --workdir (and --step for tools that read a checkpoint),
  --print_config, plus the device / distributed flags.

  Each tool module then calls ``flags.adopt_module_key_flags(cli)`` so that
  its ``--help`` lists these flags with its own.
  """
  _define_config_flag(_CONFIG_HELP + (
      "Default: the config recorded in --workdir, else shapes."
      if reads_checkpoint else "Default: shapes.") +
      " Override any key with --config.<key>=<value>; --print_config lists "
      "them all.")
  flags.DEFINE_bool("print_config", False, "Print every config key (after "
                    "--config and its overrides) with its value and what it "
                    "means, then exit.")
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


class UserError(Exception):
  """A mistake on the command line: one message, exit code 2."""


# Mistakes of the command line or its files: one message, exit code 2.
USER_ERRORS = (UserError, config_lib.ConfigError, FileNotFoundError,
               FileExistsError, siblings.SiblingPackageError)


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--help=true")


def tool_help(module) -> str:
  """``--help`` of a tool: what it does, its flags, the common ones, and
  how to see the config keys."""
  f = flags.FLAGS
  name = getattr(module, "__name__", str(module))
  doc = (getattr(module, "__doc__", "") or "").strip()
  own = "\n".join(line for line in f.module_help(name).splitlines()
                  if line.startswith(" "))   # Without the module's name.
  parts = [doc, "", "Flags:", own or "  (none)", "",
           "Config keys: --print_config prints every key with its value and "
           "meaning; change one with --config.<key>=<value>, e.g. "
           "--config.train.num_steps=500. --helpfull: all flags, absl's and "
           "jax's too."]
  return "\n".join(parts)


def _parse_flags(argv, module=None):
  """absl's flag parsing with a flag error as one line and exit code 2;
  ``--help`` prints :func:`tool_help`."""
  if module is not None and any(a in _HELP_FLAGS for a in argv[1:]):
    print(tool_help(module))
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:   # A misspelt --config.<key>.
    exit_with_message(_override_message(None, e), code=2)
  except flags.Error as e:
    exit_with_message(f"{e}\n(--help lists the flags; --print_config the "
                      f"config keys)", code=2)


def run_tool(main, *, runtime_errors: tuple = ()) -> None:
  """``app.run(main)`` for a command-line tool.

  Flag errors, a misspelt or mistyped ``--config.<key>``, an impossible
  config value, a missing file, folder or checkpoint step are one message
  on stderr and exit code 2, never a traceback (``USER_ERRORS`` plus the
  weights' config mismatches and a locked workdir); ``runtime_errors`` (bad
  dataset files, divergence) are one message and exit code 1.
  """
  user = USER_ERRORS + (compat.ConfigMismatchError,
                        checkpoints.CheckpointMismatchError,
                        run_lock.WorkdirLockedError,
                        run_config.ConfigChangedError)

  def guarded(argv):
    try:
      return main(argv)
    except user as e:
      exit_with_message(e, code=2)
    except (data_records.DataError,) + tuple(runtime_errors) as e:
      exit_with_message(e, code=1)

  module = sys.modules.get(main.__module__)
  app.run(guarded, flags_parser=lambda argv: _parse_flags(argv, module))


def _config_value(f):
  """``f.config`` with its overrides; a bad override is a ConfigError."""
  try:
    return f.config
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise config_lib.ConfigError(_override_message(f, e)) from None


def _override_message(f, error: Exception) -> str:
  text = str(error.args[0] if error.args else error).strip("'\"")
  text = text.replace("\\n", "\n").replace("\\'", "'")
  first, _, hint = text.partition("\n")
  missing = first.strip("'\"")
  names = [k for k in _override_names(f)
           if k == missing or missing in k.split(".")]
  where = f"--config.{names[0]}" if names else "a --config override"
  return (f"{where}: no such config key{(': ' + hint) if hint else ''}"
          if isinstance(error, (AttributeError, KeyError)) else
          f"{where}: {first}") + " (--print_config lists every key)"


def _override_names(f) -> list[str]:
  """The ``--config.<key>`` names given: from the parsed flag when there is
  one, else from the command line (a key the flag could not parse)."""
  if f is not None:
    try:
      return list(config_flags.get_override_values(f["config"]))
    except Exception:  # pylint: disable=broad-except
      pass
  return [a.split("=", 1)[0][len("--config."):] for a in sys.argv
          if a.startswith("--config.")]


def load_config(f, *, check_paths: bool = True, workdir: str | None = None):
  """The --config (with overrides), paths absolute, validated.

  Args:
    f: the parsed absl FLAGS.
    check_paths: require the dataset's files and folders to exist.
    workdir: for tools that read a workdir: without --config, the config the
      workdir recorded (``config_lib.recorded_config``) is used, with the
      --config.<key> overrides applied.
  """
  config = None
  if workdir is not None and not f["config"].present:
    config = config_lib.recorded_config(workdir)
    if config is not None:
      for key, value in config_flags.get_override_values(f["config"]).items():
        config_lib.set_override(config, key, value)
      log.info("config: the one recorded in %s", workdir)
  if config is None:
    config = _config_value(f)
    if isinstance(config, _config_flags_impl._ErrorConfig):  # pylint: disable=protected-access
      config.lock()  # Raises the error of the default config.
  config = paths.resolve_paths(config)
  if f.print_config:
    print(config_lib.describe(config))
    sys.exit(0)
  if workdir is not None and f["config"].present:
    _warn_other_paths(config, workdir)
  config_lib.validate(config, check_paths=check_paths)
  return config


def _warn_other_paths(config, workdir: str) -> None:
  """Logs the paths of an explicit --config that differ from the workdir's."""
  try:
    recorded = config_lib.recorded_config(workdir)
  except Exception:  # pylint: disable=broad-except
    return  # Reported, if it matters, when the checkpoint is read.
  if recorded is None or recorded.get("data", {}).get("name") != \
      config.data.name:
    return
  diffs = [f"{k}={paths.get(recorded, k)!r} (now {paths.get(config, k)!r})"
           for k in paths.PATH_KEYS if k.startswith("data.")
           and paths.get(recorded, k) != paths.get(config, k)]
  if diffs:
    log.warning("%s was trained with %s; leave out --config to use the "
                "config it recorded", workdir, ", ".join(diffs))


def workdir(f, *, must_exist: bool = False) -> str:
  """--workdir, or runs/<config file name without .py>; ``must_exist``
  (tools that read one): a missing folder is a :class:`UserError`."""
  if f.workdir:
    path = f.workdir
  else:
    config_file = config_flags.get_config_filename(f["config"])
    name = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
    path = os.path.join("runs", name)
  if must_exist and not os.path.isdir(path):
    raise UserError(f"--workdir={path}: no such folder (a train workdir, or "
                    f"a folder written by python -m frcnn_jax.weights "
                    f"convert)")
  return path


def exit_with_message(error: BaseException | str, code: int) -> None:
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
