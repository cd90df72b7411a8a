"""Training: state, optimizer, the jitted step, checkpoints and the loop.

The step is one ``jax.jit`` over a pure function of ``(TrainState, batch)``:
the model is ``nnx.split`` into a static graph definition, the trainable
parameters (``nnx.Param`` minus the backbone's frozen blocks) and everything
else (frozen BatchNorm statistics, frozen parameters); ``nnx.merge`` rebuilds
it inside the step. The state is donated, replicated over a 1-D ``data`` mesh
of every device; the batch is sharded on ``data``. One process or many
(``jax.distributed``) run the same code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from frcnn_jax import compiler_options
from frcnn_jax import run_lock
from frcnn_jax import detector as detector_lib

log = logging.getLogger(__name__)


# -- devices -------------------------------------------------------------------

def create_mesh(num_devices: int = -1) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices.

  Axis type Auto: the step is written for a single device and XLA's SPMD
  partitioner splits it along the batch.
  """
  devices = jax.devices()
  if num_devices > 0:
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's part of a batch -> a global array sharded on ``data``."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


# -- state ---------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree of arrays."""
  step: jax.Array          # int32 []
  params: Any              # nnx.State of the trainable parameters
  rest: Any                # nnx.State of everything else (frozen)
  opt_state: Any
  rng: jax.Array           # uint32 [2]: key data of the run's base key


def tree_all_finite(tree) -> jax.Array:
  """bool []: every element of every array leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def trainable_filter(model: detector_lib.FasterRCNN):
  """``nnx.Param`` minus the backbone's frozen parameters."""
  frozen = model.backbone.frozen_filter()
  return nnx.All(nnx.Param, nnx.Not(frozen))


def split_model(model):
  """``(graphdef, trainable params, rest)``."""
  return nnx.split(model, trainable_filter(model), ...)


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "name", last)))


def _is_bias(path, _) -> bool:
  return _leaf_name(path) == "bias"


def make_schedule(opt: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> optax.Schedule:
  """Warmup (linear from ``warmup_factor * lr``) then step decay by ``gamma``.

  Decay points are ``opt.lr_decay_steps`` (steps) or, if empty,
  ``opt.lr_decay_epochs`` times ``steps_per_epoch`` — the seed's
  ``--lr_decay_step`` counts epochs.
  """
  lr = opt.lr * (0.1 if opt.name == "adam" and opt.adam_lr_scale else 1.0)
  points = list(opt.lr_decay_steps) or [
      int(e * steps_per_epoch) for e in opt.lr_decay_epochs]
  decay = optax.piecewise_constant_schedule(
      lr, {int(p): opt.gamma for p in points if p > 0})
  if opt.warmup_steps <= 0:
    return decay
  warm = optax.linear_schedule(lr * opt.warmup_factor, lr, opt.warmup_steps)
  return lambda step: jnp.where(step < opt.warmup_steps, warm(step),
                                decay(step))


def make_optimizer(opt: ml_collections.ConfigDict, steps_per_epoch: int):
  """The seed's optimizer as an optax chain; returns ``(tx, schedule)``.

  SGD with momentum (PyTorch's form: decay added to the gradient, then the
  momentum trace) or Adam (the seed's ``--o adam`` uses 0.1x the lr). Weight
  decay skips biases unless ``bias_decay``; ``double_bias`` doubles the
  biases' learning rate; ``grad_clip_norm > 0`` clips the global norm first.
  """
  schedule = make_schedule(opt, steps_per_epoch)
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0:
    mask = None if opt.bias_decay else (
        lambda tree: jax.tree_util.tree_map_with_path(
            lambda p, x: not _is_bias(p, x), tree))
    parts.append(optax.add_decayed_weights(opt.weight_decay, mask=mask))
  if opt.name == "sgd":
    parts.append(optax.trace(decay=opt.momentum, nesterov=False))
  elif opt.name == "adam":
    parts.append(optax.scale_by_adam())
  else:
    raise ValueError(f"config.optimizer.name must be 'sgd' or 'adam', got "
                     f"{opt.name!r}")
  parts.append(optax.scale_by_learning_rate(schedule))
  if opt.double_bias:
    parts.append(optax.masked(
        optax.scale(2.0),
        lambda tree: jax.tree_util.tree_map_with_path(_is_bias, tree)))
  return optax.chain(*parts), schedule


def create_train_state(model, tx, seed: int):
  graphdef, params, rest = split_model(model)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, rest=rest,
      opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def make_train_step(graphdef, tx, schedule) -> Callable:
  """The pure step ``(state, batch) -> (state, metrics)``.

  Randomness for sampling and dropout is ``fold_in(base key, step)``, so a
  resumed run draws exactly what an uninterrupted one would have.

  ``metrics['finite']`` (bool) says that the loss, the gradient norm and
  every updated parameter are finite: the loop reads it before any state
  is logged or saved, so a diverged state never reaches a checkpoint.
  """

  def train_step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.rest)
      return model.loss(batch, key)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics = dict(aux, grad_norm=grad_norm, lr=schedule(state.step),
                   finite=(jnp.isfinite(aux["loss_total"]) &
                           jnp.isfinite(grad_norm) & tree_all_finite(params)))
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state), metrics

  return train_step


