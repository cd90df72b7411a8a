"""Training: the train state, the jitted step and the loop.

The step is one ``jax.jit`` over a pure function of ``(TrainState, batch)``:
the model is ``nnx.split`` into a static graph definition, the trainable
parameters (``nnx.Param`` minus the backbone's frozen blocks) and everything
else (frozen BatchNorm statistics, frozen parameters); ``nnx.merge`` rebuilds
it inside the step. The state is donated, replicated over a 1-D ``data`` mesh
of every device; the batch is sharded on ``data``. One process or many
(``jax.distributed``) run the same code.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from frcnn_jax import checkpoints
from frcnn_jax import compiler_options
from frcnn_jax import data as data_lib
from frcnn_jax import eval_lib
from frcnn_jax import metric_writers
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import parallel
from frcnn_jax import paths
from frcnn_jax import run_lock
from frcnn_jax import vis
from frcnn_jax import weights
from frcnn_jax.checkpoints import TrainState
from frcnn_jax.modeling import detector as detector_lib

log = logging.getLogger(__name__)


# -- state and step ------------------------------------------------------------

def create_train_state(model, tx, seed: int):
  graphdef, params, rest = detector_lib.split_model(model)
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
                           jnp.isfinite(grad_norm) &
                           checkpoints.tree_all_finite(params)))
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state), metrics

  return train_step


def jit_train_step(train_step, mesh, state_shardings=None):
  """``jax.jit`` with the state replicated and donated, batch on ``data``."""
  rep = parallel.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings or rep,
                               parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings or rep, rep),
                 donate_argnums=0,
                 compiler_options=compiler_options.detector_options())


# -- the loop ------------------------------------------------------------------

def total_steps(config, steps_per_epoch: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return int(math.ceil(config.train.num_epochs * steps_per_epoch))


def _host_scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()
          if k != "finite"}


class NonFiniteLossError(FloatingPointError):
  """Training diverged; the message names the step and the last good
  checkpoint."""


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
  # Recorded absolute (config.json, checkpoint meta): eval and demo on this
  # workdir then read the same data from any directory.
  config = paths.resolve_paths(config)
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
    self.config, self.workdir = config, workdir
    self.pid, nproc = jax.process_index(), jax.process_count()
    self.mesh = parallel.create_mesh(config.mesh.num_devices)
    self.gbs = config.train.batch_size
    if self.gbs % self.mesh.size:
      raise ValueError(f"config.train.batch_size={self.gbs} must be a "
                       f"multiple of the number of devices ({self.mesh.size})")
    self.loader = data_lib.build_train_loader(
        config.data, seed=config.seed, global_batch_size=self.gbs,
        process_index=self.pid, process_count=nproc)
    self.steps = total_steps(config, self.loader.steps_per_epoch)
    self.tx, schedule = optimizer_lib.make_optimizer(config.optimizer,
                                       self.loader.steps_per_epoch)
    self.ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_dir(workdir),
                             max_to_keep=config.checkpoint.max_to_keep,
                             async_save=config.checkpoint.async_save)
    model = detector_lib.build_detector(config, self.loader.num_classes)
    _, params, _ = detector_lib.split_model(model)
    self.abstract_train = checkpoints.abstract_like(
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
      self.eval_loader = data_lib.build_eval_loader(
          config.data, config.data.val_split,
          batch_size=config.test.batch_size, process_index=self.pid,
          process_count=nproc)
      self.predict_fn = eval_lib.make_predict_fn(self.graphdef, self.mesh)

  # -- state -----------------------------------------------------------------

  def _fresh_state(self, model):
    weights.initialize_model(model, self.config)
    graphdef, state = create_train_state(model, self.tx, self.config.seed)
    return graphdef, jax.device_put(state, parallel.replicated(self.mesh)), 0

  def _restore(self, model):
    """``(graphdef, state, step)`` of the newest usable checkpoint, or None."""
    got = self.ckpt.restore(model, self.abstract_train, repair=True)
    if got is None:
      return None
    step, train_items, meta = got
    graphdef, params, rest = detector_lib.split_model(model)
    state = TrainState(step=train_items["step"], params=params, rest=rest,
                       opt_state=train_items["opt_state"],
                       rng=train_items["rng"])
    self.loader.set_state(meta["data_iter"])
    log.info("resumed from step %d of %s", step, self.ckpt.directory)
    return graphdef, jax.device_put(state, parallel.replicated(self.mesh)), step

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
    return position, parallel.global_batch(next(self.loader), self.mesh)

  def _evaluate(self, done: int) -> dict:
    m = eval_lib.evaluate(
        self.predict_fn, self.state.params, self.state.rest, self.eval_loader,
        self.mesh, metric=self.config.test.metric,
        max_images=self.config.train.eval_max_images or None,
        desc=f"eval@{done}",
        coco_evaluator=self.config.test.get("coco_evaluator", "pycocotools"))
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
