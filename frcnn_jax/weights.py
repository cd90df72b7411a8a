"""Import of pretrained PyTorch weights into frcnn_jax models.

What loads:

  * torchvision ImageNet ResNet-50/101/152 and VGG16 state dicts
    (resnet50-0676ba61.pth, resnet101-63fe2227.pth, vgg16-397923af.pth, any
    `torchvision.models.*().state_dict()` saved with torch.save) -> our
    backbones (`stride_in_1x1=False`, RGB mean/std preprocessing);
  * faster-rcnn.pytorch's caffe-converted resnet101_caffe.pth and
    vgg16_caffe.pth (torchvision module names), whose ResNet needs
    `stride_in_1x1=True` (BGR 0..255 minus the caffe means, no std);
  * whole faster-rcnn.pytorch detector checkpoints
    (faster_rcnn_{session}_{epoch}_{step}.pth: RCNN_base.*, RCNN_top.*,
    RCNN_rpn.RPN_Conv/RPN_cls_score/RPN_bbox_pred, RCNN_cls_score,
    RCNN_bbox_pred) -> our whole FasterRCNN, so that eval.py / demo.py run a
    model trained in PyTorch (kinds DETECTOR_KINDS; stride_in_1x1=True and
    caffe preprocessing for every depth, see the detector section).

Layout conversions (torch -> ours): conv weight [O,I,kh,kw] -> kernel
[kh,kw,I,O]; linear weight [out,in] -> kernel [in,out]; BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var; VGG fc6 rows are
permuted from torch's (c, h, w) flatten order to our (h, w, c) order. The RPN
score channels (all A background, then all A foreground) and the class-major
RCNN_bbox_pred rows are already our layout. Ignored keys: the ImageNet
classifiers (`fc.*`, `classifier.6.*`) and BatchNorm's `num_batches_tracked`;
a `module.` prefix (DataParallel) is stripped. Everything else must match:
missing keys, unexpected keys and shape mismatches are reported together in
one `WeightImportError`.

Generic pieces: TorchSource, convert_state_dict(spec, state_dict) ->
{path: array}, assign_arrays(model, arrays), backbone_torch_spec(backbone,
prefix=..., style=...), detector_torch_spec(model).

Starting a training run: `config.init_from` (+ `config.init_from_kind` for a
.pth whose keys do not tell its kind) is the one entry point, read by
`initialize_model`: a converted backbone folder, a backbone .pth, a
faster-rcnn.pytorch detector .pth, a converted detector folder or a train
workdir. The config's backbone and preprocessing are checked against the
weights (ConfigMismatchError naming the overrides). Evaluating: eval_lib
calls `check_config_against_checkpoint` with the checkpoint's meta.

Reading `.pth` needs torch, an optional dependency imported lazily:
  pip install -r requirements-torch.txt

Command line:
  python -m frcnn_jax.weights inspect --from=some.pth
  python -m frcnn_jax.weights convert --from=resnet101_caffe.pth \
      --kind=caffe_resnet101 --out=/path/r101_caffe
  python -m frcnn_jax.weights convert --from=faster_rcnn_1_7_10021.pth \
      --kind=faster_rcnn_pytorch_res101 --classes=voc --out=/path/frcnn_r101
A backbone conversion writes DIR/state (orbax) and DIR/meta.json (kind,
backbone config, preprocessing); a detector conversion writes
DIR/checkpoints/0 in train_lib.Checkpointer's layout (items `model` and
`meta`: class names, the config values the checkpoint implies, its
pooling_mode / class_agnostic / epoch entries). Only conversion needs torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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
from frcnn_jax import detector as detector_lib

Path = tuple[Any, ...]
log = logging.getLogger(__name__)

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


def _torch_source(key: str, shape: Sequence[int]) -> TorchSource:
  """Where a variable of our `shape` comes from, stored under torch `key`.

  4-D: a conv kernel (torch [O,I,kh,kw]); 2-D: a linear kernel (torch
  [out,in]); anything else (bias, BatchNorm arrays): the same layout.
  """
  shape = tuple(int(d) for d in shape)
  if len(shape) == 4:
    return TorchSource(key, (shape[3], shape[2], shape[0], shape[1]),
                       _conv_to_ours)
  if len(shape) == 2:
    return TorchSource(key, (shape[1], shape[0]), _linear_to_ours)
  return TorchSource(key, shape, _identity)


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
    src = _torch_source(key, shape)
    if is_vgg and head == "fc6" and len(shape) == 2:
      src = dataclasses.replace(
          src, to_ours=_fc6_to_ours(backbone.pool_size, backbone.widths[-1]))
    spec[tuple(prefix) + path] = src
  return spec


def _block_counts(state_dict: Mapping[str, Any],
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
  if any(k.startswith("RCNN_base.") for k in keys):
    try:
      return analyze_detector_state_dict(state_dict).describe()
    except ValueError:
      return "a faster-rcnn.pytorch detector checkpoint (RCNN_base.* keys)"
  if "features.0.weight" in state_dict:
    return "a VGG (features.N / classifier.N keys)"
  if "conv1.weight" in state_dict:
    blocks = _block_counts(state_dict, [f"layer{i}." for i in range(1, 5)])
    bottleneck = any(".conv3." in k for k in keys)
    name = resnet_name_for_blocks(blocks) if bottleneck else None
    name = {"resnet50": "ResNet-50", "resnet101": "ResNet-101",
            "resnet152": "ResNet-152"}.get(name or "", "a ResNet")
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


# ----------------------------------------------------------------------------
# Preprocessing and model settings vs the config
# ----------------------------------------------------------------------------


class ConfigMismatchError(ValueError):
  """The config does not match what a set of weights was made for.

  The message lists each disagreeing key with both values and the
  command-line overrides that fix it.
  """


def preprocessing_config_values(prep: Preprocessing) -> dict[str, Any]:
  """`prep` as the config's model.bgr / pixel_mean / pixel_std (0..255 input).

  The detector computes (image - pixel_mean) / pixel_std on 0..255 pixels in
  the network's channel order; `prep` scales first, so mean and std are
  divided by its pixel_scale (torchvision: 0.485 -> 123.675).
  """
  return {"model.bgr": prep.channel_order == "BGR",
          "model.pixel_mean": [float(m) / prep.pixel_scale for m in prep.mean],
          "model.pixel_std": [float(s) / prep.pixel_scale for s in prep.std]}


def _plain(v: Any) -> Any:
  if isinstance(v, (tuple, list)):
    return [_plain(x) for x in v]
  if isinstance(v, np.generic):
    return v.item()
  return v


def _same(a: Any, b: Any) -> bool:
  a, b = _plain(a), _plain(b)
  if isinstance(a, bool) or isinstance(b, bool):
    return isinstance(a, bool) and isinstance(b, bool) and a == b
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return bool(np.isclose(float(a), float(b), rtol=1e-4, atol=1e-6))
  return a == b


def _config_value(config: ml_collections.ConfigDict, key: str) -> Any:
  """A dotted key of the config; 'num_anchors' is scales x ratios."""
  if key == "num_anchors":
    return len(config.anchors.scales) * len(config.anchors.ratios)
  node: Any = config
  for part in key.split("."):
    if part not in node:
      return None
    node = node[part]
  return _plain(node)


def _override(key: str, value: Any) -> str:
  if key == "num_anchors":
    return (f"config.anchors.scales x config.anchors.ratios giving {value} "
            f"anchors (9: scales (8, 16, 32) as VOC, 12: (4, 8, 16, 32) as "
            f"COCO)")
  value = _plain(value)
  if isinstance(value, list):
    return f'--config.{key}="({", ".join(str(v) for v in value)})"'
  return f"--config.{key}={value}"


def config_mismatches(config: ml_collections.ConfigDict,
                      expected: Mapping[str, Any],
                      keys: Sequence[str] | None = None
                      ) -> list[tuple[str, Any, Any]]:
  """(key, config value, expected value) for each disagreeing dotted key."""
  out = []
  for key, want in expected.items():
    if keys is not None and not any(key == k or key.startswith(k + ".")
                                    for k in keys):
      continue
    have = _config_value(config, key)
    if not _same(have, want):
      out.append((key, have, _plain(want)))
  return out


def _mismatch_message(where: str, mismatches) -> str:
  lines = [f"the config does not match {where}:"]
  for key, have, want in mismatches:
    lines.append(f"  {key}: config {have!r}, weights {want!r}")
  lines.append("  set: " + " ".join(_override(k, w) for k, _, w in mismatches))
  return "\n".join(lines)


def check_preprocessing(config: ml_collections.ConfigDict, prep: Preprocessing,
                        where: str) -> None:
  """Raises ConfigMismatchError when config.model normalises images other
  than the weights `prep` expect (channel order, means, stds)."""
  bad = config_mismatches(config, preprocessing_config_values(prep))
  if bad:
    raise ConfigMismatchError(_mismatch_message(where, bad))


# ----------------------------------------------------------------------------
# faster-rcnn.pytorch detector checkpoints
# ----------------------------------------------------------------------------
#
# faster_rcnn_{session}_{epoch}_{step}.pth = {'model': state dict, 'session',
# 'epoch', 'optimizer', 'pooling_mode', 'class_agnostic'}; the state dict:
#   RCNN_base.* / RCNN_top.*    the backbone (see backbone_torch_spec)
#   RCNN_rpn.RPN_Conv           3x3 conv, 512 channels  -> rpn.conv
#   RCNN_rpn.RPN_cls_score      1x1 conv, 2A channels    -> rpn.cls_score
#       (all A background logits, then all A foreground logits: the layout
#        of our RPNHead, which pairs channel a with channel A + a)
#   RCNN_rpn.RPN_bbox_pred      1x1 conv, 4A channels    -> rpn.bbox_pred
#       (anchor-major, 4 * a + coord: the same as ours)
#   RCNN_cls_score              Linear(D, K)             -> box_predictor.cls_score
#   RCNN_bbox_pred              Linear(D, 4K) or (D, 4)  -> box_predictor.bbox_pred
#       (rows class-major, 4 * k + coord: our columns)
# Every faster-rcnn.pytorch ResNet (its own resnet.py, any depth) puts the
# stride on the bottleneck's 1x1 conv1 and uses a 3x3/2 max pool with padding
# 0 and ceil mode, and every network is fed BGR 0..255 minus cfg.PIXEL_MEANS:
# stride_in_1x1=True and CAFFE_PREPROCESSING for every detector kind.

DETECTOR_META_FORMAT = "frcnn_jax.detector_weights/1"

VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# COCO's 80 categories in category-id order (faster-rcnn.pytorch's coco.py
# order, and our COCO source's).
COCO_CLASSES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane",
    "bus", "train", "truck", "boat", "traffic light", "fire hydrant",
    "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
BACKGROUND = "__background__"


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
ALL_KINDS = tuple(sorted(KINDS)) + tuple(sorted(DETECTOR_KINDS)) + (
    AUTO_DETECTOR_KIND,)


def is_detector_kind(kind: str) -> bool:
  return kind == AUTO_DETECTOR_KIND or kind in DETECTOR_KINDS


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
    blocks = _block_counts(state_dict, ["RCNN_base.4.", "RCNN_base.5.",
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


def read_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray],
                                              dict[str, Any]]:
  """(state dict, scalar entries) of a .pth file; only the state dict is
  converted to numpy (an optimizer state, if any, is dropped unread)."""
  torch = import_torch()
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such weights file: {path}")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  extras = {}
  if isinstance(obj, Mapping):
    extras = {str(k): v for k, v in obj.items()
              if isinstance(v, (str, int, float, bool))}
    for key in ("model", "state_dict"):
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  sd = as_state_dict(to_numpy_tree(obj), source=path)
  return strip_prefix(sd), extras


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
  pm = info.pooling_mode if info.pooling_mode in ("align", "pool") else "align"
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
      spec[(top, sub, leaf)] = _torch_source(
          f"{torch_name}.{_LEAF_TO_TORCH[leaf]}", var.shape)
  model_paths = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model))}
  unmapped = sorted(".".join(map(str, p)) for p in model_paths - set(spec))
  if unmapped:
    raise ValueError(f"no faster-rcnn.pytorch name for {unmapped[:10]}")
  return spec


def _detector_ignore(key: str) -> bool:
  return key.endswith("num_batches_tracked")


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
          + " ".join(problems) + f" (the model has {_describe(backbone)}, "
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
  state_dict = strip_prefix(to_numpy_tree(dict(state_dict)))
  spec = detector_torch_spec(model)
  skipped: set[tuple[str, str]] = set()
  if reinit_mismatched_heads:
    for path, src in spec.items():
      if (tuple(path[:2]) in REINITIALIZABLE and src.key in state_dict and
          tuple(np.shape(state_dict[src.key])) != tuple(src.torch_shape)):
        skipped.add(tuple(path[:2]))
  skipped_keys = {src.key for p, src in spec.items() if tuple(p[:2]) in skipped}
  spec = {p: s for p, s in spec.items() if tuple(p[:2]) not in skipped}
  try:
    info = analyze_detector_state_dict(state_dict).describe()
  except ValueError:
    info = guess_network(state_dict)
  hint = (f"the checkpoint is {info}; the model is {_describe(model.backbone)} "
          f"with {model.settings.num_classes} classes, "
          f"{'class-agnostic' if model.settings.roi.class_agnostic else 'per-class'}"
          f" boxes, {model.settings.num_anchors} anchors, RPN conv "
          f"{model.settings.rpn.conv_channels} channels")
  arrays = convert_state_dict(
      spec, state_dict, hint=hint,
      ignore=lambda k: _detector_ignore(k) or k in skipped_keys)
  assign_arrays(model, arrays,
                require=lambda p: tuple(p[:2]) not in skipped)
  return sorted(".".join(s) for s in skipped)


def detector_implied_config(info: DetectorCheckpointInfo) -> dict[str, Any]:
  """The config values (dotted keys) a faster-rcnn.pytorch checkpoint needs.

  num_anchors stands for len(anchors.scales) * len(anchors.ratios).
  """
  out: dict[str, Any] = {"backbone.name": info.backbone}
  if info.backbone != "vgg16":
    out["backbone.stride_in_1x1"] = True
    out["backbone.norm"] = "frozen_bn"
  out.update(preprocessing_config_values(CAFFE_PREPROCESSING))
  out["rpn.conv_channels"] = info.rpn_channels
  out["num_anchors"] = info.num_anchors
  out["roi.class_agnostic"] = info.class_agnostic
  out["roi.pooling_size"] = 7
  if info.pooling_mode in ("align", "pool"):
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


def save_detector_checkpoint(pure: Mapping[str, Any], directory: str,
                             meta: Mapping[str, Any]) -> str:
  """Writes DIRECTORY/checkpoints/0 with the items `model` and `meta`, the
  layout of train_lib.Checkpointer (no `train` item: not resumable, but
  eval.py / demo.py / init_from read it). Returns the step folder."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt_dir = os.path.join(os.path.abspath(directory), "checkpoints")
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


