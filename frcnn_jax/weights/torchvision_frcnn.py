"""torchvision's Faster R-CNN FPN state dicts -> our FasterRCNNFPN.

``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` (v1) and
``fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth`` (v2) are plain state dicts
(``model.state_dict()``); so is anything saved from
``torchvision.models.detection.fasterrcnn_resnet50_fpn[_v2](...)`` with
other classes. Key layout -> our variables:

  backbone.body.<resnet key>          backbone.<same path> (a torchvision
                                      ResNet: conv1, bn1, layer1..4)
  backbone.fpn.{inner,layer}_blocks.i.0   fpn.{inner,layer}_blocks.i.0 (conv)
  backbone.fpn.{inner,layer}_blocks.i.1   ... .i.1 (v2 BatchNorm)
  rpn.head.conv.d.0                   rpn.conv.d.0 (3x3, one in v1, two in v2)
  rpn.head.cls_logits / bbox_pred     rpn.cls_logits / rpn.bbox_pred
  roi_heads.box_head.fc6 / fc7        box_head.fc6 / fc7 (v1)
  roi_heads.box_head.i.{0,1} (i < 4)  box_head.convs.i.{0,1} (v2 conv, BN)
  roi_heads.box_head.5                box_head.fc (v2; 4 is the Flatten)
  roi_heads.box_predictor.cls_score / bbox_pred   box_predictor.*

Layouts: conv [O, I, kh, kw] -> [kh, kw, I, O]; linear [out, in] -> [in,
out]; BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var;
the first fc after the 7x7 pooling (v1 fc6, v2 fc) takes torch's (c, h, w)
flatten, ours is (h, w, c): its rows are permuted. ``num_batches_tracked``
is ignored; every other key must match (missing, unexpected and shape
mismatches are reported together).

Classes: the number of slots is read from ``cls_score`` (91 for torchvision's
COCO models, whose slot k is COCO category id k and whose unused ids are
named 'N/A'). The converted checkpoint keeps the slots unchanged and records
their names (``--classes=coco91``, the default for 91 slots); eval.py maps
slots to a dataset's classes by name (eval_lib), so COCO evaluation reports
category id = slot and 'N/A' slots (never in the ground truth) are dropped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from frcnn_jax import checkpoints
from frcnn_jax.data import class_names as class_lists
from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import detector_fpn
from frcnn_jax.modeling import preprocessing
from frcnn_jax.weights import torch_io
from frcnn_jax.weights.arrays import check_spec_covers
from frcnn_jax.weights.arrays import convert_state_dict
from frcnn_jax.weights.arrays import fc6_to_ours
from frcnn_jax.weights.arrays import load_detector_arrays
from frcnn_jax.weights.arrays import ignore_batch_counter
from frcnn_jax.weights.arrays import LEAF_TO_TORCH
from frcnn_jax.weights.arrays import Path
from frcnn_jax.weights.arrays import torch_source
from frcnn_jax.weights.arrays import TorchSource
from frcnn_jax.weights.backbone import backbone_torch_spec
from frcnn_jax.weights.identify import block_counts
from frcnn_jax.weights.identify import resnet_name_for_blocks
from frcnn_jax.weights.kinds import TORCHVISION_DETECTOR_KINDS

META_FORMAT = "frcnn_jax.torchvision_detector/1"
COCO91 = "coco91"


@dataclasses.dataclass(frozen=True)
class TorchvisionDetectorInfo:
  """What a torchvision Faster R-CNN FPN state dict holds."""
  variant: str
  backbone: str | None
  blocks: tuple[int, ...]
  num_classes: int

  def describe(self) -> str:
    net = self.backbone or f"a ResNet with blocks {self.blocks}"
    return (f"a torchvision Faster R-CNN FPN {self.variant}: {net}, "
            f"{self.num_classes} class slots")


def is_torchvision_detector(state_dict: Mapping[str, Any]) -> bool:
  return any(k.startswith("backbone.fpn.") for k in state_dict)


def analyze_state_dict(state_dict: Mapping[str, Any]) -> TorchvisionDetectorInfo:
  """Variant (v2 has BatchNorm in the FPN), depth and class count."""
  if not is_torchvision_detector(state_dict):
    raise ValueError("not a torchvision Faster R-CNN FPN state dict (no "
                     "backbone.fpn.* keys)")
  v2 = "backbone.fpn.inner_blocks.0.1.weight" in state_dict
  blocks = block_counts(state_dict,
                        [f"backbone.body.layer{i}." for i in range(1, 5)])
  key = "roi_heads.box_predictor.cls_score.weight"
  if key not in state_dict:
    raise ValueError(f"no {key}: not a Faster R-CNN state dict")
  return TorchvisionDetectorInfo(
      variant="v2" if v2 else "v1", backbone=resnet_name_for_blocks(blocks),
      blocks=tuple(blocks), num_classes=int(np.shape(state_dict[key])[0]))


def backbone_config(name: str) -> ml_collections.ConfigDict:
  """torchvision's detection ResNet: stride on the 3x3 conv, frozen BN,
  trainable_layers=3 (fixed_blocks=1)."""
  cfg = backbones.default_backbone_config(name)
  cfg.stride_in_1x1 = False
  cfg.norm = "frozen_bn"
  cfg.fixed_blocks = 1
  return cfg


def detector_for_state_dict(info: TorchvisionDetectorInfo, *,
                            abstract: bool = True,
                            settings: detector_fpn.FPNSettings | None = None):
  """Our FasterRCNNFPN with the shapes of ``info`` (abstract: no memory).

  ``settings``: other test-time settings (proposal counts, thresholds);
  default torchvision's. Its class count and variant must be ``info``'s.
  """
  if info.backbone is None:
    raise ValueError(f"{info.describe()}: its block counts match no ResNet "
                     f"depth {dict(backbones.RESNET_STAGE_BLOCKS)}")
  if settings is None:
    settings = detector_fpn.FPNSettings(
        num_classes=info.num_classes, variant=info.variant,
        rpn_conv_depth=2 if info.variant == "v2" else 1)
  if (settings.num_classes, settings.variant) != (info.num_classes,
                                                  info.variant):
    raise ValueError(f"settings for {settings.num_classes} classes "
                     f"{settings.variant}, the state dict is {info.describe()}")
  bcfg = backbone_config(info.backbone)
  make = lambda: detector_fpn.FasterRCNNFPN(settings, bcfg, rngs=nnx.Rngs(0))
  return nnx.eval_shape(make) if abstract else make()


def _head_key(model, path: tuple[str, ...]) -> str:
  """torchvision's module name of one of our head variables' modules."""
  top, rest = path[0], [str(p) for p in path[1:-1]]
  if top == "fpn":
    return "backbone.fpn." + ".".join(rest)
  if top == "rpn":
    return "rpn.head." + ".".join(rest)
  if top == "box_predictor":
    return "roi_heads.box_predictor." + ".".join(rest)
  if top == "box_head":
    if rest[0] == "convs":
      return "roi_heads.box_head." + ".".join(rest[1:])
    if rest[0] == "fc":
      return f"roi_heads.box_head.{len(model.box_head.convs) + 1}"
    return "roi_heads.box_head." + ".".join(rest)
  raise ValueError(f"no torchvision name for {'.'.join(map(str, path))}")


def fpn_torch_spec(model) -> dict[Path, TorchSource]:
  """{our path: TorchSource} for every variable of a FasterRCNNFPN (abstract
  or not), with torchvision's state-dict keys."""
  spec = {}
  for path, src in backbone_torch_spec(model.backbone,
                                       prefix=("backbone",)).items():
    spec[path] = dataclasses.replace(src, key="backbone.body." + src.key)
  pool = model.settings.roi.pooling_size
  for top in ("fpn", "rpn", "box_head", "box_predictor"):
    for path, var in nnx.to_flat_state(nnx.state(getattr(model, top))):
      full = (top,) + tuple(path)
      leaf = str(path[-1])
      if leaf not in LEAF_TO_TORCH:
        raise ValueError(f"no torch name for {'.'.join(map(str, full))}")
      src = torch_source(f"{_head_key(model, full)}.{LEAF_TO_TORCH[leaf]}",
                         var.shape)
      first_fc = top == "box_head" and str(path[0]) in ("fc6", "fc")
      if first_fc and leaf == "kernel":
        c = var.shape[0] // (pool * pool)
        src = dataclasses.replace(src, to_ours=fc6_to_ours(pool, c))
      spec[full] = src
  check_spec_covers(model, spec, "torchvision")
  return spec


