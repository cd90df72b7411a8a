"""Import of pretrained PyTorch weights into frcnn_jax models.

Backbone part (this file is meant to grow a detector part: whole
faster-rcnn.pytorch checkpoints, built from the same pieces):

  * torchvision ImageNet ResNet-50/101/152 and VGG16 state dicts
    (resnet50-0676ba61.pth, resnet101-63fe2227.pth, vgg16-397923af.pth, any
    `torchvision.models.*().state_dict()` saved with torch.save);
  * faster-rcnn.pytorch's caffe-converted resnet101_caffe.pth and
    vgg16_caffe.pth (torchvision module names: conv1.weight, bn1.running_mean,
    layer1.0.downsample.1.weight, ...; features.N / classifier.N), whose ResNet
    needs `stride_in_1x1=True`.

Layout conversions (torch -> ours): conv weight [O,I,kh,kw] -> kernel
[kh,kw,I,O]; linear weight [out,in] -> kernel [in,out]; BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var; VGG fc6
(classifier.0) rows are permuted from torch's (c, h, w) flatten order to our
(h, w, c) order. Ignored keys: the ImageNet classifiers (`fc.*`,
`classifier.6.*`) and BatchNorm's `num_batches_tracked`; a `module.` prefix
(DataParallel) is stripped. Everything else must match: missing keys,
unexpected keys and shape mismatches are reported together in one
`WeightImportError`.

The generic pieces, for the detector part to reuse:
  TorchSource, convert_state_dict(spec, state_dict) -> {path: array},
  assign_arrays(model, arrays), backbone_torch_spec(backbone, prefix=..., style=...)
  with style 'faster_rcnn_pytorch' naming the RCNN_base.* / RCNN_top.* keys of
  a detector checkpoint.

Reading `.pth` needs torch, an optional dependency imported lazily:
  pip install -r requirements-torch.txt

Command line:
  python -m frcnn_jax.weights convert --from=resnet101_caffe.pth \
      --kind=caffe_resnet101 --out=/path/r101_caffe
  python -m frcnn_jax.weights inspect --from=some.pth
`convert` writes an orbax checkpoint of the backbone (DIR/state) and
DIR/meta.json (kind, backbone config, preprocessing); `load_pretrained_backbone`
accepts that directory, or a .pth file with its kind, so machines without
torch can start from converted weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from frcnn_jax import backbones

Path = tuple[Any, ...]

TORCH_INSTALL_HINT = (
    "Reading PyTorch .pth files needs torch (an optional dependency): "
    "pip install -r requirements-torch.txt "
    "(add --extra-index-url https://download.pytorch.org/whl/cpu for the CPU build)")

META_FORMAT = "frcnn_jax.backbone_weights/1"


# ----------------------------------------------------------------------------
# Preprocessing that goes with each kind of weights
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How images must be normalized for a set of pretrained weights.

  network input = (image_in_channel_order * pixel_scale - mean) / std,
  per channel, with `mean`/`std` listed in `channel_order`.
  """
  channel_order: str  # 'RGB' or 'BGR'
  pixel_scale: float  # 1/255 for 0..1 inputs, 1.0 for 0..255 inputs
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def apply(self, images_rgb: jax.Array) -> jax.Array:
    """images [..., 3] RGB float 0..255 -> float32 network input [..., 3]."""
    x = jnp.asarray(images_rgb, jnp.float32)
    if self.channel_order == "BGR":
      x = x[..., ::-1]
    x = x * self.pixel_scale
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(
        self.std, jnp.float32)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# torchvision's ImageNet normalization: RGB, 0..1, mean/std.