def _suggested_config(info: DetectorCheckpointInfo, classes: str
                      ) -> tuple[str, list[str]]:
  """(config file, overrides it needs) to evaluate a converted checkpoint."""
  short = {"resnet50": "res50", "resnet101": "res101", "resnet152": "res152",
           "vgg16": "vgg16"}[info.backbone]
  dataset = "coco" if classes.strip().lower() == "coco" else "voc07"
  path = f"configs/{dataset}_{short}.py"
  try:
    # pylint: disable-next=import-outside-toplevel
    from configs import coco_common, pascal_voc
    cfg = (coco_common.coco_config(info.backbone) if dataset == "coco" else
           pascal_voc.voc_config(info.backbone, years="2007"))
  except ImportError:
    return path, []
  bad = config_mismatches(cfg, detector_implied_config(info))
  return path, [_override(k, w) for k, _, w in bad]


def convert_detector_file(src: str, kind: str, out: str, classes: str) -> str:
  """faster-rcnn.pytorch detector .pth -> OUT/checkpoints/0 (model + meta).

  Returns a summary with the eval command.
  """
  sd, extras = read_torch_checkpoint(src)
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
  arrays = convert_state_dict(spec, sd, ignore=_detector_ignore,
                              hint=f"the checkpoint is {info.describe()}")
  if info.extras.get("class_agnostic") is not None and bool(
      info.extras["class_agnostic"]) != info.class_agnostic:
    log.warning("%s: its 'class_agnostic' entry says %s but RCNN_bbox_pred "
                "has the shape of %s; the shape wins", src,
                info.extras["class_agnostic"], info.class_agnostic)
  implied = detector_implied_config(info)
  notes = []
  if info.pooling_mode not in (None, "align", "pool"):
    notes.append(f"trained with pooling_mode {info.pooling_mode!r}, which "
                 f"frcnn-jax does not implement; 'align' is the closest")
  if info.pooling_mode is None:
    notes.append("the checkpoint does not record its pooling_mode")
  meta = {"format": DETECTOR_META_FORMAT, "kind": kind,
          "source": os.path.abspath(src), "class_names": names,
          "num_classes": info.num_classes,
          "implied_config": implied, "checkpoint": dict(info.extras),
          "notes": notes}
  save_detector_checkpoint(_pure_from_arrays(model, arrays), out, meta)
  cfg_path, overrides = _suggested_config(info, classes)
  lines = [f"{src}: {info.describe()}",
           f"  -> {os.path.join(out, 'checkpoints', '0')} ({len(arrays)} arrays, "
           f"classes {names[1:4]}...)"]
  lines += [f"  note: {n}" for n in notes]
  lines.append(f"  evaluate: python eval.py --config={cfg_path} --workdir={out}"
               + "".join(f" {o}" for o in overrides))
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# What a checkpoint's model needs from the config (eval, demo, init_from)
# ----------------------------------------------------------------------------

