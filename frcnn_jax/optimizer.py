"""The seed's optimizer and learning-rate schedule as optax transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


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
