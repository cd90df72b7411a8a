"""Training: the train state, the jitted step and the loop.

The step is one ``jax.jit`` over a pure function of ``(TrainState, batch)``:
the model is ``nnx.split`` into a static graph definition, the trainable
parameters (``nnx.Param`` minus the backbone's frozen blocks) and everything
else (frozen BatchNorm statistics, frozen parameters); ``nnx.merge`` rebuilds
it inside the step. The state is donated, replicated over a 1-D ``data`` mesh
of every device; the batch is sharded on ``data``. One process or many
(``jax.distributed``) run the same code.

What a run prints (process 0, stdout; :mod:`frcnn_jax.console`): a line
per ``train.log_every`` steps with every loss as its mean over the steps
since the previous line (summed on the device, fetched once per line), the
learning rate, images/s and the ETA measured without compilation and
evaluation time, and the time spent waiting for data; each evaluation's
pycocotools summary when it happens; a closing summary (steps, times, the
last AP, where everything was written, the command to evaluate). A
progress bar is drawn only on a terminal. metrics.jsonl and TensorBoard
get the same interval means, grouped as ``train/<name>`` and
``eval/<name>``.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from frcnn_jax import checkpoints
from frcnn_jax import compiler_options
from frcnn_jax import console
from frcnn_jax import data as data_lib
from frcnn_jax import eval_lib
from frcnn_jax import metric_writers
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import parallel
from frcnn_jax import paths
from frcnn_jax import run_config
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


# -- interval means -------------------------------------------------------------

# Step metrics that are not averaged over a log interval: the finite flag
# (checked every step) and the learning rate (the last step's is logged).
_NOT_AVERAGED = ("finite", "lr")


@jax.jit
def _interval_start(metrics: dict) -> dict:
  return {k: v.astype(jnp.float32) for k, v in metrics.items()
          if k not in _NOT_AVERAGED}


@jax.jit
def _interval_add(total: dict, metrics: dict) -> dict:
  return {k: total[k] + metrics[k].astype(jnp.float32) for k in total}


def next_eval_command(workdir: str, argv: Sequence[str] | None = None) -> str:
  """The command that evaluates what this training command trains.

  Keeps the ``--config`` file and every ``--config.*`` override of
  ``argv`` (default ``sys.argv``) and names ``workdir``; a program other
  than ``train.py`` (the Python API, a test) gives the generic form.
  """
  argv = list(sys.argv if argv is None else argv)
  prog = argv[0] if argv else ""
  keep, args = [], argv[1:]
  for i, a in enumerate(args):
    if a.startswith("--config"):
      if a == "--config" and i + 1 < len(args):
        a = f"--config={args[i + 1]}"
      keep.append(a)
  if os.path.basename(prog) == "train.py":
    if os.path.basename(os.path.dirname(os.path.abspath(prog))) == "frcnn_jax":
      head = ["python", "-m", "frcnn_jax.eval"]
    else:
      head = ["python", os.path.join(os.path.dirname(prog), "eval.py")]
  else:
    head = ["python", "eval.py"]
    if not any(a.startswith("--config=") or a == "--config" for a in keep):
      keep.insert(0, "--config=<the config file>")
  return " ".join(shlex.quote(a) if not a.startswith("--config=<") else a
                  for a in head + keep + [f"--workdir={workdir}"])


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


def train(config: ml_collections.ConfigDict, workdir: str, *,
          eval_command: str | None = None,
          allow_config_change: bool = False) -> dict[str, Any]:
  """Trains (or resumes training) ``config`` in ``workdir``.

  Resumes from the newest usable checkpoint in ``workdir/checkpoints``
  (model, optimizer, step, RNG and data position); otherwise starts from
  ``config.init_from`` / the backbone's pretrained weights / scratch. One run
  per workdir: a second one is refused (:mod:`frcnn_jax.run_lock`).

  ``eval_command``: what the closing summary proposes to run next (default:
  :func:`next_eval_command` of this process's command line). A resume with
  a config that differs where it matters is refused unless
  ``allow_config_change`` (:mod:`frcnn_jax.run_config`); every start is
  recorded in ``runs.jsonl`` and ``config.json``.

  Returns:
    the last logged metrics (and the final evaluation, if any).

  Raises:
    NonFiniteLossError: the loss or the parameters became non-finite (and
      ``train.nonfinite_rollbacks`` rollbacks did not help); nothing
      non-finite was saved and the message names the last good checkpoint.
    run_lock.WorkdirLockedError: another run holds the workdir.
    CheckpointMismatchError: the workdir's checkpoints belong to another
      config.
    run_config.ConfigChangedError: see ``allow_config_change``.
  """
  # Recorded absolute (config.json, checkpoint meta): eval and demo on this
  # workdir then read the same data from any directory.
  config = paths.resolve_paths(config)
  os.makedirs(workdir, exist_ok=True)
  lock = take_lock(workdir)
  try:
    return _Trainer(config, workdir, eval_command=eval_command,
                    allow_config_change=allow_config_change).run()
  finally:
    if lock is not None:
      lock.release()


class _Trainer:
  """One training run in a locked workdir: setup, the loop, its side work."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               eval_command: str | None = None,
               allow_config_change: bool = False):
    self.t_begin = time.perf_counter()
    self.config, self.workdir = config, workdir
    self.eval_command = eval_command or next_eval_command(workdir)
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
    changes = self._check_resume(allow_config_change)
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
    if self.pid == 0:
      run_config.record_start(workdir, config, step=self.start,
                              changes=changes if restored else None)
    self.skipped: list[int] = []
    self.rollbacks_left = int(config.train.nonfinite_rollbacks)
    self.eval_loader = self.predict_fn = self.best = self.best_kept = None
    self.first_step = self.start
    self.meter = console.RateMeter(self.gbs)
    self.shapes_seen: set[tuple[int, ...]] = set()
    self.eval_seconds: list[float] = []
    self.eval_timing: dict[str, Any] = {}
    self.last_eval: tuple[int, dict[str, float]] | None = None
    if config.train.eval_every > 0:
      self.eval_loader = data_lib.build_eval_loader(
          config.data, config.data.val_split,
          batch_size=config.test.batch_size, process_index=self.pid,
          process_count=nproc)
      self.predict_fn = eval_lib.make_predict_fn(self.graphdef, self.mesh)
      self.best = self._best_checkpoints()

  # -- state -----------------------------------------------------------------

  def _fresh_state(self, model):
    weights.initialize_model(model, self.config)
    graphdef, state = create_train_state(model, self.tx, self.config.seed)
    return graphdef, jax.device_put(state, parallel.replicated(self.mesh)), 0

  def _check_resume(self, allow: bool) -> dict:
    """The config's changes against the newest readable checkpoint's."""
    for step in reversed(self.ckpt.all_steps()):
      try:
        meta = checkpoints.read_step_meta(self.ckpt.directory, step)
      except Exception:  # pylint: disable=broad-except
        continue   # Unreadable: _restore moves it aside.
      if not meta.get("config"):
        return {}
      return run_config.resume_changes(
          meta["config"], self.config, workdir=self.workdir, step=step,
          allow_change=allow)
    return {}

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
    self.ckpt.save(step, self.state, dict(
        self._meta(), data_iter=self.loader.get_state(),
        skipped_batches=list(self.skipped)), force=force)

  def _best_checkpoints(self) -> checkpoints.BestCheckpoints | None:
    c = self.config.checkpoint
    if int(c.get("keep_best", 0)) <= 0:
      return None
    names = eval_lib.headline_names(self.config.test.metric)
    metric = c.get("best_metric", "") or names[0]
    if metric not in names:
      raise ValueError(
          f"config.checkpoint.best_metric={metric!r}: with test.metric="
          f"{self.config.test.metric!r} it must be one of {list(names)}")
    best = checkpoints.BestCheckpoints(
        os.path.join(checkpoints.best_dir(self.workdir),
                     checkpoints.CHECKPOINTS),
        keep=int(c.keep_best), metric=metric, async_save=c.async_save)
    best.forget_after(self.start)
    return best

  def _meta(self) -> dict:
    return {"class_names": list(self.loader.class_names),
            "config": self.config.to_json_best_effort()}

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
    if self.best is not None:
      self.best.forget_after(self.start)
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

  def _evaluate(self, done: int, progress: console.Progress) -> dict:
    self.meter.pause()
    t = time.perf_counter()
    compiled = self.eval_timing.get("compile_s", 0.0)
    m = eval_lib.evaluate(
        self.predict_fn, self.state.params, self.state.rest, self.eval_loader,
        self.mesh, metric=self.config.test.metric,
        max_images=self.config.train.eval_max_images or None,
        desc=f"eval@{done}", timing=self.eval_timing,
        coco_evaluator=self.config.test.get("coco_evaluator", "pycocotools"))
    seconds = time.perf_counter() - t
    # The ETA counts evaluations at their speed without compilation.
    self.eval_seconds.append(
        seconds - (self.eval_timing.get("compile_s", 0.0) - compiled))
    head = eval_lib.headline(m)
    self.writer.write_scalars(done, {f"eval/{k}": v for k, v in head.items()})
    self.last_eval = (done, head)
    progress.line(f"eval at step {done}: {m['num_images']} images of "
                  f"{self.config.data.val_split}, {m['num_detections']} "
                  f"detections ({console.format_duration(seconds)})")
    progress.line(eval_lib.format_metrics(m))
    if self.best is not None and self.best.metric in head:
      value = head[self.best.metric]
      if self.best.save(done, self.state, self._meta(), value):
        progress.line(f"best {self.best.metric} so far: {value:.4f} at "
                      f"step {done} -> {checkpoints.best_dir(self.workdir)}")
    self.meter.resume()
    return m

  def _eta(self, done: int) -> float:
    c = self.config.train
    left = self.steps - done
    eta = left * self.meter.seconds_per_step()
    if c.eval_every > 0 and self.eval_seconds:
      evals = left // c.eval_every + (self.steps % c.eval_every != 0)
      eta += evals * self.eval_seconds[-1]
    return eta

  def _log(self, done: int, total, n: int, metrics: dict,
           progress: console.Progress) -> dict[str, float]:
    """Interval means (one fetch), rates; one jsonl line, one console line."""
    means = {k: float(v) / n for k, v in jax.device_get(total).items()}
    lr = float(jax.device_get(metrics["lr"]))
    rate = self.meter.interval()
    epoch = done / self.loader.steps_per_epoch
    out = dict(means, lr=lr, epoch=epoch, data_wait_ms=rate["data_wait_ms"])
    if math.isfinite(rate["images_per_sec"]):
      out["images_per_sec"] = rate["images_per_sec"]
    self.writer.write_scalars(done, {f"train/{k}": v for k, v in out.items()})
    eta = self._eta(done)
    progress.postfix(loss=f"{means['loss_total']:.3f}",
                     img_s=f"{rate['images_per_sec']:.1f}")
    progress.line(console.format_train_line(
        done, self.steps, means, lr=lr, rate=rate, eta_s=eta, epoch=epoch))
    return out

  def _loop(self, progress: console.Progress) -> dict[str, Any]:
    """Steps from ``self.start`` to the end; raises _NonFiniteStep.

    The finite flag of step n is read after step n + 1 is dispatched (so the
    host keeps a step ahead of the device) and at once before anything of
    step n is logged, evaluated or saved. Losses are summed on the device
    over a log interval and fetched once per log line.
    """
    c = self.config
    last: dict[str, Any] = {}
    progress.reset(total=self.steps, initial=self.start)
    self.meter.restart()
    total, n = None, 0
    pending = None
    for step in range(self.start, self.steps):
      t0 = self.meter.now()
      position, batch = self._next_batch()
      t1 = self.meter.data_done(t0)
      shape = tuple(batch["image"].shape)
      compiles = shape not in self.shapes_seen
      self.shapes_seen.add(shape)
      self.state, metrics = self.step_fn(self.state, batch)
      total = (_interval_start(metrics) if total is None else
               _interval_add(total, metrics))
      n += 1
      self.meter.step_done(t1, compiled=compiles)
      done = step + 1
      progress.update(1)
      if pending is not None:
        self._check(*pending)
      pending = (done, position, metrics)
      if not self._is_sync_step(done):
        continue
      self._check(*pending)
      pending = None
      if done % c.train.log_every == 0 or done == self.steps:
        last = self._log(done, total, n, metrics, progress)
        total, n = None, 0
      if done % c.checkpoint.every_steps == 0 and done != self.steps:
        self._save(done)
      if self.eval_loader is not None and (done % c.train.eval_every == 0 or
                                           done == self.steps):
        last["eval"] = self._evaluate(done, progress)
    if self.steps > self.start or not self.ckpt.all_steps():
      self._save(self.steps, force=True)
    return last

  def run(self) -> dict[str, Any]:
    progress = console.Progress(self.steps, initial=self.start, desc="train",
                                unit="step", enabled=self.pid == 0)
    if self.start >= self.steps:
      progress.line(f"{self.workdir} is already at step {self.start} of "
                    f"{self.steps}: nothing to train (raise "
                    f"train.num_steps / num_epochs to go on)")
    try:
      while True:
        try:
          last = self._loop(progress)
          break
        except _NonFiniteStep as bad:
          self._on_non_finite(bad)
      self.ckpt.wait()
      saved = self.ckpt.all_steps()
      if self.best is not None:
        self.best.wait()
        self.best_kept = self.best.best()
    finally:
      progress.close()
      self.ckpt.close()
      if self.best is not None:
        self.best.close()
      self.writer.close()
      self.loader.close()
    if self.pid == 0:
      curves = self._plot_curves()
      print(self._summary(saved, curves), flush=True)
    return last

  def _plot_curves(self) -> str | None:
    out = os.path.join(self.workdir, "loss_curves.png")
    try:
      vis.plot_loss_curves(os.path.join(self.workdir, "metrics.jsonl"), out)
    except ImportError:
      log.warning("loss_curves.png not written: matplotlib is not installed "
                  "(pip install matplotlib); the numbers are in "
                  "metrics.jsonl and TensorBoard")
      return None
    return out

  def _summary(self, saved: list[int], curves: str | None) -> str:
    """The closing lines: what was done, how long, where it all is."""
    m, w = self.meter, self.workdir
    ran = self.steps - self.first_step
    wall = time.perf_counter() - self.t_begin
    compile_s = m.total_compile_s + self.eval_timing.get("compile_s", 0.0)
    lines = [f"done: {ran} steps ({self.first_step} -> {self.steps}) in "
             f"{console.format_duration(wall)} (training "
             f"{console.format_duration(m.total_train_s)}, compiling "
             f"{console.format_duration(compile_s)}, evaluating "
             f"{console.format_duration(sum(self.eval_seconds))}, waiting "
             f"for data {console.format_duration(m.total_data_s)})"]
    if self.last_eval is not None:
      step, head = self.last_eval
      split = self.config.data.val_split
      lines.append(f"final evaluation (step {step}, {split}): " + ", ".join(
          f"{k} {v:.4f}" for k, v in head.items()))
    else:
      lines.append("no evaluation during training (train.eval_every=0): "
                   "run the command below")
    rows = [("checkpoints", f"{checkpoints.checkpoint_dir(w)}  (steps "
             f"{', '.join(map(str, saved)) or 'none'})")]
    best = self.best_kept
    if best is not None:
      rows.append(("best", f"{checkpoints.best_dir(w)}  (step {best[0]}, "
                   f"{self.best.metric} {best[1]:.4f})"))
    rows.append(("metrics", os.path.join(w, metric_writers.JSONL_NAME)))
    rows.append(("curves", curves or "not drawn: pip install matplotlib"))
    rows.append(("tensorboard", "tensorboard --logdir " + os.path.join(
        w, metric_writers.TENSORBOARD_DIR)))
    lines += [f"  {k:<12} {v}" for k, v in rows]
    lines.append(f"next: {self.eval_command}")
    return "\n".join(lines)
