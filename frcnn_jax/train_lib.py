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
  """

  def train_step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.rest)
      return model.loss(batch, key)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux, grad_norm=optax.global_norm(grads),
                   lr=schedule(state.step))
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


class Checkpointer:
  """orbax ``CheckpointManager`` for the train state and a JSON ``meta``.

  A step folder holds three items: ``model`` (every variable of the detector,
  :func:`model_pure_dict`: all that inference needs, and what ``python -m
  frcnn_jax.weights convert`` writes), ``train`` (``{'step', 'opt_state',
  'rng'}``) and ``meta`` (JSON: data iterator state, class names, config), so
  a restart resumes the data exactly where the checkpoint was taken. Writes
  are asynchronous (arrays are copied to host memory before :meth:`save`
  returns); orbax finalises a step atomically, so a run killed mid-write
  leaves only a temporary folder that the next run ignores. A finalised
  checkpoint that fails to restore (corrupted files) is reported with a
  warning and the previous one is used.
  """

  def __init__(self, directory: str, *, max_to_keep: int | None = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only))

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

  def _restore_newest(self, step, make_args):
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {self.directory} "
            f"(available: {steps or 'none'})")
      steps = [step]
    errors = []
    for s in reversed(steps):
      try:
        out = self.manager.restore(s, args=make_args())
        if errors:
          log.warning("using the checkpoint of step %d instead", s)
        return s, out
      except Exception as e:  # pylint: disable=broad-except
        msg = f"checkpoint {self.directory}/{s} cannot be restored: {e!r}"
        log.warning(msg)
        errors.append(msg)
    if errors:
      raise RuntimeError("no readable checkpoint:\n" + "\n".join(errors))
    return None

  def restore(self, model, abstract_train: dict, step: int | None = None,
              sharding=None):
    """Restores a training run: the model in place, and the rest.

    Args:
      model: the detector; its variables are overwritten.
      abstract_train: ``{'step', 'opt_state', 'rng'}`` of abstract arrays.
      step: a step, or None for the newest readable one.
      sharding: sharding of the restored model arrays.

    Returns:
      ``(step, train, meta)``, or ``None`` when there is no checkpoint.

    Raises:
      FileNotFoundError: ``step`` was given and does not exist.
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
    got = self._restore_newest(step, lambda: ocp.args.Composite(
        model=ocp.args.StandardRestore(target),
        train=ocp.args.StandardRestore(abstract_train),
        meta=ocp.args.JsonRestore()))
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
    got = self._restore_newest(step, lambda: ocp.args.Composite(
        model=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
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
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


class NonFiniteLossError(FloatingPointError):
  pass


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) ``config`` in ``workdir``.

  Resumes from the newest readable checkpoint in ``workdir/checkpoints``
  (model, optimizer, step, RNG and data position); otherwise starts from
  ``config.init_from`` / the backbone's pretrained weights / scratch.

  Returns:
    the last logged metrics (and the final evaluation, if any).
  """
  # Imported here: the data package and the weights module are only needed
  # by the loop, and importing them has a cost.
  from frcnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from frcnn_jax import eval_lib  # pylint: disable=g-import-not-at-top
  from frcnn_jax import metric_writers  # pylint: disable=g-import-not-at-top
  from frcnn_jax import vis  # pylint: disable=g-import-not-at-top
  from frcnn_jax import weights  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  pid, nproc = jax.process_index(), jax.process_count()
  os.makedirs(workdir, exist_ok=True)
  mesh = create_mesh(config.mesh.num_devices)
  gbs = config.train.batch_size
  if gbs % mesh.size:
    raise ValueError(f"config.train.batch_size={gbs} must be a multiple of "
                     f"the number of devices ({mesh.size})")
  loader = data_lib.build_train_loader(
      config.data, seed=config.seed, global_batch_size=gbs,
      process_index=pid, process_count=nproc)
  steps = total_steps(config, loader.steps_per_epoch)

  model = detector_lib.build_detector(config, loader.num_classes)
  tx, schedule = make_optimizer(config.optimizer, loader.steps_per_epoch)
  ckpt = Checkpointer(checkpoint_dir(workdir),
                      max_to_keep=config.checkpoint.max_to_keep,
                      async_save=config.checkpoint.async_save)
  _, params, _ = split_model(model)
  abstract_train = abstract_like(
      {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(params),
       "rng": jax.random.key_data(jax.random.key(0))})
  del params
  restored = ckpt.restore(model, abstract_train)
  start = 0
  if restored is None:
    weights.initialize_model(model, config)
    graphdef, state = create_train_state(model, tx, config.seed)
  else:
    start, train_items, meta = restored
    graphdef, params, rest = split_model(model)
    state = TrainState(step=train_items["step"], params=params, rest=rest,
                       opt_state=train_items["opt_state"],
                       rng=train_items["rng"])
    loader.set_state(meta["data_iter"])
    log.info("resumed from step %d of %s", start, ckpt.directory)
  del model
  state = jax.device_put(state, replicated(mesh))
  step_fn = jit_train_step(make_train_step(graphdef, tx, schedule), mesh)

  writer = metric_writers.MetricWriter(
      workdir, process_index=pid,
      resume_step=start if restored is not None else None)
  if pid == 0 and restored is None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))

  eval_loader = predict_fn = None
  if config.train.eval_every > 0:
    eval_loader = data_lib.build_eval_loader(
        config.data, config.data.val_split, batch_size=config.test.batch_size,
        process_index=pid, process_count=nproc)
    predict_fn = eval_lib.make_predict_fn(graphdef, mesh)

  def save(step, force=False):
    ckpt.save(step, state, {"data_iter": loader.get_state(),
                            "class_names": list(loader.class_names),
                            "config": config.to_json_best_effort()},
              force=force)

  last: dict[str, Any] = {}
  t_last, n_last = time.perf_counter(), start
  bar = tqdm(total=steps, initial=start, unit="step", desc="train",
             disable=pid != 0, dynamic_ncols=True)
  try:
    for step in range(start, steps):
      batch = global_batch(next(loader), mesh)
      state, metrics = step_fn(state, batch)
      done = step + 1
      bar.update(1)
      if done % config.train.log_every == 0 or done == steps:
        last = _host_scalars(metrics)
        if not math.isfinite(last["loss_total"]):
          raise NonFiniteLossError(
              f"non-finite loss at step {done}: {last}. Nothing was saved "
              f"for this step; lower optimizer.lr or enable "
              f"optimizer.grad_clip_norm.")
        now = time.perf_counter()
        last["images_per_sec"] = (done - n_last) * gbs / max(now - t_last,
                                                             1e-9)
        t_last, n_last = now, done
        last["epoch"] = done / loader.steps_per_epoch
        writer.write_scalars(done, last)
        bar.set_postfix(loss=f"{last['loss_total']:.3f}",
                        img_s=f"{last['images_per_sec']:.1f}",
                        lr=f"{last['lr']:.2g}")
      if done % config.checkpoint.every_steps == 0 and done != steps:
        save(done)
      if eval_loader is not None and (done % config.train.eval_every == 0
                                      or done == steps):
        m = eval_lib.evaluate(
            predict_fn, state.params, state.rest, eval_loader, mesh,
            metric=config.test.metric,
            max_images=config.train.eval_max_images or None,
            desc=f"eval@{done}")
        writer.write_scalars(done, eval_lib.headline(m))
        last["eval"] = m
        t_last = time.perf_counter()  # do not count evaluation as training
    if steps > start or not ckpt.all_steps():
      save(steps, force=True)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
    loader.close()
  if pid == 0:
    vis.plot_loss_curves(os.path.join(workdir, "metrics.jsonl"),
                         os.path.join(workdir, "loss_curves.png"))
  return last