REINITIALIZABLE = (("box_predictor", "cls_score"),
                   ("box_predictor", "bbox_pred"))


def load_state_dict(model, state_dict: Mapping[str, Any], *,
                    reinit_mismatched_heads: bool = False) -> list[str]:
  """Loads a torchvision Faster R-CNN FPN state dict into ``model``, in place.

  Args:
    model: a FasterRCNNFPN of the state dict's variant and depth.
    state_dict: {torch key: array}; 'module.' prefixes are stripped.
    reinit_mismatched_heads: leave the box predictor's layers as they are
      when their shapes differ (fine-tuning to other classes).

  Returns:
    the modules left as they were.

  Raises:
    WeightImportError: missing / unexpected keys and shape mismatches, all
      in one message (the model is unchanged then).
  """
  state_dict = torch_io.strip_prefix(torch_io.to_numpy_tree(dict(state_dict)))
  try:
    info = analyze_state_dict(state_dict).describe()
  except ValueError as e:
    info = str(e)
  hint = (f"the state dict is {info}; the model is a Faster R-CNN FPN "
          f"{model.settings.variant} with {model.settings.num_classes} "
          f"classes")
  return load_detector_arrays(model, fpn_torch_spec(model), state_dict,
                              hint=hint, reinitializable=REINITIALIZABLE,
                              reinit_mismatched=reinit_mismatched_heads)