# Keys that change what the weights compute: a checkpoint evaluated (or
# fine-tuned) with other values gives wrong results or does not load.
MODEL_KEYS = ("backbone", "model.bgr", "model.pixel_mean", "model.pixel_std",
              "rpn.conv_channels", "num_anchors", "roi")
# The part a new run started from a checkpoint must share with it (the heads
# may change: other classes, anchors or pooling).
ARCHITECTURE_KEYS = ("backbone", "model.bgr", "model.pixel_mean",
                     "model.pixel_std", "rpn.conv_channels")


def implied_config_from_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
  """The model-defining config values recorded with a checkpoint.

  A converted detector records them (meta['implied_config']); a training run
  records its whole config (meta['config'], JSON), from which the same keys
  are read. {} when neither is there.
  """
  if isinstance(meta.get("implied_config"), Mapping):
    return dict(meta["implied_config"])
  raw = meta.get("config")
  if not raw:
    return {}
  cfg = json.loads(raw) if isinstance(raw, str) else dict(raw)

  def get(dotted):
    node = cfg
    for part in dotted.split("."):
      if not isinstance(node, Mapping) or part not in node:
        return None
      node = node[part]
    return node

  out: dict[str, Any] = {}

  def put(key):
    v = get(key)
    if v is not None:
      out[key] = _plain(v)

  name = get("backbone.name")
  put("backbone.name")
  if name != "vgg16":
    put("backbone.stride_in_1x1")
    put("backbone.norm")
    if get("backbone.norm") == "group":
      put("backbone.gn_groups")
  if name == "tiny_resnet":
    put("backbone.tiny_widths")
    put("backbone.tiny_blocks")
  for key in ("model.bgr", "model.pixel_mean", "model.pixel_std",
              "rpn.conv_channels", "roi.class_agnostic", "roi.pooling_mode",
              "roi.pooling_size"):
    put(key)
  if get("roi.pooling_mode") == "align":
    put("roi.sampling_ratio")
    put("roi.aligned")
  scales, ratios = get("anchors.scales"), get("anchors.ratios")
  if scales is not None and ratios is not None:
    out["num_anchors"] = len(scales) * len(ratios)
  return out