def jit_train_step(train_step, mesh, state_shardings=None):
  """``jax.jit`` with the state replicated and donated, batch on ``data``."""
  rep = replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings or rep, batch_sharding(mesh)),
                 out_shardings=(state_shardings or rep, rep),
                 donate_argnums=0,
                 compiler_options=compiler_options.detector_options())


# -- checkpoints ---------------------------------------------------------------

def model_pure_dict(model_or_states) -> dict:
  """The whole model's variables as a nested dict of arrays.

  Independent of which variables are trainable (a checkpoint restores into a
  config with other ``fixed_blocks``) and of nnx variable types.
  """
  if isinstance(model_or_states, nnx.Module):
    state = nnx.state(model_or_states)
  else:
    state = nnx.merge_state(*model_or_states)
  return nnx.to_pure_dict(state)


def load_pure_dict(model, pure: dict) -> None:
  """Writes ``pure`` (from :func:`model_pure_dict`) into ``model``."""
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


class CheckpointMismatchError(ValueError):
  """A readable checkpoint that does not fit this model (another config)."""


def _flat_shapes(tree) -> dict[str, tuple]:
  """``'a/b/0' -> shape`` of every array leaf (keys as strings, as stored)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(
        k, "idx", k)))) for k in path)
    out[key] = tuple(getattr(leaf, "shape", ()))
  return out


def _shape_differences(stored: dict, wanted: dict, limit: int = 8) -> str:
  lines = []
  for k in sorted(set(stored) | set(wanted)):
    if k not in wanted:
      lines.append(f"{k}: in the checkpoint only {stored[k]}")
    elif k not in stored:
      lines.append(f"{k}: not in the checkpoint (this model: {wanted[k]})")
    elif stored[k] != wanted[k]:
      lines.append(f"{k}: {stored[k]} in the checkpoint, {wanted[k]} now")
  more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
  return "\n  ".join(lines[:limit]) + more


class Checkpointer:
  """orbax ``CheckpointManager`` for the train state and a JSON ``meta``.

  A step folder holds three items: ``model`` (every variable of the detector,
  :func:`model_pure_dict`: all that inference needs, and what ``python -m
  frcnn_jax.weights convert`` writes), ``train`` (``{'step', 'opt_state',
  'rng'}``) and ``meta`` (JSON: data iterator state, class names, config), so
  a restart resumes the data exactly where the checkpoint was taken. Writes
  are asynchronous (arrays are copied to host memory before :meth:`save`
  returns); orbax finalises a step atomically, so a run killed mid-write
  leaves only a temporary folder, which the next writer removes.

  Restoring takes the newest step that reads back. A step that does not
  (truncated or missing files, a cut JSON) is *unreadable*; with
  ``repair=True`` (training) it is moved aside to
  ``<checkpoints>.unreadable/<step>-<time>`` — renamed, never deleted — so
  that the run saves that step again normally; read-only users (eval, demo)
  only skip it. A step that reads back but does not fit the model (written
  with another config) is not damage: it raises
  :class:`CheckpointMismatchError` naming the differing arrays, and nothing
  is moved.
  """

  ITEMS = ("model", "train", "meta")

  def __init__(self, directory: str, *, max_to_keep: int | None = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self.manager = self._open(max_to_keep, async_save)

  def _open(self, max_to_keep, async_save):
    return ocp.CheckpointManager(
        self.directory,
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "train": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not self.read_only,
            read_only=self.read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not self.read_only))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: TrainState, meta: dict,
           force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model_pure_dict((state.params,
                                                     state.rest))),
        train=ocp.args.StandardSave({"step": state.step,
                                     "opt_state": state.opt_state,
                                     "rng": state.rng}),
        meta=ocp.args.JsonSave(meta)), force=force)

  # -- reading ---------------------------------------------------------------

  def _stored_shapes(self, step: int, item: str) -> dict[str, tuple]:
    md = self.manager.item_metadata(step)[item]
    if md is None:
      raise ValueError(f"no metadata for item {item!r}")
    return _flat_shapes(getattr(md, "tree", md))

  def _reads_back(self, step: int, items: tuple[str, ...]) -> str | None:
    """None if ``step``'s items restore in their own stored shapes, else why.

    Restores onto one device with the stored shapes and dtypes, so a
    checkpoint written on another device layout is not mistaken for damage.
    """
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
      md = self.manager.item_metadata(step)
      args = {}
      for item in items:
        if item == "meta":
          args[item] = ocp.args.JsonRestore()
          continue
        tree = getattr(md[item], "tree", md[item])
        args[item] = ocp.args.StandardRestore(jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            tree))
      self.manager.restore(step, args=ocp.args.Composite(**args))
      return None
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {e}"

  def move_aside(self, step: int, why: str) -> str:
    """Renames step ``step``'s folder out of the manager's sight; returns where.

    Process 0 renames (the folder is shared); every process then re-reads
    the step list.
    """
    src = os.path.join(self.directory, str(step))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dst = os.path.join(self.directory + ".unreadable", f"{step}-{stamp}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.rename(src, dst)
      with open(os.path.join(dst, "WHY.txt"), "w") as f:
        f.write(why + "\n")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"frcnn_jax_move_aside_{step}")
    self.manager.reload()
    log.warning("checkpoint step %d moved aside to %s: %s", step, dst, why)
    return dst

  def _restore_newest(self, step, items, targets: dict, repair: bool,
                      check_finite: bool = False):
    """``(step, restored items)`` of the newest usable step, or None."""
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {self.directory} "
            f"(available: {steps or 'none'})")
      steps = [step]
    skipped = []
    for s in reversed(steps):
      self._check_shapes(s, targets)
      args = {k: (ocp.args.JsonRestore() if k == "meta" else
                  ocp.args.StandardRestore(targets[k])) for k in items}
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(**args))
      except Exception as e:  # pylint: disable=broad-except
        why = self._reads_back(s, items)
        if why is None:
          raise self._mismatch(s, targets, e) from None
        out, why = None, f"unreadable ({why[:300]})"
      else:
        why = None
        if check_finite and not bool(tree_all_finite(out["model"])):
          why = "holds non-finite parameters"
      if why is None:
        if skipped:
          log.warning("using the checkpoint of step %d instead", s)
        return s, out
      msg = f"checkpoint {self.directory}/{s} cannot be restored: {why}"
      skipped.append(msg)
      if repair and not self.read_only:
        self.move_aside(s, msg)
      else:
        log.warning(msg)
    if skipped:
      raise RuntimeError("no readable checkpoint:\n" + "\n".join(skipped))
    return None

  def _check_shapes(self, step: int, targets: dict) -> None:
    """Raises CheckpointMismatchError when a stored array has another shape.

    Only from metadata (cheap), and only for arrays both trees have: other
    differences of the trees are judged by the restore itself. Unreadable
    metadata is left for the restore to report as damage.
    """
    for item, target in targets.items():
      try:
        stored = self._stored_shapes(step, item)
      except Exception:  # pylint: disable=broad-except
        return
      wanted = _flat_shapes(target)
      if any(stored[k] != wanted[k] for k in stored.keys() & wanted.keys()):
        raise self._mismatch(step, targets, None)

  def _mismatch(self, step, targets, error) -> CheckpointMismatchError:
    parts = []
    for item, target in targets.items():
      try:
        diff = _shape_differences(self._stored_shapes(step, item),
                                  _flat_shapes(target))
      except Exception:  # pylint: disable=broad-except
        diff = ""
      if diff:
        parts.append(f"{item}:\n  {diff}")
    detail = "\n".join(parts) or f"{type(error).__name__}: {error}"[:600]
    return CheckpointMismatchError(
        f"checkpoint {self.directory}/{step} was written by a model of "
        f"other shapes than this config builds (nothing was changed on "
        f"disk):\n{detail}\nRun with the config it was trained with (its "
        f"config.json), or start a new --workdir.")

  def restore(self, model, abstract_train: dict, step: int | None = None,
              sharding=None, repair: bool = False):
    """Restores a training run: the model in place, and the rest.

    Args:
      model: the detector; its variables are overwritten.
      abstract_train: ``{'step', 'opt_state', 'rng'}`` of abstract arrays.
      step: a step, or None for the newest usable one.
      sharding: sharding of the restored model arrays.
      repair: move unreadable or non-finite steps aside (training).

    Returns:
      ``(step, train, meta)``, or ``None`` when there is no checkpoint.

    Raises:
      FileNotFoundError: ``step`` was given and does not exist.
      CheckpointMismatchError: the checkpoint belongs to another config.
      RuntimeError: checkpoints exist but none can be read.
    """
    target = abstract_like(model_pure_dict(model), sharding)
    steps = self.all_steps()
    if steps and not os.path.isdir(os.path.join(self.directory,
                                                str(steps[-1]), "train")):
      raise ValueError(
          f"{self.directory} holds converted weights without a training "
          f"state; start a new workdir with --config.init_from="
          f"{os.path.dirname(self.directory)}")
    got = self._restore_newest(
        step, self.ITEMS, {"model": target, "train": abstract_train},
        repair=repair, check_finite=repair)
    if got is None:
      return None
    s, out = got
    load_pure_dict(model, out["model"])
    return s, out["train"], out["meta"]

  def restore_model(self, model, step: int | None = None, sharding=None):
    """Restores only the model, in place (inference, or initialising).

    Returns:
      ``(step, meta)``, or ``None`` when there is no checkpoint.
    """
    target = abstract_like(model_pure_dict(model), sharding)
    got = self._restore_newest(step, ("model", "meta"), {"model": target},
                               repair=False)
    if got is None:
      return None
    s, out = got
    load_pure_dict(model, out["model"])
    return s, out["meta"]

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON ``meta`` of ``step`` (default: newest); {} if there is none."""
    steps = self.all_steps()
    if not steps:
      return {}
    step = steps[-1] if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, sharding=None):
  """``jax.ShapeDtypeStruct`` twin of ``tree`` (for restoring)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


# -- the loop ------------------------------------------------------------------

def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def total_steps(config, steps_per_epoch: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return int(math.ceil(config.train.num_epochs * steps_per_epoch))


def _host_scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()
          if k != "finite"}


class NonFiniteLossError(FloatingPointError):
  """Training diverged; the message names the step and the last good checkpoint."""


class _NonFiniteStep(Exception):
  """Raised inside the loop; the loop stops or rolls back."""

  def __init__(self, step: int, position: int, values: dict):
    super().__init__(step)
    self.step, self.position, self.values = step, position, values


def take_lock(workdir: str) -> run_lock.WorkdirLock | None:
  """The workdir lock for this run: process 0 holds it for every process.

  Raises:
    run_lock.WorkdirLockedError: another live run holds it (every process
      raises; process 0's message names the holder).
  """
  pid, nproc = jax.process_index(), jax.process_count()
  lock, error = None, ""
  if pid == 0:
    try:
      lock = run_lock.WorkdirLock(workdir, num_processes=nproc).acquire()
    except run_lock.WorkdirLockedError as e:
      error = str(e)
  if nproc > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(not error))
    if not int(ok) and not error:
      error = (f"{workdir} is in use by another training run (process 0 "
               f"names it)")
  if error:
    raise run_lock.WorkdirLockedError(error)
  return lock


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) ``config`` in ``workdir``.

  Resumes from the newest usable checkpoint in ``workdir/checkpoints``
  (model, optimizer, step, RNG and data position); otherwise starts from
  ``config.init_from`` / the backbone's pretrained weights / scratch. One run
  per workdir: a second one is refused (:mod:`frcnn_jax.run_lock`).

  Returns:
    the last logged metrics (and the final evaluation, if any).

  Raises:
    NonFiniteLossError: the loss or the parameters became non-finite (and
      ``train.nonfinite_rollbacks`` rollbacks did not help); nothing
      non-finite was saved and the message names the last good checkpoint.
    run_lock.WorkdirLockedError: another run holds the workdir.
    CheckpointMismatchError: the workdir's checkpoints belong to another
      config.
  """
  os.makedirs(workdir, exist_ok=True)
  lock = take_lock(workdir)
  try:
    return _Trainer(config, workdir).run()
  finally:
    if lock is not None:
      lock.release()


class _Trainer:
  """One training run in a locked workdir: setup, the loop, its side work."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    # Imported here: the data package and the weights module are only needed
    # by the loop, and importing them has a cost.
    from frcnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from frcnn_jax import metric_writers  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    self.pid, nproc = jax.process_index(), jax.process_count()
    self.mesh = create_mesh(config.mesh.num_devices)
    self.gbs = config.train.batch_size
    if self.gbs % self.mesh.size:
      raise ValueError(f"config.train.batch_size={self.gbs} must be a "
                       f"multiple of the number of devices ({self.mesh.size})")
    self.loader = data_lib.build_train_loader(
        config.data, seed=config.seed, global_batch_size=self.gbs,
        process_index=self.pid, process_count=nproc)
    self.steps = total_steps(config, self.loader.steps_per_epoch)
    self.tx, schedule = make_optimizer(config.optimizer,
                                       self.loader.steps_per_epoch)
    self.ckpt = Checkpointer(checkpoint_dir(workdir),
                             max_to_keep=config.checkpoint.max_to_keep,
                             async_save=config.checkpoint.async_save)
    model = detector_lib.build_detector(config, self.loader.num_classes)
    _, params, _ = split_model(model)
    self.abstract_train = abstract_like(
        {"step": jnp.zeros((), jnp.int32), "opt_state": self.tx.init(params),
         "rng": jax.random.key_data(jax.random.key(0))})
    del params
    restored = self._restore(model)
    if restored is None:
      self.graphdef, self.state, self.start = self._fresh_state(model)
    else:
      self.graphdef, self.state, self.start = restored
    del model
    self.step_fn = jit_train_step(
        make_train_step(self.graphdef, self.tx, schedule), self.mesh)
    # A run that starts over (no usable checkpoint) forgets the metrics of
    # earlier attempts too, so every step is in metrics.jsonl once.
    self.writer = metric_writers.MetricWriter(
        workdir, process_index=self.pid, resume_step=self.start)
    if self.pid == 0 and restored is None:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    self.skipped: list[int] = []
    self.rollbacks_left = int(config.train.nonfinite_rollbacks)
    self.eval_loader = self.predict_fn = None
    if config.train.eval_every > 0:
      from frcnn_jax import eval_lib  # pylint: disable=g-import-not-at-top
      self.eval_loader = data_lib.build_eval_loader(
          config.data, config.data.val_split,
          batch_size=config.test.batch_size, process_index=self.pid,
          process_count=nproc)
      self.predict_fn = eval_lib.make_predict_fn(self.graphdef, self.mesh)

  # -- state -----------------------------------------------------------------

  def _fresh_state(self, model):
    from frcnn_jax import weights  # pylint: disable=g-import-not-at-top
    weights.initialize_model(model, self.config)
    graphdef, state = create_train_state(model, self.tx, self.config.seed)
    return graphdef, jax.device_put(state, replicated(self.mesh)), 0

  def _restore(self, model):
    """``(graphdef, state, step)`` of the newest usable checkpoint, or None."""
    got = self.ckpt.restore(model, self.abstract_train, repair=True)
    if got is None:
      return None
    step, train_items, meta = got
    graphdef, params, rest = split_model(model)
    state = TrainState(step=train_items["step"], params=params, rest=rest,
                       opt_state=train_items["opt_state"],
                       rng=train_items["rng"])
    self.loader.set_state(meta["data_iter"])
    log.info("resumed from step %d of %s", step, self.ckpt.directory)
    return graphdef, jax.device_put(state, replicated(self.mesh)), step

  def _save(self, step: int, force: bool = False) -> None:
    # What was logged up to a checkpoint is on disk before it: a run killed
    # later resumes there and must find those steps (TensorBoard otherwise
    # buffers up to flush_secs).
    self.writer.flush()
    self.ckpt.save(step, self.state, {
        "data_iter": self.loader.get_state(),
        "class_names": list(self.loader.class_names),
        "config": self.config.to_json_best_effort(),
        "skipped_batches": list(self.skipped)}, force=force)

  # -- non-finite steps ------------------------------------------------------

  def _check(self, step: int, position: int, metrics: dict) -> None:
    if not bool(jax.device_get(metrics["finite"])):
      raise _NonFiniteStep(step, position, _host_scalars(metrics))

  def _last_good(self) -> str:
    self.ckpt.wait()
    steps = self.ckpt.all_steps()
    if not steps:
      return "there is no checkpoint yet"
    return (f"the last good checkpoint is step {steps[-1]} in "
            f"{self.ckpt.directory} (only finite states are saved)")

  def _on_non_finite(self, bad: _NonFiniteStep) -> None:
    """Rolls back to the last good checkpoint, or raises NonFiniteLossError."""
    values = ", ".join(f"{k}={v:.4g}" for k, v in bad.values.items()
                       if k.startswith("loss") or k == "grad_norm")
    what = f"non-finite loss or parameters at step {bad.step} ({values})"
    if self.rollbacks_left <= 0:
      raise NonFiniteLossError(
          f"training stopped: {what}. Nothing after it was saved; "
          f"{self._last_good()}. Lower optimizer.lr or set "
          f"optimizer.grad_clip_norm; or set train.nonfinite_rollbacks=N to "
          f"roll back to the last good checkpoint, skip the batch and go on "
          f"(up to N times).")
    self.rollbacks_left -= 1
    self.skipped.append(bad.position)
    _, ids = self.loader.global_batch_plan(bad.position)
    self.ckpt.wait()
    if self.ckpt.all_steps():
      model = nnx.merge(self.graphdef, self.state.params, self.state.rest)
      self.graphdef, self.state, self.start = self._restore(model)
    else:  # Diverged before the first checkpoint: start over.
      model = detector_lib.build_detector(self.config,
                                          self.loader.num_classes)
      self.graphdef, self.state, self.start = self._fresh_state(model)
      self.loader.set_state(dict(self.loader.get_state(), step=0))
    self.writer.rewind(self.start)
    log.warning("%s: rolled back to step %d and will skip the batch at data "
                "position %d (image ids %s); %d rollback(s) left", what,
                self.start, bad.position, ids.tolist(), self.rollbacks_left)

  # -- the loop --------------------------------------------------------------

  def _is_sync_step(self, done: int) -> bool:
    c = self.config
    return (done % c.train.log_every == 0 or done == self.steps or
            done % c.checkpoint.every_steps == 0 or
            (c.train.eval_every > 0 and done % c.train.eval_every == 0))

  def _next_batch(self) -> tuple[int, dict]:
    while self.loader.step in self.skipped:
      self.loader.skip()
    position = self.loader.step
    return position, global_batch(next(self.loader), self.mesh)

  def _evaluate(self, done: int) -> dict:
    from frcnn_jax import eval_lib  # pylint: disable=g-import-not-at-top
    m = eval_lib.evaluate(
        self.predict_fn, self.state.params, self.state.rest, self.eval_loader,
        self.mesh, metric=self.config.test.metric,
        max_images=self.config.train.eval_max_images or None,
        desc=f"eval@{done}")
    self.writer.write_scalars(done, eval_lib.headline(m))
    return m

  def _loop(self, bar) -> dict[str, Any]:
    """Steps from ``self.start`` to the end; raises _NonFiniteStep.

    The finite flag of step n is read after step n + 1 is dispatched (so the
    host keeps a step ahead of the device) and at once before anything of
    step n is logged, evaluated or saved.
    """
    c = self.config
    last: dict[str, Any] = {}
    t_last, n_last = time.perf_counter(), self.start
    bar.reset(total=self.steps)
    bar.update(self.start)
    pending = None
    for step in range(self.start, self.steps):
      position, batch = self._next_batch()
      self.state, metrics = self.step_fn(self.state, batch)
      done = step + 1
      bar.update(1)
      if pending is not None:
        self._check(*pending)
      pending = (done, position, metrics)
      if not self._is_sync_step(done):
        continue
      self._check(*pending)
      pending = None
      if done % c.train.log_every == 0 or done == self.steps:
        last = _host_scalars(metrics)
        now = time.perf_counter()
        last["images_per_sec"] = (done - n_last) * self.gbs / max(
            now - t_last, 1e-9)
        t_last, n_last = now, done
        last["epoch"] = done / self.loader.steps_per_epoch
        self.writer.write_scalars(done, last)
        bar.set_postfix(loss=f"{last['loss_total']:.3f}",
                        img_s=f"{last['images_per_sec']:.1f}",
                        lr=f"{last['lr']:.2g}")
      if done % c.checkpoint.every_steps == 0 and done != self.steps:
        self._save(done)
      if self.eval_loader is not None and (done % c.train.eval_every == 0 or
                                           done == self.steps):
        last["eval"] = self._evaluate(done)
        t_last = time.perf_counter()  # do not count evaluation as training
    if self.steps > self.start or not self.ckpt.all_steps():
      self._save(self.steps, force=True)
    return last

  def run(self) -> dict[str, Any]:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    from frcnn_jax import vis  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=self.steps, initial=self.start, unit="step",
               desc="train", disable=self.pid != 0, dynamic_ncols=True)
    try:
      while True:
        try:
          last = self._loop(bar)
          break
        except _NonFiniteStep as bad:
          self._on_non_finite(bad)
    finally:
      bar.close()
      self.ckpt.close()
      self.writer.close()
      self.loader.close()
    if self.pid == 0:
      vis.plot_loss_curves(os.path.join(self.workdir, "metrics.jsonl"),
                           os.path.join(self.workdir, "loss_curves.png"))
    return last