TORCHVISION_PREPROCESSING = Preprocessing(
    "RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# faster-rcnn.pytorch's caffe models: BGR 0..255 minus cfg.PIXEL_MEANS, no std.
CAFFE_PREPROCESSING = Preprocessing(
    "BGR", 1.0, (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0))


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


def _kind(kind: str) -> WeightKind:
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
  k = _kind(kind)
  cfg = backbones.default_backbone_config(k.backbone) if base is None else (
      ml_collections.ConfigDict(base.to_dict()))
  cfg.name = k.backbone
  cfg.norm = "frozen_bn"
  if k.stride_in_1x1 is not None:
    cfg.stride_in_1x1 = k.stride_in_1x1
  return cfg


# ----------------------------------------------------------------------------
# Reading .pth files
# ----------------------------------------------------------------------------


def import_torch():
  """Imports torch, or raises ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(TORCH_INSTALL_HINT) from e
  return torch


def to_numpy_tree(obj: Any) -> Any:
  """torch tensors -> numpy arrays, recursively through dicts/lists/tuples."""
  if hasattr(obj, "detach") and hasattr(obj, "numpy"):
    t = obj.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: to_numpy_tree(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(to_numpy_tree(v) for v in obj)
  return obj


def load_torch_file(path: str) -> Any:
  """Loads a .pth file with torch (weights_only) and converts it to numpy."""
  torch = import_torch()
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such weights file: {path}")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return to_numpy_tree(obj)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A flat state dict {name: array} from a .pth file.

  Accepts a plain state dict, or a dict holding one under 'state_dict' or
  'model' (training checkpoints).
  """
  obj = load_torch_file(path)
  return as_state_dict(obj, source=path)


def as_state_dict(obj: Any, source: str = "the checkpoint") -> dict[str, np.ndarray]:
  """Picks the flat {name: array} state dict out of a loaded checkpoint."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
  for key in ("state_dict", "model"):
    if key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  out = {}
  for k, v in obj.items():
    if isinstance(v, np.ndarray):
      out[str(k)] = v
    elif isinstance(v, (int, float)) and str(k).endswith("num_batches_tracked"):
      out[str(k)] = np.asarray(v)
  if not out:
    raise ValueError(f"{source} holds no arrays; keys: {sorted(map(str, obj))[:20]}")
  return out


# ----------------------------------------------------------------------------
# Generic conversion: spec {our path: TorchSource} + state dict -> arrays
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchSource:
  """Where one of our variables comes from in a torch state dict.

  Attributes:
    key: the torch state-dict key.
    torch_shape: the shape that key must have.
    to_ours: maps the torch array (of torch_shape) to our layout.
  """
  key: str
  torch_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]


class WeightImportError(ValueError):
  """A state dict does not fit the model; lists every offending key."""

  def __init__(self, missing: Sequence[str], unexpected: Sequence[str],
               mismatched: Sequence[tuple[str, tuple, tuple]], hint: str = "",
               max_listed: int = 40):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    lines = ["the state dict does not fit the model:"]

    def listing(title, items):
      if not items:
        return
      lines.append(f"  {title} ({len(items)}):")
      for it in items[:max_listed]:
        lines.append(f"    {it}")
      if len(items) > max_listed:
        lines.append(f"    ... and {len(items) - max_listed} more")

    listing("missing keys", self.missing)
    listing("unexpected keys", self.unexpected)
    listing("shape mismatches (key: checkpoint shape vs expected shape)",
            [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched])
    if hint:
      lines.append(f"  hint: {hint}")
    super().__init__("\n".join(lines))


def default_ignore(key: str) -> bool:
  """Keys of a backbone file that are not weights of our backbones."""
  return (key.endswith("num_batches_tracked") or key.startswith("fc.") or
          key.startswith("classifier.6."))


def strip_prefix(state_dict: Mapping[str, np.ndarray],
                 prefix: str = "module.") -> dict[str, np.ndarray]:
  """Removes `prefix` (DataParallel's 'module.') when every key has it."""
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def convert_state_dict(
    spec: Mapping[Path, TorchSource], state_dict: Mapping[str, np.ndarray], *,
    ignore: Callable[[str], bool] = default_ignore, hint: str = "",
) -> dict[Path, np.ndarray]:
  """Maps a torch state dict onto our variable paths, checking everything.

  Args:
    spec: {our variable path: TorchSource}.
    state_dict: {torch key: array}.
    ignore: keys that may be present without being used.
    hint: appended to the error message.

  Returns:
    {our path: array in our layout (the checkpoint's dtype)}.

  Raises:
    WeightImportError: listing all missing keys, unexpected keys and shape
      mismatches at once.
  """
  used = set()
  missing, mismatched = [], []
  out = {}
  for path, src in spec.items():
    if src.key not in state_dict:
      missing.append(src.key)
      continue
    used.add(src.key)
    arr = np.asarray(state_dict[src.key])
    if tuple(arr.shape) != tuple(src.torch_shape):
      mismatched.append((src.key, tuple(arr.shape), tuple(src.torch_shape)))
      continue
    out[path] = src.to_ours(arr)
  unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
  if missing or unexpected or mismatched:
    raise WeightImportError(missing, unexpected, mismatched, hint=hint)
  return out


def assign_arrays(model: nnx.Module, arrays: Mapping[Path, np.ndarray], *,
                  require: Callable[[Path], bool] | None = None) -> None:
  """Writes arrays into `model`'s variables in place (cast to their dtypes).

  Args:
    model: the module to update.
    arrays: {variable path: array of the variable's shape}.
    require: paths that must all be assigned (default: every variable);
      a path of `arrays` that the model lacks is always an error.
  """
  state = nnx.state(model)
  flat = {tuple(p): v for p, v in nnx.to_flat_state(state)}
  unknown = [p for p in arrays if tuple(p) not in flat]
  if unknown:
    raise ValueError(f"the model has no variables at {unknown[:20]}")
  require = require or (lambda p: True)
  unassigned = [p for p in flat if require(p) and p not in arrays]
  if unassigned:
    raise ValueError(
        "no value for " + ", ".join(".".join(map(str, p)) for p in unassigned[:20]))
  pure = nnx.to_pure_dict(state)
  for path, arr in arrays.items():
    var = flat[tuple(path)]
    if tuple(var.shape) != tuple(arr.shape):
      raise ValueError(f"{path}: shape {arr.shape}, the model has {var.shape}")
    node = pure
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = jnp.asarray(arr, dtype=var.dtype)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


# ----------------------------------------------------------------------------
# Backbone specs
# ----------------------------------------------------------------------------

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}

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


def _conv_to_ours(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _linear_to_ours(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (1, 0))


def _identity(w: np.ndarray) -> np.ndarray:
  return w


def _fc6_to_ours(p: int, c: int) -> Callable[[np.ndarray], np.ndarray]:
  def f(w: np.ndarray) -> np.ndarray:
    out = w.shape[0]
    return w.reshape(out, c, p, p).transpose(2, 3, 1, 0).reshape(p * p * c, out)
  return f


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
    if leaf not in _LEAF_TO_TORCH:
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
    key = ".".join(parts[:-1] + [_LEAF_TO_TORCH[leaf]])
    if len(shape) == 4:
      torch_shape = (shape[3], shape[2], shape[0], shape[1])
      to_ours = _conv_to_ours
    elif len(shape) == 2:
      torch_shape = (shape[1], shape[0])
      to_ours = _linear_to_ours
      if is_vgg and head == "fc6":
        to_ours = _fc6_to_ours(backbone.pool_size, backbone.widths[-1])
    else:
      torch_shape = shape
      to_ours = _identity
    spec[tuple(prefix) + path] = TorchSource(key, torch_shape, to_ours)
  return spec


def guess_network(state_dict: Mapping[str, Any]) -> str:
  """A human description of what a state dict looks like (for error hints)."""
  keys = list(state_dict)
  if any(k.startswith("RCNN_base.") for k in keys):
    return "a faster-rcnn.pytorch detector checkpoint (RCNN_base.* keys)"
  if "features.0.weight" in state_dict:
    return "a VGG (features.N / classifier.N keys)"
  if "conv1.weight" in state_dict:
    blocks = []
    for layer in range(1, 5):
      idx = {int(k.split(".")[1]) for k in keys
             if k.startswith(f"layer{layer}.") and k.split(".")[1].isdigit()}
      blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = any(".conv3." in k for k in keys)
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}.get(
        tuple(blocks)) if bottleneck else None
    name = f"ResNet-{depth}" if depth else "a ResNet"
    return (f"{name} ({'bottleneck' if bottleneck else 'basic'} blocks "
            f"{tuple(blocks)}, conv1 {tuple(np.shape(state_dict['conv1.weight']))})")
  return f"an unknown network (first keys: {keys[:5]})"


def _describe(backbone: backbones.Backbone) -> str:
  if isinstance(backbone, backbones.VGG16):
    return f"VGG16 widths {backbone.widths}"
  return (f"ResNet {backbone.block} blocks {backbone.stage_blocks} widths "
          f"{backbone.widths}")


def check_backbone_fits_kind(backbone: backbones.Backbone, kind: str) -> None:
  """Raises ValueError when `backbone` is not the network `kind` was made for."""
  k = _kind(kind)
  if k.backbone == "vgg16":
    ok = isinstance(backbone, backbones.VGG16)
  else:
    ok = (isinstance(backbone, backbones.ResNet) and backbone.block == "bottleneck"
          and backbone.stage_blocks == backbones.RESNET_STAGE_BLOCKS[k.backbone])
  if not ok:
    raise ValueError(f"weights of kind {kind!r} ({k.description}) are for "
                     f"{k.backbone}, but the backbone is {_describe(backbone)}")
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
  state_dict = strip_prefix(to_numpy_tree(dict(state_dict)))
  spec = backbone_torch_spec(backbone, style=style)
  hint = (f"the checkpoint looks like {guess_network(state_dict)}; the model "
          f"is {_describe(backbone)}")
  arrays = convert_state_dict(spec, state_dict, hint=hint)
  assign_arrays(backbone, arrays)


# ----------------------------------------------------------------------------
# Converted backbone checkpoints (orbax) and loading from the config
# ----------------------------------------------------------------------------


def _flat_arrays(module: nnx.Module) -> dict[str, Any]:
  return {".".join(map(str, p)): v[...]
          for p, v in nnx.to_flat_state(nnx.state(module))}


def save_backbone_weights(backbone: backbones.Backbone, directory: str, *,
                          kind: str, backbone_config: ml_collections.ConfigDict
                          ) -> None:
  """Writes DIR/state (orbax, flat {'layer1.0.conv1.kernel': array}) and
  DIR/meta.json (format, kind, backbone config, preprocessing)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "state"), _flat_arrays(backbone),
               force=True)
  meta = {"format": META_FORMAT, "kind": kind,
          "backbone": backbone_config.to_dict(),
          "preprocessing": _kind(kind).preprocessing.to_dict()}
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
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
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
  load_backbone_state_dict(backbone, read_state_dict(path), kind=kind)
  return _kind(kind).preprocessing


def load_pretrained_from_config(
    backbone: backbones.Backbone, backbone_config: ml_collections.ConfigDict
) -> Preprocessing | None:
  """Applies backbone_config.pretrained_path/kind; None when the path is ''."""
  path = backbone_config.get("pretrained_path", "")
  if not path:
    return None
  return load_pretrained_backbone(backbone, path,
                                  backbone_config.get("pretrained_kind", ""))


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def convert_backbone_file(src: str, kind: str, out: str) -> str:
  """Reads a backbone .pth of `kind`, writes a converted directory; returns a
  one-line summary."""
  cfg = backbone_config_for_kind(kind)
  backbone = backbones.build_backbone(cfg, rngs=nnx.Rngs(0))
  load_backbone_state_dict(backbone, read_state_dict(src), kind=kind)
  save_backbone_weights(backbone, out, kind=kind, backbone_config=cfg)
  n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(backbone)))
  return f"{src} ({kind}, {n} values) -> {out}"


# kind -> converter(src, kind, out) -> summary. The detector part adds its
# kinds here.
CONVERTERS: dict[str, Callable[[str, str, str], str]] = {
    k: convert_backbone_file for k in KINDS}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m frcnn_jax.weights",
      description="Convert pretrained PyTorch weights for frcnn_jax.")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert a .pth file")
  conv.add_argument("--from", dest="src", required=True, help=".pth file")
  conv.add_argument("--kind", required=True, choices=sorted(CONVERTERS))
  conv.add_argument("--out", required=True, help="output directory")
  insp = sub.add_parser("inspect", help="describe a .pth file")
  insp.add_argument("--from", dest="src", required=True, help=".pth file")
  args = parser.parse_args(argv)
  if args.command == "convert":
    print(CONVERTERS[args.kind](args.src, args.kind, args.out))
  else:
    sd = read_state_dict(args.src)
    print(f"{args.src}: {len(sd)} arrays; looks like {guess_network(sd)}")
  return 0


__all__ = [
    "CAFFE_PREPROCESSING", "KINDS", "Preprocessing", "TORCHVISION_PREPROCESSING",
    "TorchSource", "WeightImportError", "WeightKind", "as_state_dict",
    "assign_arrays", "backbone_config_for_kind", "backbone_torch_spec",
    "check_backbone_fits_kind", "convert_state_dict", "default_ignore",
    "guess_network", "load_backbone_state_dict", "load_pretrained_backbone",
    "load_pretrained_from_config", "load_torch_file", "main", "read_state_dict",
    "restore_backbone_weights", "save_backbone_weights",
]

if __name__ == "__main__":
  sys.exit(main())