def check_config_against_checkpoint(
    config: ml_collections.ConfigDict, meta: Mapping[str, Any], *,
    where: str = "the checkpoint", keys: Sequence[str] = MODEL_KEYS) -> None:
  """Raises ConfigMismatchError when `config` disagrees with what the
  checkpoint's model was built with (backbone, preprocessing, RPN width,
  anchors, pooling, class-agnostic boxes), naming the overrides to set.

  Meant for eval_lib.load_for_inference (eval.py, demo.py) right after the
  meta is read, and used by initialize_model. A checkpoint without recorded
  settings passes. A faster-rcnn.pytorch checkpoint trained with a pooling
  mode we lack ('crop') is logged as a warning.
  """
  implied = implied_config_from_meta(meta)
  bad = config_mismatches(config, implied, keys)
  if bad:
    raise ConfigMismatchError(_mismatch_message(where, bad))
  pm = (meta.get("checkpoint") or {}).get("pooling_mode")
  if isinstance(pm, str) and pm not in ("align", "pool"):
    log.warning("%s was trained with pooling_mode %r, which frcnn-jax does "
                "not implement; using config.roi.pooling_mode=%r: results "
                "differ from PyTorch's", where, pm, config.roi.pooling_mode)


# ----------------------------------------------------------------------------
# Starting weights of a new run: config.init_from
# ----------------------------------------------------------------------------


