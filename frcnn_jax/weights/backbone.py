"""ImageNet backbones: torchvision / caffe state dicts -> our backbones.

torchvision ResNet-50/101/152 and VGG16 (``stride_in_1x1=False``, RGB
mean/std) and faster-rcnn.pytorch's caffe ResNet-101 / VGG16
(``stride_in_1x1=True``, BGR minus the caffe means). VGG fc6 rows are
permuted from torch's (c, h, w) flatten order to our (h, w, c) order. A
converted backbone is a folder: ``state`` (orbax, flat names) and
``meta.json`` (kind, backbone config, preprocessing).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from frcnn_jax.modeling import backbones
from frcnn_jax.modeling.preprocessing import Preprocessing
from frcnn_jax.weights import torch_io
from frcnn_jax.weights.arrays import assign_arrays
from frcnn_jax.weights.arrays import convert_state_dict
from frcnn_jax.weights.arrays import fc6_to_ours
from frcnn_jax.weights.arrays import LEAF_TO_TORCH
from frcnn_jax.weights.arrays import Path
from frcnn_jax.weights.arrays import torch_source
from frcnn_jax.weights.arrays import TorchSource
from frcnn_jax.weights.arrays import WeightImportError
from frcnn_jax.weights.identify import guess_network
from frcnn_jax.weights.kinds import kind_info
from frcnn_jax.weights.kinds import KINDS


# faster-rcnn.pytorch's detector: RCNN_base = Sequential(conv1, bn1, relu,
# maxpool, layer1, layer2, layer3), RCNN_top = Sequential(layer4); VGG16:
# RCNN_base = features[:-1], RCNN_top = classifier[:-1].
_FRCNN_RESNET_RENAME = {"conv1": "RCNN_base.0", "bn1": "RCNN_base.1",
                        "layer1": "RCNN_base.4", "layer2": "RCNN_base.5",
                        "layer3": "RCNN_base.6", "layer4": "RCNN_top.0"}

STYLES = ("torchvision", "faster_rcnn_pytorch")

def vgg_torch_module_names(backbone: backbones.VGG16) -> dict[str, str]:
  """Our VGG16 layer names -> torchvision's features.N / classifier.N."""
  names, index = {}, 0
  for s, n in enumerate(backbones.VGG16_STAGE_CONVS):
    for i in range(n):
      names[f"conv{s + 1}_{i + 1}"] = f"features.{index}"
      index += 2  # conv, relu
    index += 1  # max pool (features.30 after stage 5 is dropped by the seed)
  names["fc6"] = "classifier.0"
  names["fc7"] = "classifier.3"
  del backbone
  return names

def backbone_torch_spec(backbone: backbones.Backbone, *, prefix: Path = (),
                        style: str = "torchvision") -> dict[Path, TorchSource]:
  """{our variable path: TorchSource} for every variable of `backbone`.

  Works on an abstract backbone (nnx.eval_shape) too.

  Args:
    backbone: a ResNet or VGG16.
    prefix: prepended to our paths (the backbone's path in a bigger model).
    style: 'torchvision' keys (conv1.weight, features.0.weight, ...) or
      'faster_rcnn_pytorch' detector keys (RCNN_base.0.weight,
      RCNN_top.0.2.conv3.weight, RCNN_base.0.weight for VGG conv1_1, ...).
  """
  if style not in STYLES:
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")
  is_vgg = isinstance(backbone, backbones.VGG16)
  vgg_names = vgg_torch_module_names(backbone) if is_vgg else {}
  spec = {}
  for path, var in nnx.to_flat_state(nnx.state(backbone)):
    path = tuple(path)
    shape = tuple(var.shape)
    parts = [str(p) for p in path]
    leaf = parts[-1]
    if leaf not in LEAF_TO_TORCH:
      raise ValueError(f"no torch name for variable {'.'.join(parts)}")
    head = parts[0]
    if is_vgg:
      module = vgg_names[head]
      if style == "faster_rcnn_pytorch":
        module = module.replace("features.", "RCNN_base.").replace(
            "classifier.", "RCNN_top.")
      parts = [module] + parts[1:]
    elif style == "faster_rcnn_pytorch":
      parts = [_FRCNN_RESNET_RENAME[head]] + parts[1:]
    key = ".".join(parts[:-1] + [LEAF_TO_TORCH[leaf]])
    src = torch_source(key, shape)
    if is_vgg and head == "fc6" and len(shape) == 2:
      src = dataclasses.replace(
          src, to_ours=fc6_to_ours(backbone.pool_size, backbone.widths[-1]))
    spec[tuple(prefix) + path] = src
  return spec

def describe_backbone(backbone: backbones.Backbone) -> str:
  if isinstance(backbone, backbones.VGG16):
    return f"VGG16 widths {backbone.widths}"
  return (f"ResNet {backbone.block} blocks {backbone.stage_blocks} widths "
          f"{backbone.widths}")

def check_backbone_fits_kind(backbone: backbones.Backbone, kind: str) -> None:
  """Raises ValueError when `backbone` is not the network `kind` was made for."""
  k = kind_info(kind)
  if k.backbone == "vgg16":
    ok = isinstance(backbone, backbones.VGG16)
  else:
    ok = (isinstance(backbone, backbones.ResNet) and backbone.block == "bottleneck"
          and backbone.stage_blocks == backbones.RESNET_STAGE_BLOCKS[k.backbone])
  if not ok:
    raise ValueError(f"weights of kind {kind!r} ({k.description}) are for "
                     f"{k.backbone}, but the backbone is {describe_backbone(backbone)}")
  if isinstance(backbone, backbones.ResNet):
    if backbone.stride_in_1x1 != k.stride_in_1x1:
      raise ValueError(
          f"weights of kind {kind!r} need stride_in_1x1={k.stride_in_1x1} "
          f"(set backbone.stride_in_1x1={k.stride_in_1x1}); the backbone has "
          f"{backbone.stride_in_1x1}")
    if backbone.norm != "frozen_bn":
      raise ValueError(f"weights of kind {kind!r} carry BatchNorm statistics: "
                       f"use backbone.norm='frozen_bn', not {backbone.norm!r}")

