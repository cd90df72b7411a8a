"""faster-rcnn.pytorch detector checkpoints -> our whole FasterRCNN.

faster_rcnn_{session}_{epoch}_{step}.pth = {'model': state dict, 'session',
'epoch', 'optimizer', 'pooling_mode', 'class_agnostic'}; the state dict:

  RCNN_base.* / RCNN_top.*    the backbone (see backbone.backbone_torch_spec)
  RCNN_rpn.RPN_Conv           3x3 conv, 512 channels  -> rpn.conv
  RCNN_rpn.RPN_cls_score      1x1 conv, 2A channels    -> rpn.cls_score
      (all A background logits, then all A foreground logits: the layout
       of our RPNHead, which pairs channel a with channel A + a)
  RCNN_rpn.RPN_bbox_pred      1x1 conv, 4A channels    -> rpn.bbox_pred
      (anchor-major, 4 * a + coord: the same as ours)
  RCNN_cls_score              Linear(D, K)             -> box_predictor.cls_score
  RCNN_bbox_pred              Linear(D, 4K) or (D, 4)  -> box_predictor.bbox_pred
      (rows class-major, 4 * k + coord: our columns)

Every faster-rcnn.pytorch ResNet (its own resnet.py, any depth) puts the
stride on the bottleneck's 1x1 conv1 and uses a 3x3/2 max pool with padding
0 and ceil mode, and every network is fed BGR 0..255 minus cfg.PIXEL_MEANS:
stride_in_1x1=True and CAFFE_PREPROCESSING for every detector kind. A
converted detector is a checkpoints folder at step 0 (see
:func:`frcnn_jax.checkpoints.save_model_checkpoint`) whose meta records the
class names and the config values the weights imply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from frcnn_jax import checkpoints
from frcnn_jax.data import class_names as class_lists
from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import detector as detector_lib
from frcnn_jax.modeling.roi_heads import POOLING_MODES
from frcnn_jax.weights import torch_io
from frcnn_jax.weights.arrays import check_spec_covers
from frcnn_jax.weights.arrays import convert_state_dict
from frcnn_jax.weights.arrays import ignore_batch_counter
from frcnn_jax.weights.arrays import LEAF_TO_TORCH
from frcnn_jax.weights.arrays import load_detector_arrays
from frcnn_jax.weights.arrays import Path
from frcnn_jax.weights.arrays import torch_source
from frcnn_jax.weights.arrays import TorchSource
from frcnn_jax.weights.backbone import backbone_torch_spec
from frcnn_jax.weights.backbone import describe_backbone
from frcnn_jax.weights.compat import ConfigMismatchError
from frcnn_jax.weights.identify import analyze_detector_state_dict
from frcnn_jax.weights.identify import DetectorCheckpointInfo
from frcnn_jax.weights.identify import guess_network
from frcnn_jax.weights.kinds import AUTO_DETECTOR_KIND
from frcnn_jax.weights.kinds import CAFFE_PREPROCESSING
from frcnn_jax.weights.kinds import detector_backbone_config
from frcnn_jax.weights.kinds import detector_kind_for_backbone
from frcnn_jax.weights.kinds import DETECTOR_KINDS
from frcnn_jax.weights.kinds import is_detector_kind

log = logging.getLogger(__name__)

BACKGROUND = class_lists.BACKGROUND
VOC_CLASSES = (BACKGROUND,) + class_lists.VOC_CLASSES
COCO_CLASSES = (BACKGROUND,) + class_lists.COCO_CLASSES


DETECTOR_META_FORMAT = "frcnn_jax.detector_weights/1"

def resolve_class_names(classes: str, num_classes: int | None = None
                        ) -> list[str]:
  """Class names (background first) from 'voc', 'coco' or 'a,b,c'.

  Args:
    classes: 'voc' (faster-rcnn.pytorch's 20 VOC classes), 'coco' (the 80
      COCO categories in id order) or a comma-separated list (with or
      without '__background__' first).
    num_classes: the checkpoint's K (RCNN_cls_score rows), checked.

  Raises:
    ValueError: empty or duplicate names, or a count that is not K.
  """
  spec = (classes or "").strip()
  if spec.lower() == "voc":
    names = list(VOC_CLASSES)
  elif spec.lower() == "coco":
    names = list(COCO_CLASSES)
  else:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
      raise ValueError("class names needed: --classes=voc, --classes=coco or "
                       "a comma-separated list")
    if names[0] != BACKGROUND:
      names = [BACKGROUND] + names
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"duplicate class names: {dup}")
  if num_classes is not None and len(names) != num_classes:
    raise ValueError(
        f"--classes={classes!r} gives {len(names)} classes (with "
        f"{BACKGROUND}), but the checkpoint has {num_classes} "
        f"(RCNN_cls_score.weight has {num_classes} rows): use --classes=voc "
        f"(21), --classes=coco (81) or list the {num_classes - 1} object "
        f"classes in the order the model was trained with")
  return names

def _anchor_layout(num_anchors: int) -> tuple[tuple, tuple]:
  """(scales, ratios) with `num_anchors` anchors (only the count matters for
  the weights; 9 and 12 are the seed's VOC and COCO settings)."""
  ratios = (0.5, 1.0, 2.0)
  if num_anchors == 9:
    return (8, 16, 32), ratios
  if num_anchors == 12:
    return (4, 8, 16, 32), ratios
  if num_anchors % 3 == 0:
    return tuple(2.0 ** (i + 2) for i in range(num_anchors // 3)), ratios
  return tuple(2.0 ** (i + 2) for i in range(num_anchors)), (1.0,)

def detector_for_checkpoint(info: DetectorCheckpointInfo, *,
                            abstract: bool = True):
  """Our FasterRCNN with the shapes of a faster-rcnn.pytorch checkpoint
  (abstract: nnx.eval_shape, no memory)."""
  if info.backbone is None:
    raise ValueError(f"{info.describe()}: its block counts match no "
                     f"ResNet depth {dict(backbones.RESNET_STAGE_BLOCKS)}")
  scales, ratios = _anchor_layout(info.num_anchors)
  pm = info.pooling_mode if info.pooling_mode in POOLING_MODES else "align"
  settings = detector_lib.DetectorSettings(
      num_classes=info.num_classes, anchor_scales=scales, anchor_ratios=ratios,
      rpn=detector_lib.RPNSettings(conv_channels=info.rpn_channels),
      roi=detector_lib.RoISettings(pooling_mode=pm,
                                   class_agnostic=info.class_agnostic))
  bcfg = detector_backbone_config(info.backbone)
  make = lambda: detector_lib.FasterRCNN(settings, bcfg, rngs=nnx.Rngs(0))
  return nnx.eval_shape(make) if abstract else make()

_DETECTOR_HEADS = {("rpn", "conv"): "RCNN_rpn.RPN_Conv",
                   ("rpn", "cls_score"): "RCNN_rpn.RPN_cls_score",
                   ("rpn", "bbox_pred"): "RCNN_rpn.RPN_bbox_pred",
                   ("box_predictor", "cls_score"): "RCNN_cls_score",
                   ("box_predictor", "bbox_pred"): "RCNN_bbox_pred"}

# Modules that a new run may re-initialise when their shapes differ from the
# starting checkpoint's (another number of classes or anchors).
REINITIALIZABLE = (("box_predictor", "cls_score"), ("box_predictor", "bbox_pred"),
                   ("rpn", "cls_score"), ("rpn", "bbox_pred"))

def detector_torch_spec(model) -> dict[Path, TorchSource]:
  """{our path: TorchSource} for every variable of a FasterRCNN (abstract
  or not), with faster-rcnn.pytorch's key names."""
  spec = backbone_torch_spec(model.backbone, prefix=("backbone",),
                             style="faster_rcnn_pytorch")
  for (top, sub), torch_name in _DETECTOR_HEADS.items():
    module = getattr(getattr(model, top), sub)
    for path, var in nnx.to_flat_state(nnx.state(module)):
      leaf = str(path[-1])
      if leaf not in ("kernel", "bias") or len(path) != 1:
        raise ValueError(f"no torch name for {top}.{sub}.{'.'.join(map(str, path))}")
      spec[(top, sub, leaf)] = torch_source(
          f"{torch_name}.{LEAF_TO_TORCH[leaf]}", var.shape)
  check_spec_covers(model, spec, "faster-rcnn.pytorch")
  return spec

def check_backbone_fits_detector(backbone: backbones.Backbone) -> None:
  """faster-rcnn.pytorch's ResNets need stride_in_1x1=True and frozen BN."""
  if isinstance(backbone, backbones.ResNet):
    problems = []
    if not backbone.stride_in_1x1:
      problems.append("--config.backbone.stride_in_1x1=True")
    if backbone.norm != "frozen_bn":
      problems.append("--config.backbone.norm=frozen_bn")
    if backbone.block != "bottleneck":
      problems.append("a resnet50/101/152 backbone.name")
    if problems:
      raise ConfigMismatchError(
          "faster-rcnn.pytorch's ResNets put the stride on the bottleneck's "
          "1x1 conv, use a ceil-mode max pool and BatchNorm statistics; set "
          + " ".join(problems) + f" (the model has {describe_backbone(backbone)}, "
          f"stride_in_1x1={backbone.stride_in_1x1}, norm={backbone.norm!r})")

def load_detector_state_dict(model, state_dict: Mapping[str, Any], *,
                             reinit_mismatched_heads: bool = False
                             ) -> list[str]:
  """Loads a faster-rcnn.pytorch detector state dict into our FasterRCNN.

  Args:
    model: the detector (its backbone must be a faster-rcnn.pytorch network:
      see check_backbone_fits_detector).
    state_dict: {torch key: array}; 'module.' prefixes are stripped.
    reinit_mismatched_heads: leave the REINITIALIZABLE modules (class scores,
      box deltas, RPN scores/deltas) as they are when their shapes differ
      (fine-tuning to other classes or anchors) instead of failing.

  Returns:
    the modules left as they were ('box_predictor.cls_score', ...).

  Raises:
    WeightImportError: missing / unexpected keys and shape mismatches, all in
      one message. The model is unchanged then.
  """
  check_backbone_fits_detector(model.backbone)
  state_dict = torch_io.strip_prefix(torch_io.to_numpy_tree(dict(state_dict)))
  try:
    info = analyze_detector_state_dict(state_dict).describe()
  except ValueError:
    info = guess_network(state_dict)
  hint = (f"the checkpoint is {info}; the model is {describe_backbone(model.backbone)} "
          f"with {model.settings.num_classes} classes, "
          f"{'class-agnostic' if model.settings.roi.class_agnostic else 'per-class'}"
          f" boxes, {model.settings.num_anchors} anchors, RPN conv "
          f"{model.settings.rpn.conv_channels} channels")
  return load_detector_arrays(model, detector_torch_spec(model), state_dict,
                              hint=hint, reinitializable=REINITIALIZABLE,
                              reinit_mismatched=reinit_mismatched_heads)

def detector_implied_config(info: DetectorCheckpointInfo) -> dict[str, Any]:
  """The config values (dotted keys) a faster-rcnn.pytorch checkpoint needs.

  num_anchors stands for len(anchors.scales) * len(anchors.ratios).
  """
  out: dict[str, Any] = {"backbone.name": info.backbone}
  if info.backbone != "vgg16":
    out["backbone.stride_in_1x1"] = True
    out["backbone.norm"] = "frozen_bn"
  out.update(CAFFE_PREPROCESSING.config_values())
  out["rpn.conv_channels"] = info.rpn_channels
  out["num_anchors"] = info.num_anchors
  out["roi.class_agnostic"] = info.class_agnostic
  out["roi.pooling_size"] = 7
  # Trained with bbox_transform_inv: its boxes are only right decoded so.
  out["model.box_decode"] = "seed"
  if info.pooling_mode in POOLING_MODES:
    out["roi.pooling_mode"] = info.pooling_mode
    if info.pooling_mode == "align":
      out["roi.sampling_ratio"] = 0
      out["roi.aligned"] = False
  return out

def _pure_from_arrays(abstract_model, arrays: Mapping[Path, np.ndarray]
                      ) -> dict:
  """model_pure_dict layout (train_lib) filled with `arrays` (every path)."""
  flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(abstract_model))}
  missing = [p for p in flat if p not in arrays]
  if missing:
    raise ValueError(f"no value for {missing[:10]}")
  pure = nnx.to_pure_dict(nnx.state(abstract_model))
  for path, var in flat.items():
    node = pure
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = np.asarray(arrays[path], dtype=var.dtype)
  return pure

def convert_detector_file(src: str, kind: str, out: str, classes: str) -> str:
  """faster-rcnn.pytorch detector .pth -> OUT/checkpoints/0 (model + meta).

  Returns a summary with the eval command.
  """
  sd, extras = torch_io.read_torch_checkpoint(src)
  info = analyze_detector_state_dict(sd, extras)
  if info.backbone is None:
    raise ValueError(f"{src}: {info.describe()}; known depths: "
                     f"{dict(backbones.RESNET_STAGE_BLOCKS)}")
  if not is_detector_kind(kind):
    raise ValueError(f"{kind!r} is not a detector kind: one of "
                     f"{sorted(DETECTOR_KINDS) + [AUTO_DETECTOR_KIND]}")
  if kind != AUTO_DETECTOR_KIND:
    want = DETECTOR_KINDS[kind].backbone
    if want != info.backbone:
      raise ValueError(
          f"{src} is {info.describe()}, not a {want} (--kind={kind}); use "
          f"--kind={detector_kind_for_backbone(info.backbone)} or "
          f"--kind={AUTO_DETECTOR_KIND}. (faster-rcnn.pytorch's upstream "
          f"resnet.py builds a ResNet-101 whatever --net res50/res152 says.)")
  kind = detector_kind_for_backbone(info.backbone)
  names = resolve_class_names(classes, info.num_classes)
  model = detector_for_checkpoint(info, abstract=True)
  spec = detector_torch_spec(model)
  arrays = convert_state_dict(spec, sd, ignore=ignore_batch_counter,
                              hint=f"the checkpoint is {info.describe()}")
  if info.extras.get("class_agnostic") is not None and bool(
      info.extras["class_agnostic"]) != info.class_agnostic:
    log.warning("%s: its 'class_agnostic' entry says %s but RCNN_bbox_pred "
                "has the shape of %s; the shape wins", src,
                info.extras["class_agnostic"], info.class_agnostic)
  implied = detector_implied_config(info)
  notes = []
  if info.pooling_mode not in (None,) + POOLING_MODES:
    notes.append(f"trained with pooling_mode {info.pooling_mode!r}, which "
                 f"frcnn-jax does not implement; 'align' is the closest")
  if info.pooling_mode is None:
    notes.append("the checkpoint does not record its pooling_mode")
  meta = {"format": DETECTOR_META_FORMAT, "kind": kind,
          "source": os.path.abspath(src), "class_names": names,
          "num_classes": info.num_classes,
          "implied_config": implied, "checkpoint": dict(info.extras),
          "notes": notes}
  checkpoints.save_model_checkpoint(_pure_from_arrays(model, arrays), out, meta)
  lines = [f"{src}: {info.describe()}",
           f"  -> {os.path.join(out, 'checkpoints', '0')} ({len(arrays)} arrays, "
           f"classes {names[1:4]}...)"]
  lines += [f"  note: {n}" for n in notes]
  return "\n".join(lines)
