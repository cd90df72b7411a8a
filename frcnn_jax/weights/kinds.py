"""Kinds of pretrained files: the network each fits and its preprocessing.

ImageNet backbones (``KINDS``: torchvision ResNet-50/101/152 and VGG16,
faster-rcnn.pytorch's caffe ResNet-101 and VGG16), whole
faster-rcnn.pytorch detectors (``DETECTOR_KINDS``, or
``AUTO_DETECTOR_KIND`` to read the network from the keys) and torchvision's
Faster R-CNN FPN detectors (``TORCHVISION_DETECTOR_KINDS``, v1 and v2). Every
faster-rcnn.pytorch network is fed BGR 0..255 minus its PIXEL_MEANS
(``CAFFE_PREPROCESSING``).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import preprocessing
from frcnn_jax.modeling.preprocessing import Preprocessing

TORCHVISION_PREPROCESSING = preprocessing.TORCHVISION
CAFFE_PREPROCESSING = preprocessing.CAFFE


@dataclasses.dataclass(frozen=True)
class WeightKind:
  """A kind of pretrained file: the network it fits and its preprocessing."""
  backbone: str  # a backbones.BACKBONE_NAMES entry
  stride_in_1x1: bool | None  # None: not a ResNet
  preprocessing: Preprocessing
  description: str

KINDS: dict[str, WeightKind] = {
    "torchvision_resnet50": WeightKind(
        "resnet50", False, TORCHVISION_PREPROCESSING,
        "torchvision ImageNet ResNet-50 state dict"),
    "torchvision_resnet101": WeightKind(
        "resnet101", False, TORCHVISION_PREPROCESSING,
        "torchvision ImageNet ResNet-101 state dict"),
    "torchvision_resnet152": WeightKind(
        "resnet152", False, TORCHVISION_PREPROCESSING,
        "torchvision ImageNet ResNet-152 state dict"),
    "torchvision_vgg16": WeightKind(
        "vgg16", None, TORCHVISION_PREPROCESSING,
        "torchvision ImageNet VGG16 state dict"),
    "caffe_resnet101": WeightKind(
        "resnet101", True, CAFFE_PREPROCESSING,
        "faster-rcnn.pytorch's resnet101_caffe.pth"),
    "caffe_vgg16": WeightKind(
        "vgg16", None, CAFFE_PREPROCESSING,
        "faster-rcnn.pytorch's vgg16_caffe.pth"),
}

def kind_info(kind: str) -> WeightKind:
  if kind not in KINDS:
    raise ValueError(f"unknown weights kind {kind!r}; known: {sorted(KINDS)}")
  return KINDS[kind]

def backbone_config_for_kind(
    kind: str, base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """A backbone config that the weights of `kind` fit.

  Starts from `base` (or `default_backbone_config(name)`) and sets name,
  stride_in_1x1 and norm='frozen_bn'; fixed_blocks is left as given (the
  seed's 1 in a fresh default config).
  """
  k = kind_info(kind)
  cfg = backbones.default_backbone_config(k.backbone) if base is None else (
      ml_collections.ConfigDict(base.to_dict()))
  cfg.name = k.backbone
  cfg.norm = "frozen_bn"
  if k.stride_in_1x1 is not None:
    cfg.stride_in_1x1 = k.stride_in_1x1
  return cfg

@dataclasses.dataclass(frozen=True)
class DetectorKind:
  """A faster-rcnn.pytorch detector checkpoint of one backbone."""
  backbone: str  # resnet50 | resnet101 | resnet152 | vgg16
  description: str
  preprocessing: Preprocessing = CAFFE_PREPROCESSING

DETECTOR_KINDS: dict[str, DetectorKind] = {
    "faster_rcnn_pytorch_res50": DetectorKind(
        "resnet50", "faster-rcnn.pytorch detector, ResNet-50 (its resnet.py)"),
    "faster_rcnn_pytorch_res101": DetectorKind(
        "resnet101", "faster-rcnn.pytorch detector, ResNet-101 (--net res101)"),
    "faster_rcnn_pytorch_res152": DetectorKind(
        "resnet152", "faster-rcnn.pytorch detector, ResNet-152 (its resnet.py)"),
    "faster_rcnn_pytorch_vgg16": DetectorKind(
        "vgg16", "faster-rcnn.pytorch detector, VGG16 (--net vgg16)"),
}

# The network is read from the checkpoint's keys.
AUTO_DETECTOR_KIND = "faster_rcnn_pytorch"


@dataclasses.dataclass(frozen=True)
class TorchvisionDetectorKind:
  """A torchvision Faster R-CNN FPN state dict (``model.state_dict()``)."""
  variant: str   # 'v1' | 'v2' (modeling.detector_fpn.VARIANTS)
  backbone: str  # resnet50 | resnet101 | resnet152 (read from the keys)
  description: str
  preprocessing: Preprocessing = TORCHVISION_PREPROCESSING

TORCHVISION_DETECTOR_KINDS: dict[str, TorchvisionDetectorKind] = {
    "torchvision_fasterrcnn_resnet50_fpn": TorchvisionDetectorKind(
        "v1", "resnet50", "torchvision fasterrcnn_resnet50_fpn (e.g. "
        "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)"),
    "torchvision_fasterrcnn_resnet50_fpn_v2": TorchvisionDetectorKind(
        "v2", "resnet50", "torchvision fasterrcnn_resnet50_fpn_v2 (e.g. "
        "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth)"),
}

ALL_KINDS = tuple(sorted(KINDS)) + tuple(sorted(DETECTOR_KINDS)) + (
    AUTO_DETECTOR_KIND,) + tuple(sorted(TORCHVISION_DETECTOR_KINDS))

def is_detector_kind(kind: str) -> bool:
  """A faster-rcnn.pytorch detector kind (not torchvision's)."""
  return kind == AUTO_DETECTOR_KIND or kind in DETECTOR_KINDS

def is_torchvision_detector_kind(kind: str) -> bool:
  return kind in TORCHVISION_DETECTOR_KINDS

def detector_kind_for_backbone(name: str) -> str:
  for k, v in DETECTOR_KINDS.items():
    if v.backbone == name:
      return k
  raise ValueError(f"no faster-rcnn.pytorch detector kind for {name!r}")

def detector_backbone_config(name: str) -> ml_collections.ConfigDict:
  """The backbone config of a faster-rcnn.pytorch detector with `name`."""
  cfg = backbones.default_backbone_config(name)
  cfg.norm = "frozen_bn"
  if name != "vgg16":
    cfg.stride_in_1x1 = True
  return cfg