def guess_kind(state_dict: Mapping[str, Any]) -> tuple[str | None, list[str]]:
  """(kind, candidates) from a state dict's keys and shapes.

  A kind is returned only when the keys identify it: faster-rcnn.pytorch
  detectors (RCNN_base.*: the backbone from the block counts) and the
  ResNet-50/152 ImageNet files (only torchvision's exist). ResNet-101 and
  VGG16 ImageNet files look the same from torchvision and from caffe
  (different preprocessing and stride placement): None and both candidates.
  """
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
        _block_counts(state_dict, [f"layer{i}." for i in range(1, 5)]))
  else:
    name = None
  cands = sorted(k for k, v in KINDS.items() if v.backbone == name)
  return (cands[0] if len(cands) == 1 else None), cands


def _checkpoint_dir(path: str) -> str:
  """A train workdir or a converted detector folder -> its checkpoints
  folder (eval_lib.checkpoint_location's rule)."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir)
                if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d, "model")))


def _read_step_meta(step_dir: str) -> dict[str, Any]:
  """The JSON `meta` item of a checkpoint step folder ({} if absent)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(os.path.join(step_dir, "meta")):
    return {}
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    return dict(ckptr.restore(os.path.join(step_dir, "meta")))


def _dotted(path: Sequence[Any]) -> str:
  return ".".join(str(p) for p in path)


