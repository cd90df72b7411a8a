"""Configs: found by name or path, loaded, checked, and read back from a run.

* **Finding** (:func:`find_config_file`): ``--config=shapes`` names a
  built-in config (``configs/shapes.py`` of the installed ``configs``
  package, next to ``frcnn_jax``), ``--config=path/to/mine.py`` a file;
  ``configs/<name>.py`` works from any directory (it falls back to the
  built-in of that name when the path does not exist there).
  :func:`load_config` is the Python form, with overrides.
* **Checking**: ``validate(config)`` is called by train.py, eval.py and
  demo.py right after the config is loaded (and its command-line overrides
  applied), so a typo or an impossible combination fails in a second, not an
  hour into training. Unknown keys are already rejected by ``ml_collections``
  when overriding (configs are locked), with the key's name.
* **Reading back**: :func:`config_from_dict` turns the JSON a run recorded
  (``config.json``, checkpoint ``meta``) into a locked ``ConfigDict``;
  :func:`converted_detector_config` builds the config of a converted
  faster-rcnn.pytorch folder, which records only what its weights imply.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from frcnn_jax import checkpoints
from frcnn_jax import metrics as metrics_lib
from frcnn_jax import paths
from frcnn_jax import siblings
from frcnn_jax.data import datasets
from frcnn_jax.data import transforms
from frcnn_jax.data.class_names import COCO_CLASSES
from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import detector_fpn
from frcnn_jax.weights import compat
from frcnn_jax.weights import kinds as weight_kinds

DEFAULT_CONFIG = "shapes"
# Helper modules of configs/ that hold no get_config().
_NOT_CONFIGS = ("__init__", "common", "coco_common", "pascal_voc")


# -- finding and loading -------------------------------------------------------

def builtin_configs_dir() -> str:
  """The folder of the built-in configs (the ``configs`` package).

  Raises:
    siblings.SiblingPackageError: ``import configs`` would give another
      package (the config files import ``configs.common``).
  """
  siblings.check("configs")
  return siblings.expected_dir("configs")


def builtin_config_names() -> list[str]:
  """Names of the built-in configs (``shapes``, ``tiny``, ``voc07_res101``...)."""
  folder = siblings.expected_dir("configs")
  if not os.path.isdir(folder):
    return []
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and f[:-3] not in _NOT_CONFIGS)


def find_config_file(name_or_path: str) -> str:
  """The absolute path of a config given by file path or built-in name.

  An existing file wins; else ``shapes``, ``shapes.py`` and
  ``configs/shapes.py`` (the README's spelling, from any directory) name the
  built-in config.

  Raises:
    FileNotFoundError: neither; the message lists the built-in names.
  """
  if not name_or_path:
    raise FileNotFoundError("empty config name")
  if os.path.isfile(name_or_path):
    return os.path.abspath(name_or_path)
  folder, base = os.path.split(os.path.normpath(name_or_path))
  name = base[:-3] if base.endswith(".py") else base
  if folder in ("", "configs") and name in builtin_config_names():
    return os.path.join(builtin_configs_dir(), f"{name}.py")
  raise FileNotFoundError(
      f"config {name_or_path!r}: no such file (cwd {os.getcwd()}) and no "
      f"built-in config of that name; built-in: "
      f"{', '.join(builtin_config_names())}")


def _load_module(path: str):
  name = "frcnn_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  if os.path.dirname(path) == siblings.expected_dir("configs"):
    siblings.check("configs")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def set_override(config: ml_collections.ConfigDict, dotted: str,
                 value: Any) -> None:
  """``config.<dotted> = value``; an unknown key is a ``KeyError`` naming it."""
  node = config
  parts = dotted.split(".")
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise KeyError(f"config has no key {'.'.join(parts[:i + 1])!r}")
    node = node[part]
  if parts[-1] not in node:
    raise KeyError(f"config has no key {dotted!r}")
  node[parts[-1]] = value


def load_config(name_or_path: str = DEFAULT_CONFIG,
                overrides: Mapping[str, Any] | None = None, *,
                check: bool = True) -> ml_collections.ConfigDict:
  """A config by built-in name or path, with overrides: the Python
  ``--config``.

  Args:
    name_or_path: ``'shapes'``, ``'voc07_res101'``, ``'path/mine.py'``;
      ``'file.py:arg'`` passes ``arg`` to ``get_config``.
    overrides: ``{'train.num_steps': 50, 'data.root': '/data/x'}``.
    check: :func:`validate` it (without requiring the data to exist).

  Returns:
    a locked ``ConfigDict`` with absolute paths (:mod:`frcnn_jax.paths`).
  """
  name, sep, arg = name_or_path.partition(":")
  module = _load_module(find_config_file(name))
  config = module.get_config(*([arg] if sep else []))
  config.lock()
  for key, value in (overrides or {}).items():
    set_override(config, key, value)
  config = paths.resolve_paths(config)
  if check:
    validate(config, check_paths=False)
  return config


# -- reading back what a run recorded ------------------------------------------

def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_dict(d: Mapping[str, Any] | str) -> ml_collections.ConfigDict:
  """A locked ``ConfigDict`` from a recorded config (dict or JSON text).

  JSON has no tuples: every list becomes a tuple, as the configs write them.
  """
  if isinstance(d, str):
    d = json.loads(d)
  config = ml_collections.ConfigDict(_tuples(dict(d)))
  config.lock()
  return config


def recorded_config(path: str) -> ml_collections.ConfigDict | None:
  """The config a workdir (or converted folder) was made with, or None.

  A training run's: the ``config`` of its newest checkpoint's meta, else its
  ``config.json``. A converted faster-rcnn.pytorch folder's:
  :func:`converted_detector_config`.
  """
  meta = checkpoints.newest_meta(path)
  if meta.get("config"):
    return config_from_dict(meta["config"])
  config_json = os.path.join(path, "config.json")
  if os.path.isfile(config_json):
    with open(config_json) as f:
      return config_from_dict(f.read())
  if meta.get("kind") in weight_kinds.DETECTOR_KINDS:
    return converted_detector_config(meta)
  return None


_SHORT = {"resnet50": "res50", "resnet101": "res101", "resnet152": "res152",
          "vgg16": "vgg16"}


def converted_detector_config(meta: Mapping[str, Any]
                              ) -> ml_collections.ConfigDict:
  """The config of a folder written by ``python -m frcnn_jax.weights convert``.

  ``coco_<net>`` for COCO's 80 classes, else ``voc07_<net>``, with the
  values the weights imply (``meta['implied_config']``: preprocessing,
  anchors, pooling...) set. Paths stay as the config has them.

  Raises:
    ValueError: ``meta`` is not that of a converted detector.
  """
  kind = weight_kinds.DETECTOR_KINDS.get(meta.get("kind", ""))
  if kind is None:
    raise ValueError(f"not a converted faster-rcnn.pytorch detector (kind "
                     f"{meta.get('kind')!r}): pass a config")
  names = list(meta.get("class_names") or [])
  coco = tuple(names[1:]) == COCO_CLASSES
  name = f"{'coco' if coco else 'voc07'}_{_SHORT[kind.backbone]}"
  config = load_config(name, check=False)
  for key, _, want in compat.config_mismatches(
      config, meta.get("implied_config", {})):
    if key == "num_anchors":
      scales = (4, 8, 16, 32) if want == 12 else (8, 16, 32)
      if len(scales) * len(config.anchors.ratios) != want:
        raise ValueError(f"cannot choose anchors for {want} per position")
      config.anchors.scales = scales
    else:
      set_override(config, key, _tuples(want))
  return config


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _walk(node: Any, prefix: str):
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for k in node.keys():
      yield from _walk(node[k], f"{prefix}.{k}" if prefix else k)
  elif isinstance(node, (list, tuple)):
    for i, v in enumerate(node):
      yield from _walk(v, f"{prefix}[{i}]")
  else:
    yield prefix, node


class _Checks:
  """Collects ``config.<key> = <value>: <why>`` lines."""

  def __init__(self):
    self.errors: list[str] = []

  def check(self, ok: bool, key: str, msg: str, value) -> None:
    if not ok:
      self.errors.append(f"config.{key} = {value!r}: {msg}")

  def frac(self, key: str, v, lo_open: bool = True) -> None:
    self.check((0.0 < v <= 1.0) if lo_open else (0.0 <= v <= 1.0), key,
               "must be in (0, 1]" if lo_open else "must be in [0, 1]", v)

  def pos(self, key: str, v) -> None:
    self.check(v > 0, key, "must be > 0", v)


def _is_fpn(config: ml_collections.ConfigDict) -> bool:
  return config.model.get("arch", "c4") == "fpn"


def _check_fpn(c: _Checks, config: ml_collections.ConfigDict) -> None:
  """torchvision's FPN models (model.arch='fpn'): a ResNet body, the fpn
  sub-dict, 32-divisible canvases, fixed RoI sampling."""
  b = config.backbone
  c.check(b.name != "vgg16", "backbone.name",
          "the FPN models need a ResNet body", b.name)
  f = config.get("fpn")
  if f is None:
    c.errors.append("config.fpn: missing; model.arch='fpn' needs the fpn "
                    "sub-dict (configs/common.py fpn_config)")
    return
  c.check(f.variant in detector_fpn.VARIANTS, "fpn.variant",
          f"one of {detector_fpn.VARIANTS}", f.variant)
  c.pos("fpn.out_channels", f.out_channels)
  c.pos("fpn.representation_size", f.representation_size)
  c.check(len(f.anchor_sizes) == 5 and all(v > 0 for v in f.anchor_sizes),
          "fpn.anchor_sizes", "needs 5 positive sizes (P2..P6)",
          f.anchor_sizes)
  c.check(config.rpn.conv_channels == f.out_channels, "rpn.conv_channels",
          f"the FPN RPN head's conv keeps the FPN width (fpn.out_channels="
          f"{f.out_channels})", config.rpn.conv_channels)
  c.check(config.roi.sampling_ratio >= 1, "roi.sampling_ratio",
          "MultiScaleRoIAlign needs a fixed sampling ratio >= 1",
          config.roi.sampling_ratio)
  c.check(f.box_min_size >= 0, "fpn.box_min_size", "must be >= 0",
          f.box_min_size)
  for i, (h, w) in enumerate(tuple(int(x) for x in bk)
                             for bk in config.data.buckets):
    c.check(h % 32 == 0 and w % 32 == 0, f"data.buckets[{i}]",
            "FPN canvases must be multiples of 32 (torchvision's padding)",
            (h, w))


def _check_network(c: _Checks, config: ml_collections.ConfigDict) -> None:
  b = config.backbone
  c.check(config.model.get("arch", "c4") in ("c4", "fpn"), "model.arch",
          "must be 'c4' or 'fpn'", config.model.get("arch"))
  if _is_fpn(config):
    _check_fpn(c, config)
  c.check(b.name in backbones.BACKBONE_NAMES, "backbone.name",
          f"one of {backbones.BACKBONE_NAMES}", b.name)
  c.check(-1 <= b.fixed_blocks <= 3, "backbone.fixed_blocks",
          "must be in -1..3", b.fixed_blocks)
  c.check(config.model.dtype in ("float32", "bfloat16"), "model.dtype",
          "must be 'float32' or 'bfloat16'", config.model.dtype)
  c.check(config.model.nms_impl in ("auto", "jnp", "pallas"),
          "model.nms_impl", "must be 'auto', 'jnp' or 'pallas'",
          config.model.nms_impl)
  c.check(config.model.box_decode in ("exact", "seed"), "model.box_decode",
          "must be 'exact' or 'seed'", config.model.box_decode)
  c.check(len(config.model.pixel_mean) == 3, "model.pixel_mean",
          "needs 3 values", config.model.pixel_mean)
  c.check(len(config.model.pixel_std) == 3 and
          all(s > 0 for s in config.model.pixel_std), "model.pixel_std",
          "needs 3 positive values", config.model.pixel_std)


def _check_anchors(c: _Checks, config: ml_collections.ConfigDict) -> None:
  a = config.anchors
  c.check(len(a.scales) > 0 and all(s > 0 for s in a.scales),
          "anchors.scales", "needs positive values", a.scales)
  c.check(len(a.ratios) > 0 and all(r > 0 for r in a.ratios),
          "anchors.ratios", "needs positive values", a.ratios)
  if not _is_fpn(config):   # FPN: sizes per level in fpn.anchor_sizes
    c.check(a.stride == 16, "anchors.stride",
            "the backbones' trunks have stride 16", a.stride)


def _check_rpn(c: _Checks, config: ml_collections.ConfigDict) -> None:
  r = config.rpn
  c.frac("rpn.fg_fraction", r.fg_fraction)
  c.pos("rpn.batch_size", r.batch_size)
  c.pos("rpn.post_nms_top_n", r.post_nms_top_n)
  c.frac("rpn.nms_thresh", r.nms_thresh, lo_open=False)
  c.check(r.pre_nms_top_n <= 0 or r.pre_nms_top_n >= r.post_nms_top_n,
          "rpn.pre_nms_top_n",
          f"must be >= rpn.post_nms_top_n ({r.post_nms_top_n}) or <= 0 (all)",
          r.pre_nms_top_n)
  c.check(0.0 <= r.negative_overlap <= r.positive_overlap <= 1.0,
          "rpn.negative_overlap",
          f"need 0 <= negative_overlap <= positive_overlap "
          f"({r.positive_overlap}) <= 1", r.negative_overlap)
  c.check(r.positive_weight < 0 or 0 < r.positive_weight < 1,
          "rpn.positive_weight", "must be < 0 or in (0, 1)",
          r.positive_weight)
  c.pos("rpn.sigma", r.sigma)


def _check_roi(c: _Checks, config: ml_collections.ConfigDict) -> None:
  q = config.roi
  c.check(q.pooling_mode in ("align", "pool", "crop"), "roi.pooling_mode",
          "must be 'align', 'pool' or 'crop'", q.pooling_mode)
  c.pos("roi.pooling_size", q.pooling_size)
  c.check(q.sampling_ratio >= 0, "roi.sampling_ratio",
          "must be >= 0 (0 = adaptive)", q.sampling_ratio)
  c.pos("roi.batch_size", q.batch_size)
  c.frac("roi.fg_fraction", q.fg_fraction)
  c.frac("roi.fg_thresh", q.fg_thresh)
  c.check(0.0 <= q.bg_thresh_lo <= q.bg_thresh_hi <= 1.0,
          "roi.bg_thresh_lo",
          f"need 0 <= bg_thresh_lo <= bg_thresh_hi ({q.bg_thresh_hi}) <= 1",
          q.bg_thresh_lo)
  c.check(len(q.bbox_normalize_stds) == 4 and
          all(s > 0 for s in q.bbox_normalize_stds), "roi.bbox_normalize_stds",
          "needs 4 positive values", q.bbox_normalize_stds)
  if (config.backbone.name == "vgg16" or config.backbone.name.startswith(
      "resnet")) and not _is_fpn(config):
    c.check(q.pooling_size == 7, "roi.pooling_size",
            "the ImageNet heads (layer4 / fc6) expect 7x7", q.pooling_size)


def _check_test(c: _Checks, config: ml_collections.ConfigDict) -> None:
  t = config.test
  c.pos("test.rpn_post_nms_top_n", t.rpn_post_nms_top_n)
  c.check(t.rpn_pre_nms_top_n <= 0 or
          t.rpn_pre_nms_top_n >= t.rpn_post_nms_top_n, "test.rpn_pre_nms_top_n",
          f"must be >= test.rpn_post_nms_top_n ({t.rpn_post_nms_top_n}) or <= 0",
          t.rpn_pre_nms_top_n)
  c.frac("test.nms_thresh", t.nms_thresh, lo_open=False)
  c.pos("test.max_detections", t.max_detections)
  c.pos("test.batch_size", t.batch_size)
  c.check(t.get("coco_evaluator", "pycocotools") in
          metrics_lib.COCO_EVALUATORS, "test.coco_evaluator",
          f"must be one of {metrics_lib.COCO_EVALUATORS}",
          t.get("coco_evaluator"))
  c.check(t.metric in ("coco", "voc", "both"), "test.metric",
          "must be 'coco', 'voc' or 'both'", t.metric)


def _check_data_paths(c: _Checks, d: ml_collections.ConfigDict) -> None:
  custom = False
  for which in ("train", "val"):
    ann = d.get(f"{which}_json", "")
    if not ann:
      continue
    custom = custom or which == "train"
    c.check(d.name == "coco", f"data.{which}_json",
            "a COCO json needs data.name='coco'", ann)
    c.check(os.path.isfile(ann), f"data.{which}_json", "file not found", ann)
    images = d.get(f"{which}_images", "") or os.path.dirname(ann)
    c.check(os.path.isdir(images), f"data.{which}_images",
            "folder not found", images)
  if d.name in ("coco", "voc") and not custom:
    c.check(os.path.isdir(d.root), "data.root",
            f"folder not found (cwd {os.getcwd()}); see README 'Datasets'",
            d.root)
  if d.name == "tfds":
    c.check(bool(d.tfds_name), "data.tfds_name", "must name a dataset",
            d.tfds_name)
    c.check(not d.tfds_data_dir or os.path.isdir(d.tfds_data_dir),
            "data.tfds_data_dir", "folder not found", d.tfds_data_dir)


def _check_data(c: _Checks, config: ml_collections.ConfigDict,
                check_paths: bool) -> None:
  d = config.data
  names = datasets.known_names()
  c.check(d.name in names, "data.name",
          f"must be one of {names} (more with frcnn_jax.register_dataset)",
          d.name)
  c.pos("data.scale", d.scale)
  c.check(d.max_size == 0 or d.max_size >= d.scale, "data.max_size",
          f"must be 0 (no cap, the seed's rule) or >= data.scale ({d.scale})",
          d.max_size)
  c.check(d.max_size > 0 or d.crop_extreme_ratios,
          "data.crop_extreme_ratios", "without a long-side cap "
          "(data.max_size=0) training needs the crop to w/h in [0.5, 2] to "
          "bound image sizes", d.crop_extreme_ratios)
  c.pos("data.max_num_box", d.max_num_box)
  c.check(d.get("resize", "pil") in transforms.RESIZE_METHODS, "data.resize",
          f"must be one of {transforms.RESIZE_METHODS}", d.get("resize"))
  c.check(d.get("resize", "pil") != "torchvision" or d.max_size > 0,
          "data.max_size", "data.resize='torchvision' needs a long-side cap "
          "(torchvision's max_size)", d.max_size)
  buckets = [tuple(int(x) for x in bk) for bk in d.buckets]
  c.check(len(buckets) > 0, "data.buckets", "needs at least one canvas",
          d.buckets)
  for i, (h, w) in enumerate(buckets):
    c.check(h % 16 == 0 and w % 16 == 0 and h > 0 and w > 0,
            f"data.buckets[{i}]", "sides must be positive multiples of 16",
            (h, w))
  # Training images reach max_size on their long side (or, without a cap,
  # 2 x scale after the crop to w/h in [0.5, 2]): both orientations must fit
  # some canvas. Evaluation images no canvas holds get their own.
  long_side = d.max_size if d.max_size > 0 else 2 * d.scale
  for need in ((d.scale, long_side), (long_side, d.scale)):
    c.check(any(h >= need[0] and w >= need[1] for h, w in buckets),
            "data.buckets",
            f"no canvas holds a {need[0]}x{need[1]} training image "
            f"(data.scale={d.scale}, data.max_size={d.max_size})", d.buckets)
  if check_paths:
    _check_data_paths(c, d)


def _check_training(c: _Checks, config: ml_collections.ConfigDict) -> None:
  tr = config.train
  c.pos("train.batch_size", tr.batch_size)
  c.check(tr.num_steps > 0 or tr.num_epochs > 0, "train.num_steps",
          "train.num_steps or train.num_epochs must be > 0", tr.num_steps)
  c.pos("train.log_every", tr.log_every)
  c.check(tr.nonfinite_rollbacks >= 0, "train.nonfinite_rollbacks",
          "must be >= 0 (0 = stop on a non-finite loss)",
          tr.nonfinite_rollbacks)
  o = config.optimizer
  c.check(o.name in ("sgd", "adam"), "optimizer.name",
          "must be 'sgd' or 'adam'", o.name)
  c.pos("optimizer.lr", o.lr)
  c.check(0.0 <= o.momentum < 1.0, "optimizer.momentum", "must be in [0, 1)",
          o.momentum)
  c.check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0",
          o.weight_decay)
  c.check(0 < o.gamma <= 1, "optimizer.gamma", "must be in (0, 1]", o.gamma)
  c.check(o.grad_clip_norm >= 0, "optimizer.grad_clip_norm",
          "must be >= 0 (0 = off)", o.grad_clip_norm)
  c.pos("checkpoint.every_steps", config.checkpoint.every_steps)
  c.pos("checkpoint.max_to_keep", config.checkpoint.max_to_keep)
  if config.init_from:
    c.check(os.path.exists(config.init_from), "init_from",
            "file or folder not found", config.init_from)
  kind = config.get("init_from_kind", "")
  if kind:
    c.check(kind in weight_kinds.ALL_KINDS, "init_from_kind",
            f"must be '' or one of {sorted(weight_kinds.ALL_KINDS)}", kind)


def validate(config: ml_collections.ConfigDict, *,
             check_paths: bool = True) -> None:
  """Raises :class:`ConfigError` listing every problem found.

  Args:
    config: a frcnn-jax config (see configs/common.py).
    check_paths: also require the dataset folders to exist (off for tools
      that do not read data, e.g. demo.py).
  """
  c = _Checks()
  for key, v in _walk(config, ""):
    if isinstance(v, float) and not math.isfinite(v):
      c.errors.append(f"config.{key} = {v!r}: must be a finite number")
  _check_network(c, config)
  _check_anchors(c, config)
  _check_rpn(c, config)
  _check_roi(c, config)
  _check_test(c, config)
  _check_data(c, config, check_paths)
  _check_training(c, config)
  if c.errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(c.errors))


# -- --print_config -------------------------------------------------------------

def _docstring_fields(doc: str) -> dict[str, str]:
  """``name: text`` entries of a docstring's ``Fields:`` / ``Keys:`` block
  (``a, b: text`` documents both)."""
  out, current, in_block = {}, None, False
  for line in (doc or "").splitlines():
    stripped = line.strip()
    if stripped in ("Fields:", "Keys:"):
      in_block = True
      continue
    if not in_block:
      continue
    if not stripped:
      if out:
        in_block = False
      continue
    indent = len(line) - len(line.lstrip())
    head, sep, text = stripped.partition(": ")
    names = [n.strip() for n in head.split(",")]
    if sep and indent <= 4 and all(n.isidentifier() for n in names):
      current = names
      for n in names:
        out[n] = text
    elif current:
      for n in current:
        out[n] += " " + stripped
  return out


def _source_comments(path: str) -> dict[str, str]:
  """``c.<key> = value  # comment`` (and comment lines just above) of a
  config file -> {key: comment}."""
  out, pending = {}, []
  try:
    lines = open(path, encoding="utf-8").read().splitlines()
  except OSError:
    return out
  for line in lines:
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("# "))
      continue
    m = re.match(r"c\.([\w.]+)\s*=\s*[^#]*?(?:#\s*(.*))?$", stripped)
    if m:
      text = " ".join(pending + ([m.group(2)] if m.group(2) else []))
      if text:
        out[m.group(1)] = text
    pending = []
  return out


def key_comments() -> dict[str, str]:
  """What each config key means, from where its default is defined."""
  out = {f"backbone.{k}": v for k, v in _docstring_fields(
      backbones.default_backbone_config.__doc__).items()}
  out.update({f"data.{k}": v for k, v in _docstring_fields(
      datasets.default_data_config.__doc__).items()})
  out.update(_source_comments(os.path.join(builtin_configs_dir(),
                                           "common.py")))
  return out


def describe(config: ml_collections.ConfigDict) -> str:
  """Every key of ``config`` with its value and meaning (--print_config)."""
  comments = key_comments()

  def leaves(node, prefix):
    for k in node.keys():
      v = node[k]
      key = f"{prefix}.{k}" if prefix else k
      if isinstance(v, (ml_collections.ConfigDict, dict)):
        yield from leaves(v, key)
      else:
        yield key, repr(tuple(v) if isinstance(v, list) else v)

  rows = list(leaves(config, ""))
  width = min(max(len(k) + len(v) for k, v in rows) + 4, 60)
  lines = ["# every key can be set with --config.<key>=<value> "
           "(tuples: --config.<key>=\"(1, 2)\")"]
  for key, value in rows:
    text = f"{key} = {value}"
    note = comments.get(key)
    lines.append(f"{text:<{width}} # {note}" if note else text)
  return "\n".join(lines)
