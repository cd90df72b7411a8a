"""Checkpoints: the train state and the ONE owner of the on-disk layout.

A training workdir holds ``checkpoints/<step>/`` (orbax) with three items:

* ``model``: every variable of the detector as a nested dict
  (:func:`model_pure_dict`): all that inference needs; a converted
  faster-rcnn.pytorch detector (``python -m frcnn_jax.weights convert``)
  writes the same item at step 0 without the next one;
* ``train``: ``{'step', 'opt_state', 'rng'}``;
* ``meta``: JSON (data iterator state, class names, the run's config).

``checkpoints.unreadable/<step>-<time>/`` receives steps that do not read
back. ``best/checkpoints/<step>/`` (:class:`BestCheckpoints`) keeps the
``checkpoint.keep_best`` evaluated states with the best evaluation metric,
``model`` and ``meta`` only (the layout of a converted model), so that
``eval.py --workdir=<workdir>/best`` and ``demo.py`` read them as they read
any model folder. :func:`checkpoint_location` maps a workdir or a converted folder to
its checkpoints folder; :func:`checkpoint_steps` / :func:`read_step_meta` /
:func:`stored_model_shapes` read a folder without building a model (for
``init_from``); :class:`Checkpointer` writes and restores training runs.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
BEST = "best"


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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def best_dir(workdir: str) -> str:
  """``<workdir>/best``: a model folder (``best/checkpoints/<step>``)."""
  return os.path.join(workdir, BEST)


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
    """The JSON ``meta`` of ``step`` (default: newest); {} if there is none.

    Raises:
      FileNotFoundError: ``step`` is not one of the saved steps (the message
        lists them).
    """
    steps = self.all_steps()
    if step is not None and step not in steps:
      raise FileNotFoundError(
          f"no checkpoint step {step} in {self.directory}; saved steps: "
          f"{list(steps) or 'none'}")
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


class BestCheckpoints:
  """The ``keep`` best evaluated states of a run, by one metric.

  A second orbax ``CheckpointManager`` beside the latest-N one, under
  ``<workdir>/best/checkpoints``, holding ``model`` and ``meta`` (no
  optimizer state: these are for inference and ``init_from``); orbax's
  ``best_fn`` decides what is kept. The metric and its value are in
  ``meta`` (``best_metric``, ``best_value``, the step's evaluation
  headline) and in orbax's step metadata.

  The run's history is one line: when a run resumes or rolls back to step
  S, the best states saved after S belong to a trajectory it left (it will
  evaluate those steps again) and :meth:`forget_after` deletes them, as
  metrics.jsonl forgets the steps after S.
  """

  def __init__(self, directory: str, *, keep: int, metric: str,
               mode: str = "max", async_save: bool = True):
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    self.directory = os.path.abspath(directory)
    self.keep, self.metric, self.mode = int(keep), metric, mode
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, best_fn=lambda m: float(m[metric]),
            best_mode=mode, keep_checkpoints_without_metrics=False,
            create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))

  def scores(self) -> dict[int, float]:
    """``step -> metric value`` of the kept states."""
    out = {}
    for s in self.manager.all_steps():
      m = self.manager.metrics(s) or {}
      if self.metric in m:
        out[int(s)] = float(m[self.metric])
    return out

  def best(self) -> tuple[int, float] | None:
    """``(step, value)`` of the best kept state, or None."""
    sc = self.scores()
    if not sc:
      return None
    pick = max if self.mode == "max" else min
    step = pick(sc, key=lambda s: (sc[s], -s))
    return step, sc[step]

  def would_keep(self, value: float) -> bool:
    """Whether a state scoring ``value`` enters the kept set."""
    if not np.isfinite(value):
      return False
    sc = sorted(self.scores().values(), reverse=self.mode == "max")
    if len(sc) < self.keep:
      return True
    return value > sc[-1] if self.mode == "max" else value < sc[-1]

  def save(self, step: int, state: TrainState, meta: dict,
           value: float) -> bool:
    """Saves ``state`` at ``step`` if ``value`` is among the best; says so."""
    if not self.would_keep(value):
      return False
    if step in self.manager.all_steps():
      self.manager.delete(step)
    meta = dict(meta, best_metric=self.metric, best_value=float(value),
                step=int(step))
    self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model_pure_dict((state.params,
                                                     state.rest))),
        meta=ocp.args.JsonSave(meta)),
        metrics={self.metric: float(value)}, force=True)
    return True

  def forget_after(self, step: int) -> list[int]:
    """Deletes the kept states after ``step``; returns their steps."""
    self.manager.wait_until_finished()
    gone = [s for s in self.manager.all_steps() if s > step]
    for s in gone:
      self.manager.delete(s)
    if gone:
      log.info("best checkpoints after step %d forgotten (the run resumed "
               "there): %s", step, gone)
    return sorted(gone)

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


# -- reading a checkpoints folder without a model (init_from, conversion) -------

def checkpoint_location(path: str) -> str:
  """A train workdir or a converted model folder -> its checkpoints folder."""
  sub = os.path.join(path, CHECKPOINTS)
  return sub if os.path.isdir(sub) else path


def checkpoint_steps(ckpt_dir: str) -> list[int]:
  """Steps of ``ckpt_dir`` that hold a ``model`` item, ascending."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir)
                if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d,
                                                              "model")))