def load_backbone_state_dict(backbone: backbones.Backbone,
                             state_dict: Mapping[str, np.ndarray], *,
                             kind: str | None = None,
                             style: str = "torchvision") -> None:
  """Loads a torch state dict into `backbone`, in place.

  Args:
    backbone: the backbone to update (its architecture must match).
    state_dict: {torch key: array} (numpy or torch tensors).
    kind: a KINDS entry, to check the architecture flags (stride placement,
      norm, depth) the weights need; None skips that check.
    style: key naming, see `backbone_torch_spec`.

  Raises:
    WeightImportError: missing / unexpected keys and shape mismatches, all in
      one message, with a guess of what the state dict is.
    ValueError: the backbone does not fit `kind`.
  """
  if kind is not None:
    check_backbone_fits_kind(backbone, kind)
  state_dict = torch_io.strip_prefix(torch_io.to_numpy_tree(dict(state_dict)))
  spec = backbone_torch_spec(backbone, style=style)
  hint = (f"the checkpoint looks like {guess_network(state_dict)}; the model "
          f"is {describe_backbone(backbone)}")
  arrays = convert_state_dict(spec, state_dict, hint=hint)
  assign_arrays(backbone, arrays)

META_FORMAT = "frcnn_jax.backbone_weights/1"

def _flat_arrays(module: nnx.Module) -> dict[str, Any]:
  return {".".join(map(str, p)): v[...]
          for p, v in nnx.to_flat_state(nnx.state(module))}

def save_backbone_weights(backbone: backbones.Backbone, directory: str, *,
                          kind: str, backbone_config: ml_collections.ConfigDict
                          ) -> None:
  """Writes DIR/state (orbax, flat {'layer1.0.conv1.kernel': array}) and
  DIR/meta.json (format, kind, backbone config, preprocessing)."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "state"), _flat_arrays(backbone),
               force=True)
  meta = {"format": META_FORMAT, "kind": kind,
          "backbone": backbone_config.to_dict(),
          "preprocessing": kind_info(kind).preprocessing.to_dict()}
  with open(os.path.join(directory, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2, default=list)

def read_converted_meta(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "meta.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} is not a converted backbone "
                            f"(no meta.json); write one with "
                            f"`python -m frcnn_jax.weights convert`")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != META_FORMAT:
    raise ValueError(f"{path}: unknown format {meta.get('format')!r}")
  return meta

def restore_backbone_weights(backbone: backbones.Backbone,
                             directory: str) -> dict[str, Any]:
  """Loads a directory written by `save_backbone_weights` into `backbone`.

  Returns its meta dict. Raises WeightImportError when the stored arrays do
  not fit (names, shapes) and ValueError when the stride placement or the
  norm differs from what the weights were made for.
  """
  directory = os.path.abspath(directory)
  meta = read_converted_meta(directory)
  if isinstance(backbone, backbones.ResNet):
    want = meta["backbone"].get("stride_in_1x1")
    if want is not None and bool(want) != backbone.stride_in_1x1:
      raise ValueError(f"{directory} ({meta['kind']}) needs "
                       f"stride_in_1x1={bool(want)}; the backbone has "
                       f"{backbone.stride_in_1x1}")
    if backbone.norm != meta["backbone"].get("norm", "frozen_bn"):
      raise ValueError(f"{directory} ({meta['kind']}) needs norm="
                       f"{meta['backbone'].get('norm')!r}; the backbone has "
                       f"{backbone.norm!r}")
  flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(backbone))}
  target = {".".join(map(str, p)): jax.ShapeDtypeStruct(v.shape, v.dtype)
            for p, v in flat.items()}
  with ocp.StandardCheckpointer() as ckptr:
    stored = ckptr.metadata(os.path.join(directory, "state"))
    stored_tree = getattr(stored, "item_metadata", stored)
    stored_tree = getattr(stored_tree, "tree", stored_tree)
    stored_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in
                     dict(stored_tree).items()}
    missing = sorted(set(target) - set(stored_shapes))
    unexpected = sorted(set(stored_shapes) - set(target))
    mismatched = [(k, stored_shapes[k], tuple(target[k].shape)) for k in target
                  if k in stored_shapes and stored_shapes[k] != tuple(target[k].shape)]
    if missing or unexpected or mismatched:
      raise WeightImportError(missing, unexpected, mismatched,
                              hint=f"{directory} holds kind {meta['kind']!r}")
    restored = ckptr.restore(os.path.join(directory, "state"), target)
  arrays = {p: np.asarray(restored[".".join(map(str, p))]) for p in flat}
  assign_arrays(backbone, arrays)
  return meta

def load_pretrained_backbone(backbone: backbones.Backbone, path: str,
                             kind: str = "") -> Preprocessing:
  """Initializes `backbone` from a .pth file (with its kind) or a directory
  written by `convert`; returns the preprocessing the weights expect."""
  if os.path.isdir(path):
    meta = restore_backbone_weights(backbone, path)
    if kind and kind != meta["kind"]:
      raise ValueError(f"{path} holds kind {meta['kind']!r}, not {kind!r}")
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in meta["preprocessing"].items()})
  if not kind:
    raise ValueError(f"loading {path} needs its kind, one of {sorted(KINDS)}")
  load_backbone_state_dict(backbone, torch_io.read_state_dict(path), kind=kind)
  return kind_info(kind).preprocessing