def implied_config(info: TorchvisionDetectorInfo) -> dict[str, Any]:
  """The config values (dotted keys) the weights need."""
  out: dict[str, Any] = {
      "model.arch": "fpn", "fpn.variant": info.variant,
      "backbone.name": info.backbone, "backbone.stride_in_1x1": False,
      "backbone.norm": "frozen_bn", "fpn.out_channels": 256,
      "fpn.representation_size": 1024, "anchors.ratios": [0.5, 1.0, 2.0],
      "roi.pooling_size": 7}
  out.update(preprocessing.TORCHVISION.config_values())
  if info.variant == "v2":
    out["fpn.head_convs"] = [256, 256, 256, 256]
  return out


def class_names_for(classes: str, num_classes: int) -> list[str]:
  """Slot names: ``coco91`` (torchvision's COCO list, 'N/A' included; the
  default for 91 slots) or a comma-separated list (background first or
  implied) with exactly ``num_classes`` entries."""
  spec = (classes or "").strip()
  if not spec and num_classes == 91:
    spec = COCO91
  if spec.lower() in (COCO91, "coco"):
    names = list(class_lists.TORCHVISION_COCO_CATEGORIES)
  else:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names and names[0] != class_lists.BACKGROUND:
      names = [class_lists.BACKGROUND] + names
  if len(names) != num_classes:
    raise ValueError(
        f"--classes={classes!r} gives {len(names)} names (with background); "
        f"the state dict has {num_classes} class slots: use --classes=coco91 "
        f"(torchvision's COCO models) or list the {num_classes - 1} classes "
        f"in slot order")
  return names


def _pure_from_arrays(abstract_model, arrays: Mapping[Path, np.ndarray]
                      ) -> dict:
  flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(abstract_model))}
  pure = nnx.to_pure_dict(nnx.state(abstract_model))
  for path, var in flat.items():
    node = pure
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = np.asarray(arrays[path], dtype=var.dtype)
  return pure


def model_from_state_dict(state_dict: Mapping[str, Any], *,
                          settings: detector_fpn.FPNSettings | None = None):
  """A ready FasterRCNNFPN holding a torchvision state dict's weights
  (built abstractly, then filled: no random initialisation is run)."""
  state_dict = torch_io.strip_prefix(torch_io.to_numpy_tree(dict(state_dict)))
  info = analyze_state_dict(state_dict)
  abstract = detector_for_state_dict(info, abstract=True, settings=settings)
  arrays = convert_state_dict(fpn_torch_spec(abstract), state_dict,
                              ignore=ignore_batch_counter,
                              hint=f"the state dict is {info.describe()}")
  graphdef, state = nnx.split(abstract)
  pure = jax.tree.map(jnp.asarray, _pure_from_arrays(abstract, arrays))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def convert_file(src: str, kind: str, out: str, classes: str = "") -> str:
  """A torchvision Faster R-CNN FPN .pth -> OUT/checkpoints/0 (model + meta)
  that eval.py, demo.py and ``init_from`` read. Returns a summary."""
  sd, _ = torch_io.read_torch_checkpoint(src)
  info = analyze_state_dict(sd)
  if kind not in TORCHVISION_DETECTOR_KINDS:
    raise ValueError(f"{kind!r} is not a torchvision detector kind: one of "
                     f"{sorted(TORCHVISION_DETECTOR_KINDS)}")
  want = TORCHVISION_DETECTOR_KINDS[kind].variant
  if want != info.variant:
    other = [k for k, v in TORCHVISION_DETECTOR_KINDS.items()
             if v.variant == info.variant]
    raise ValueError(f"{src} is {info.describe()}, not {want} (--kind={kind})"
                     f"; use --kind={other[0]}")
  names = class_names_for(classes, info.num_classes)
  model = detector_for_state_dict(info, abstract=True)
  arrays = convert_state_dict(fpn_torch_spec(model), sd,
                              ignore=ignore_batch_counter,
                              hint=f"the state dict is {info.describe()}")
  meta = {"format": META_FORMAT, "kind": kind,
          "source": os.path.abspath(src), "class_names": names,
          "num_classes": info.num_classes,
          "implied_config": implied_config(info), "checkpoint": {},
          "notes": []}
  checkpoints.save_model_checkpoint(_pure_from_arrays(model, arrays), out,
                                    meta)
  return (f"{src}: {info.describe()}\n"
          f"  -> {os.path.join(out, 'checkpoints', '0')} ({len(arrays)} "
          f"arrays, slots {names[1:4]}...)")
