"""Starting weights of a new training run: ``config.init_from``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from flax import nnx

from frcnn_jax import checkpoints
from frcnn_jax.weights import torch_io
from frcnn_jax.weights import torchvision_frcnn
from frcnn_jax.weights.arrays import assign_arrays
from frcnn_jax.weights.arrays import WeightImportError
from frcnn_jax.weights.backbone import check_backbone_fits_kind
from frcnn_jax.weights.backbone import load_backbone_state_dict
from frcnn_jax.weights.backbone import read_converted_meta
from frcnn_jax.weights.backbone import restore_backbone_weights
from frcnn_jax.weights.compat import ARCHITECTURE_KEYS
from frcnn_jax.weights.compat import check_config_against_checkpoint
from frcnn_jax.weights.compat import check_preprocessing
from frcnn_jax.weights.compat import config_mismatches
from frcnn_jax.weights.compat import ConfigMismatchError
from frcnn_jax.weights.compat import override_flag
from frcnn_jax.weights.frcnn_pytorch import check_backbone_fits_detector
from frcnn_jax.weights.frcnn_pytorch import load_detector_state_dict
from frcnn_jax.weights.frcnn_pytorch import REINITIALIZABLE
from frcnn_jax.weights.identify import analyze_detector_state_dict
from frcnn_jax.weights.identify import guess_kind
from frcnn_jax.weights.identify import guess_network
from frcnn_jax.weights.kinds import ALL_KINDS
from frcnn_jax.weights.kinds import AUTO_DETECTOR_KIND
from frcnn_jax.weights.kinds import CAFFE_PREPROCESSING
from frcnn_jax.weights.kinds import DETECTOR_KINDS
from frcnn_jax.weights.kinds import is_detector_kind
from frcnn_jax.weights.kinds import is_torchvision_detector_kind
from frcnn_jax.weights.kinds import TORCHVISION_PREPROCESSING
from frcnn_jax.weights.kinds import kind_info

log = logging.getLogger(__name__)


def load_model_from_checkpoint(model, ckpt_dir: str, *,
                               reinit_mismatched_heads: bool = True,
                               step: int | None = None
                               ) -> tuple[int, dict, list[str]]:
  """Loads the ``model`` item of a frcnn-jax checkpoint into ``model`` by name.

  Unlike :meth:`Checkpointer.restore_model`, the stored shapes may differ in
  the REINITIALIZABLE heads (left as they are, when allowed).

  Returns:
    (step, meta, the modules left as they were).

  Raises:
    WeightImportError: variables missing, unexpected or of other shapes.
  """
  steps = checkpoints.checkpoint_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  step = steps[-1] if step is None else step
  stored = checkpoints.stored_model_shapes(ckpt_dir, step)
  meta = checkpoints.read_step_meta(ckpt_dir, step)
  ours = {".".join(map(str, p)): (tuple(p), v)
          for p, v in nnx.to_flat_state(nnx.state(model))}
  missing = sorted(set(ours) - set(stored))
  unexpected = sorted(set(stored) - set(ours))
  skipped, mismatched = set(), []
  for name in sorted(set(ours) & set(stored)):
    path, var = ours[name]
    if stored[name] != tuple(var.shape):
      if reinit_mismatched_heads and tuple(path[:2]) in REINITIALIZABLE:
        skipped.add(tuple(path[:2]))
      else:
        mismatched.append((name, stored[name], tuple(var.shape)))
  if missing or unexpected or mismatched:
    raise WeightImportError(
        missing, unexpected, mismatched,
        hint=f"{os.path.join(ckpt_dir, str(step))} holds another network")
  restored = checkpoints.read_model_arrays(ckpt_dir, step)
  arrays = {path: np.asarray(restored[name])
            for name, (path, _) in ours.items()
            if tuple(path[:2]) not in skipped}
  assign_arrays(model, arrays, require=lambda p: tuple(p[:2]) not in skipped)
  return step, meta, sorted(".".join(s) for s in skipped)


def _log_skipped(what: str, skipped: Sequence[str]) -> None:
  if skipped:
    log.warning("%s: %s keep their fresh initialisation (other number of "
                "classes or anchors than the starting weights)", what,
                ", ".join(skipped))

def initialize_model(model, config: ml_collections.ConfigDict) -> str | None:
  """Starting weights of a NEW training run (a resumed run ignores this).

  ``config.init_from`` is one of:
    * a folder written by ``python -m frcnn_jax.weights convert`` for an
      ImageNet backbone (it holds meta.json): the backbone's weights;
    * an ImageNet backbone .pth, with ``config.init_from_kind`` (see KINDS)
      or, when the keys identify it, without (ResNet-50/152);
    * a faster-rcnn.pytorch detector .pth (kind read from the keys, or
      config.init_from_kind = 'faster_rcnn_pytorch_res101', ...);
    * a torchvision Faster R-CNN FPN .pth (v1 / v2 read from the keys) for
      an FPN config (model.arch='fpn');
    * a frcnn-jax checkpoint: a train workdir, its checkpoints folder, or a
      converted detector folder (the newest step's model).
  For whole detectors, the class-score / box-delta layers (and the RPN's
  score / delta layers) keep their fresh initialisation when the number of
  classes (anchors) differs: fine-tuning to another dataset. Everything else
  must match.

  Checks before loading: the backbone architecture (name, depth,
  stride_in_1x1, norm) and config.model's preprocessing (bgr, pixel_mean,
  pixel_std) must be what the weights were trained with; a
  ConfigMismatchError names the overrides otherwise.

  Returns:
    a one-line description of what was loaded, or None without init_from.
  """
  path = config.get("init_from", "") or ""
  kind = config.get("init_from_kind", "") or ""
  if not path:
    if kind:
      raise ValueError(f"config.init_from_kind={kind!r} needs config.init_from")
    return None
  if kind and kind not in ALL_KINDS:
    raise ValueError(f"config.init_from_kind={kind!r}: unknown; one of "
                     f"{list(ALL_KINDS)}")
  where = f"config.init_from={path!r}"
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "meta.json")):
    msg = _init_from_converted_backbone(model, config, path, kind, where)
  elif os.path.isdir(path):
    msg = _init_from_checkpoint(model, config, path, kind, where)
  elif os.path.exists(path):
    msg = _init_from_pth(model, config, path, kind, where)
  else:
    raise FileNotFoundError(f"{where}: no such file or folder")
  log.info("initialised: %s", msg)
  return msg


def _init_from_converted_backbone(model, config, path, kind, where) -> str:
  meta = read_converted_meta(path)
  if kind and kind != meta["kind"]:
    raise ValueError(f"{where} holds kind {meta['kind']!r}, but "
                     f"config.init_from_kind={kind!r}")
  check_backbone_fits_kind(model.backbone, meta["kind"])
  check_preprocessing(config, kind_info(meta["kind"]).preprocessing, where)
  restore_backbone_weights(model.backbone, path)
  return f"backbone from {path} ({meta['kind']})"


def _init_from_checkpoint(model, config, path, kind, where) -> str:
  ckpt_dir = checkpoints.checkpoint_location(path)
  steps = checkpoints.checkpoint_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(
        f"{where}: neither a converted backbone (no meta.json) nor a "
        f"checkpoint folder (no {ckpt_dir}/<step>/model)")
  if kind:
    raise ValueError(f"config.init_from_kind={kind!r} is for .pth files; "
                     f"{path} is a checkpoint folder: leave it ''")
  meta = checkpoints.read_step_meta(ckpt_dir, steps[-1])
  check_config_against_checkpoint(config, meta, where=where,
                                  keys=ARCHITECTURE_KEYS)
  step, _, skipped = load_model_from_checkpoint(model, ckpt_dir)
  _log_skipped(where, skipped)
  return f"whole detector from {ckpt_dir} step {step}"


def _init_from_pth(model, config, path, kind, where) -> str:
  sd, extras = torch_io.read_torch_checkpoint(path)
  if not kind:
    kind, cands = guess_kind(sd)
    if kind is None:
      raise ValueError(
          f"{where}: {guess_network(sd)}; its kind cannot be told from the "
          f"keys: set config.init_from_kind to one of "
          f"{cands or list(ALL_KINDS)}")
  if is_torchvision_detector_kind(kind):
    return _init_from_torchvision_detector(model, config, path, sd, where)
  if not is_detector_kind(kind):
    check_backbone_fits_kind(model.backbone, kind)
    check_preprocessing(config, kind_info(kind).preprocessing, where)
    load_backbone_state_dict(model.backbone, sd, kind=kind)
    return f"backbone from {path} ({kind})"
  info = analyze_detector_state_dict(sd, extras)
  if kind != AUTO_DETECTOR_KIND and (
      DETECTOR_KINDS[kind].backbone != info.backbone):
    raise ValueError(f"{where} is {info.describe()}, not kind {kind!r}")
  if info.backbone != config.backbone.name:
    raise ConfigMismatchError(
        f"{where} is {info.describe()}: set "
        f"--config.backbone.name={info.backbone}")
  check_backbone_fits_detector(model.backbone)
  check_preprocessing(config, CAFFE_PREPROCESSING, where)
  skipped = load_detector_state_dict(model, sd, reinit_mismatched_heads=True)
  _log_skipped(where, skipped)
  return f"whole detector from {path} ({info.describe()})"


def _init_from_torchvision_detector(model, config, path, sd, where) -> str:
  info = torchvision_frcnn.analyze_state_dict(sd)
  want = torchvision_frcnn.implied_config(info)
  bad = config_mismatches(config, {k: want[k] for k in (
      "model.arch", "fpn.variant", "backbone.name")})
  if bad:
    raise ConfigMismatchError(
        f"{where} is {info.describe()}: use an FPN config "
        "(configs/coco_r50_fpn*.py) with "
        + " ".join(override_flag(k, w) for k, _, w in bad))
  check_preprocessing(config, TORCHVISION_PREPROCESSING, where)
  skipped = torchvision_frcnn.load_state_dict(model, sd,
                                              reinit_mismatched_heads=True)
  _log_skipped(where, skipped)
  return f"whole detector from {path} ({info.describe()})"