def read_step_meta(ckpt_dir: str, step: int) -> dict[str, Any]:
  """The JSON ``meta`` item of a step ({} if the step has none)."""
  step_dir = os.path.join(ckpt_dir, str(step))
  if not os.path.isdir(os.path.join(step_dir, "meta")):
    return {}
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    return dict(ckptr.restore(os.path.join(step_dir, "meta")))


def newest_meta(path: str) -> dict[str, Any]:
  """The ``meta`` of the newest step of a workdir or converted folder ({})."""
  ckpt_dir = checkpoint_location(path)
  steps = checkpoint_steps(ckpt_dir)
  return read_step_meta(ckpt_dir, steps[-1]) if steps else {}


def _dotted(path) -> str:
  return ".".join(str(getattr(k, "key", k)) for k in path)


def stored_model_shapes(ckpt_dir: str, step: int) -> dict[str, tuple]:
  """``'backbone.conv1.kernel' -> shape`` of a step's ``model`` item."""
  with ocp.StandardCheckpointer() as ckptr:
    stored = ckptr.metadata(os.path.join(ckpt_dir, str(step), "model"))
  stored = getattr(stored, "item_metadata", stored)
  stored = getattr(stored, "tree", stored)
  return {_dotted(p): tuple(m.shape)
          for p, m in jax.tree_util.tree_flatten_with_path(
              stored, is_leaf=lambda x: hasattr(x, "shape"))[0]}


def read_model_arrays(ckpt_dir: str, step: int) -> dict[str, Any]:
  """``'backbone.conv1.kernel' -> numpy array`` of a step's ``model`` item,
  in the stored shapes (on the host)."""
  step_dir = os.path.join(ckpt_dir, str(step), "model")
  with ocp.StandardCheckpointer() as ckptr:
    stored = ckptr.metadata(step_dir)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored,
                          is_leaf=lambda x: hasattr(x, "shape"))
    restored = ckptr.restore(step_dir, target)
  return {_dotted(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(restored)[0]}


def save_model_checkpoint(pure: dict, directory: str, meta: dict) -> str:
  """Writes DIRECTORY/checkpoints/0 with the items ``model`` and ``meta``.

  The layout of a training run without the ``train`` item: not resumable,
  but eval.py, demo.py and ``init_from`` read it (converted weights).
  Returns the step folder.
  """
  ckpt_dir = os.path.join(os.path.abspath(directory), CHECKPOINTS)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f"{ckpt_dir} already holds checkpoints; choose "
                          f"another --out or delete it")
  options = ocp.CheckpointManagerOptions(create=True,
                                         enable_async_checkpointing=False)
  with ocp.CheckpointManager(ckpt_dir, options=options) as mngr:
    mngr.save(0, args=ocp.args.Composite(
        model=ocp.args.StandardSave(dict(pure)),
        meta=ocp.args.JsonSave(dict(meta))))
    mngr.wait_until_finished()
  return os.path.join(ckpt_dir, "0")
