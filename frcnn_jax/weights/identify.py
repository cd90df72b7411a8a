"""What a state dict is, from its keys and shapes (no model is built).

``guess_network`` describes any state dict for error messages;
``analyze_detector_state_dict`` reads a faster-rcnn.pytorch detector's
network, classes, anchors and box layout; ``guess_kind`` names the kind when
the keys identify it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from frcnn_jax.modeling import backbones
from frcnn_jax.weights.arrays import WeightImportError
from frcnn_jax.weights.kinds import AUTO_DETECTOR_KIND
from frcnn_jax.weights.kinds import detector_kind_for_backbone
from frcnn_jax.weights.kinds import KINDS
from frcnn_jax.weights.kinds import TORCHVISION_DETECTOR_KINDS


def block_counts(state_dict: Mapping[str, Any],
                  prefixes: Sequence[str]) -> tuple[int, ...]:
  """Blocks per stage: 1 + the largest N of the keys '<prefix>N.*'."""
  out = []
  for p in prefixes:
    idx = {int(k[len(p):].split(".")[0]) for k in state_dict
           if k.startswith(p) and k[len(p):].split(".")[0].isdigit()}
    out.append(max(idx) + 1 if idx else 0)
  return tuple(out)

def resnet_name_for_blocks(blocks: Sequence[int]) -> str | None:
  """'resnet50' / 'resnet101' / 'resnet152' for bottleneck stage blocks."""
  for name, want in backbones.RESNET_STAGE_BLOCKS.items():
    if tuple(want) == tuple(blocks):
      return name
  return None

def guess_network(state_dict: Mapping[str, Any]) -> str:
  """A human description of what a state dict looks like (for error hints)."""
  keys = list(state_dict)
  if any(k.startswith("backbone.fpn.") for k in keys):
    v2 = "backbone.fpn.inner_blocks.0.1.weight" in state_dict
    return f"a torchvision Faster R-CNN FPN {'v2' if v2 else 'v1'} state dict"
  if any(k.startswith("RCNN_base.") for k in keys):
    try:
      return analyze_detector_state_dict(state_dict).describe()
    except ValueError:
      return "a faster-rcnn.pytorch detector checkpoint (RCNN_base.* keys)"
  if "features.0.weight" in state_dict:
    return "a VGG (features.N / classifier.N keys)"
  if "conv1.weight" in state_dict:
    blocks = block_counts(state_dict, [f"layer{i}." for i in range(1, 5)])
    bottleneck = any(".conv3." in k for k in keys)
    name = resnet_name_for_blocks(blocks) if bottleneck else None
    name = {"resnet50": "ResNet-50", "resnet101": "ResNet-101",
            "resnet152": "ResNet-152"}.get(name or "", "a ResNet")
    return (f"{name} ({'bottleneck' if bottleneck else 'basic'} blocks "
            f"{tuple(blocks)}, conv1 {tuple(np.shape(state_dict['conv1.weight']))})")
  return f"an unknown network (first keys: {keys[:5]})"

@dataclasses.dataclass(frozen=True)
class DetectorCheckpointInfo:
  """What a faster-rcnn.pytorch detector state dict holds (from its shapes).

  Attributes:
    backbone: 'resnet50' | 'resnet101' | 'resnet152' | 'vgg16', or None when
      the ResNet's block counts match no known depth.
    stage_blocks: ResNet blocks per stage (None for VGG16).
    num_classes: K, background included (RCNN_cls_score rows).
    class_agnostic: RCNN_bbox_pred has 4 rows instead of 4K.
    num_anchors: A (RPN_cls_score has 2A output channels).
    rpn_channels: RPN_Conv output channels (512).
    trunk_channels: RPN_Conv input channels (1024 ResNet, 512 VGG16).
    head_channels: RCNN_cls_score input features (2048 ResNet, 4096 VGG16).
    pooling_mode: the checkpoint's 'pooling_mode' entry, or None.
    extras: the checkpoint's other scalar entries (session, epoch, ...).
  """
  backbone: str | None
  stage_blocks: tuple[int, ...] | None
  num_classes: int
  class_agnostic: bool
  num_anchors: int
  rpn_channels: int
  trunk_channels: int
  head_channels: int
  pooling_mode: str | None = None
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def describe(self) -> str:
    net = self.backbone or f"an unknown ResNet (blocks {self.stage_blocks})"
    boxes = "class-agnostic boxes" if self.class_agnostic else "per-class boxes"
    pool = f", pooling_mode {self.pooling_mode!r}" if self.pooling_mode else ""
    return (f"a faster-rcnn.pytorch detector: {net}, {self.num_classes} "
            f"classes (with background), {boxes}, {self.num_anchors} anchors, "
            f"RPN conv {self.rpn_channels} channels{pool}")

_DETECTOR_REQUIRED = ("RCNN_rpn.RPN_Conv.weight", "RCNN_rpn.RPN_cls_score.weight",
                      "RCNN_rpn.RPN_bbox_pred.weight", "RCNN_cls_score.weight",
                      "RCNN_bbox_pred.weight", "RCNN_base.0.weight")

def analyze_detector_state_dict(state_dict: Mapping[str, Any],
                                extras: Mapping[str, Any] | None = None
                                ) -> DetectorCheckpointInfo:
  """Reads network, classes, anchors and box layout from the shapes.

  Raises:
    WeightImportError: a key every detector has is missing.
    ValueError: inconsistent shapes (e.g. RPN_bbox_pred not 2x RPN_cls_score).
  """
  extras = dict(extras or {})
  missing = [k for k in _DETECTOR_REQUIRED if k not in state_dict]
  if missing:
    raise WeightImportError(missing, [], [], hint=(
        "not a faster-rcnn.pytorch detector checkpoint; it looks like "
        + (guess_network(state_dict) if not any(
            k.startswith("RCNN_base.") for k in state_dict)
           else "a partial detector")))
  shape = lambda k: tuple(np.shape(state_dict[k]))
  cls, box = shape("RCNN_cls_score.weight"), shape("RCNN_bbox_pred.weight")
  conv = shape("RCNN_rpn.RPN_Conv.weight")
  rpn_cls = shape("RCNN_rpn.RPN_cls_score.weight")
  rpn_box = shape("RCNN_rpn.RPN_bbox_pred.weight")
  k = cls[0]
  if box[0] not in (4, 4 * k):
    raise ValueError(f"RCNN_bbox_pred.weight has {box[0]} rows; expected 4 "
                     f"(class-agnostic) or 4 x {k} (RCNN_cls_score rows)")
  if rpn_cls[0] % 2 or rpn_box[0] != 2 * rpn_cls[0]:
    raise ValueError(f"RPN_cls_score has {rpn_cls[0]} channels and "
                     f"RPN_bbox_pred {rpn_box[0]}: expected 2A and 4A")
  base0 = shape("RCNN_base.0.weight")
  if len(base0) == 4 and base0[2:] == (3, 3):
    name, blocks = "vgg16", None
  else:
    blocks = block_counts(state_dict, ["RCNN_base.4.", "RCNN_base.5.",
                                        "RCNN_base.6.", "RCNN_top.0."])
    name = resnet_name_for_blocks(blocks)
  pm = extras.get("pooling_mode")
  return DetectorCheckpointInfo(
      backbone=name, stage_blocks=blocks, num_classes=int(k),
      class_agnostic=bool(box[0] == 4 and k != 1),
      num_anchors=int(rpn_cls[0] // 2), rpn_channels=int(conv[0]),
      trunk_channels=int(conv[1]), head_channels=int(cls[1]),
      pooling_mode=str(pm) if isinstance(pm, str) else None,
      extras={k2: v for k2, v in extras.items()
              if isinstance(v, (str, int, float, bool))})

def guess_kind(state_dict: Mapping[str, Any]) -> tuple[str | None, list[str]]:
  """(kind, candidates) from a state dict's keys and shapes.

  A kind is returned only when the keys identify it: faster-rcnn.pytorch
  detectors (RCNN_base.*: the backbone from the block counts) and the
  ResNet-50/152 ImageNet files (only torchvision's exist). ResNet-101 and
  VGG16 ImageNet files look the same from torchvision and from caffe
  (different preprocessing and stride placement): None and both candidates.
  torchvision's Faster R-CNN FPN state dicts (backbone.fpn.*) are v1 or v2
  (v2 has BatchNorm after the FPN convs).
  """
  if any(k.startswith("backbone.fpn.") for k in state_dict):
    v2 = "backbone.fpn.inner_blocks.0.1.weight" in state_dict
    kinds = [k for k, v in TORCHVISION_DETECTOR_KINDS.items()
             if v.variant == ("v2" if v2 else "v1")]
    return kinds[0], []
  if any(k.startswith("RCNN_base.") for k in state_dict):
    try:
      info = analyze_detector_state_dict(state_dict)
    except ValueError:
      return None, [AUTO_DETECTOR_KIND]
    if info.backbone is None:
      return None, []
    return detector_kind_for_backbone(info.backbone), []
  if "features.0.weight" in state_dict:
    name = "vgg16"
  elif "conv1.weight" in state_dict and any(".conv3." in k for k in state_dict):
    name = resnet_name_for_blocks(
        block_counts(state_dict, [f"layer{i}." for i in range(1, 5)]))
  else:
    name = None
  cands = sorted(k for k, v in KINDS.items() if v.backbone == name)
  return (cands[0] if len(cands) == 1 else None), cands