def load_model_from_checkpoint(model, ckpt_dir: str, *,
                               reinit_mismatched_heads: bool = True,
                               step: int | None = None) -> tuple[int, dict, list[str]]:
  """Loads the `model` item of a frcnn-jax checkpoint into `model` by name.

  Unlike train_lib.Checkpointer.restore_model, the stored shapes may differ
  in the REINITIALIZABLE heads (left as they are, when allowed).

  Returns:
    (step, meta, the modules left as they were).

  Raises:
    WeightImportError: variables missing, unexpected or of other shapes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  steps = _checkpoint_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  step = steps[-1] if step is None else step
  step_dir = os.path.join(os.path.abspath(ckpt_dir), str(step))
  with ocp.StandardCheckpointer() as ckptr:
    stored = ckptr.metadata(os.path.join(step_dir, "model"))
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    flat_stored = {_dotted(getattr(k, "key", k) for k in p): m
                   for p, m in jax.tree_util.tree_flatten_with_path(
                       stored, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  meta = _read_step_meta(step_dir)
  ours = {_dotted(p): (tuple(p), v)
          for p, v in nnx.to_flat_state(nnx.state(model))}
  missing = sorted(set(ours) - set(flat_stored))
  unexpected = sorted(set(flat_stored) - set(ours))
  skipped, mismatched = set(), []
  for name in sorted(set(ours) & set(flat_stored)):
    path, var = ours[name]
    have = tuple(flat_stored[name].shape)
    if have != tuple(var.shape):
      if reinit_mismatched_heads and tuple(path[:2]) in REINITIALIZABLE:
        skipped.add(tuple(path[:2]))
      else:
        mismatched.append((name, have, tuple(var.shape)))
  if missing or unexpected or mismatched:
    raise WeightImportError(missing, unexpected, mismatched,
                            hint=f"{step_dir} holds another network")
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored,
                        is_leaf=lambda x: hasattr(x, "shape"))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(step_dir, "model"), target)
  flat_restored = {_dotted(getattr(k, "key", k) for k in p): v
                   for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  arrays = {path: np.asarray(flat_restored[name])
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

  `config.init_from` is one of:
    * a folder written by `python -m frcnn_jax.weights convert` for an
      ImageNet backbone (it holds meta.json): the backbone's weights;
    * an ImageNet backbone .pth, with `config.init_from_kind` (see KINDS) or,
      when the keys identify it, without (ResNet-50/152);
    * a faster-rcnn.pytorch detector .pth (kind read from the keys, or
      config.init_from_kind = 'faster_rcnn_pytorch_res101', ...);
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
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "meta.json")):
      meta = read_converted_meta(path)
      if kind and kind != meta["kind"]:
        raise ValueError(f"{where} holds kind {meta['kind']!r}, but "
                         f"config.init_from_kind={kind!r}")
      check_backbone_fits_kind(model.backbone, meta["kind"])
      check_preprocessing(config, _kind(meta["kind"]).preprocessing, where)
      restore_backbone_weights(model.backbone, path)
      msg = f"backbone from {path} ({meta['kind']})"
    else:
      ckpt_dir = _checkpoint_dir(path)
      if not _checkpoint_steps(ckpt_dir):
        raise FileNotFoundError(
            f"{where}: neither a converted backbone (no meta.json) nor a "
            f"checkpoint folder (no {ckpt_dir}/<step>/model)")
      if kind:
        raise ValueError(f"config.init_from_kind={kind!r} is for .pth files; "
                         f"{path} is a checkpoint folder: leave it ''")
      steps = _checkpoint_steps(ckpt_dir)
      meta = _read_step_meta(os.path.join(ckpt_dir, str(steps[-1])))
      check_config_against_checkpoint(config, meta, where=where,
                                      keys=ARCHITECTURE_KEYS)
      step, _, skipped = load_model_from_checkpoint(model, ckpt_dir)
      _log_skipped(where, skipped)
      msg = f"whole detector from {ckpt_dir} step {step}"
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{where}: no such file or folder")
    sd, extras = read_torch_checkpoint(path)
    if not kind:
      kind, cands = guess_kind(sd)
      if kind is None:
        raise ValueError(
            f"{where}: {guess_network(sd)}; its kind cannot be told from the "
            f"keys: set config.init_from_kind to one of "
            f"{cands or list(ALL_KINDS)}")
    if is_detector_kind(kind):
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
      skipped = load_detector_state_dict(model, sd,
                                         reinit_mismatched_heads=True)
      _log_skipped(where, skipped)
      msg = f"whole detector from {path} ({info.describe()})"
    else:
      check_backbone_fits_kind(model.backbone, kind)
      check_preprocessing(config, _kind(kind).preprocessing, where)
      load_backbone_state_dict(model.backbone, sd, kind=kind)
      msg = f"backbone from {path} ({kind})"
  log.info("initialised: %s", msg)
  return msg


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
  return (f"{src} ({kind}, {n} values) -> {out}\n"
          f"  train from it: --config.init_from={out}")


def convert_file(src: str, kind: str, out: str, classes: str = "") -> str:
  """`python -m frcnn_jax.weights convert`: any kind ('' = from the keys)."""
  if not kind:
    kind, cands = guess_kind(read_torch_checkpoint(src)[0])
    if kind is None:
      raise ValueError(f"{src}: the kind cannot be told from the keys; pass "
                       f"--kind, one of {cands or list(ALL_KINDS)}")
  if is_detector_kind(kind):
    if not classes:
      raise ValueError("a detector checkpoint needs --classes=voc, "
                       "--classes=coco or --classes=name1,name2,...")
    return convert_detector_file(src, kind, out, classes)
  if classes:
    raise ValueError(f"--classes is for detector checkpoints, not {kind!r}")
  _kind(kind)
  return convert_backbone_file(src, kind, out)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m frcnn_jax.weights",
      description="Convert pretrained PyTorch weights for frcnn_jax.")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert a .pth file")
  conv.add_argument("--from", dest="src", required=True, help=".pth file")
  conv.add_argument("--kind", default="", choices=("",) + ALL_KINDS,
                    help="kind of weights ('' = read from the keys when they "
                    "identify it)")
  conv.add_argument("--out", required=True, help="output directory")
  conv.add_argument("--classes", default="",
                    help="detectors: voc | coco | name1,name2,... (background "
                    "first or implied)")
  insp = sub.add_parser("inspect", help="describe a .pth file")
  insp.add_argument("--from", dest="src", required=True, help=".pth file")
  args = parser.parse_args(argv)
  if args.command == "convert":
    print(convert_file(args.src, args.kind, args.out, args.classes))
  else:
    sd, extras = read_torch_checkpoint(args.src)
    kind, cands = guess_kind(sd)
    print(f"{args.src}: {len(sd)} arrays; looks like {guess_network(sd)}")
    print(f"  kind: {kind or 'ambiguous, one of ' + str(cands or list(ALL_KINDS))}")
    if extras:
      print(f"  entries: {extras}")
  return 0


__all__ = [
    "ALL_KINDS", "ARCHITECTURE_KEYS", "AUTO_DETECTOR_KIND", "CAFFE_PREPROCESSING",
    "COCO_CLASSES", "ConfigMismatchError", "DETECTOR_KINDS",
    "DetectorCheckpointInfo", "DetectorKind", "KINDS", "MODEL_KEYS",
    "Preprocessing", "REINITIALIZABLE", "TORCHVISION_PREPROCESSING",
    "TorchSource", "VOC_CLASSES", "WeightImportError", "WeightKind",
    "analyze_detector_state_dict", "as_state_dict", "assign_arrays",
    "backbone_config_for_kind", "backbone_torch_spec",
    "check_backbone_fits_detector", "check_backbone_fits_kind",
    "check_config_against_checkpoint", "check_preprocessing",
    "config_mismatches", "convert_detector_file", "convert_file",
    "convert_state_dict", "default_ignore", "detector_backbone_config",
    "detector_for_checkpoint", "detector_implied_config",
    "detector_torch_spec", "guess_kind", "guess_network",
    "implied_config_from_meta", "initialize_model", "load_backbone_state_dict",
    "load_detector_state_dict", "load_model_from_checkpoint",
    "load_pretrained_backbone", "load_torch_file", "main",
    "preprocessing_config_values", "read_state_dict", "read_torch_checkpoint",
    "resolve_class_names", "restore_backbone_weights",
    "save_backbone_weights", "save_detector_checkpoint",
]

if __name__ == "__main__":
  sys.exit(main())
