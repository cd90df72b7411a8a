"""Config checks: every impossible value is reported by its key, at load time.

``validate(config)`` is called by train.py, eval.py and demo.py right after
the config is loaded (and its command-line overrides applied), so a typo or
an impossible combination fails in a second, not an hour into training.
Unknown keys are already rejected by ``ml_collections`` when overriding
(configs are locked), with the key's name.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from frcnn_jax.data import transforms
from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import detector_fpn
from frcnn_jax.weights import kinds as weight_kinds


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
  c.check(q.pooling_mode in ("align", "pool"), "roi.pooling_mode",
          "must be 'align' or 'pool'", q.pooling_mode)
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
  c.check(t.metric in ("coco", "voc", "both"), "test.metric",
          "must be 'coco', 'voc' or 'both'", t.metric)


def _check_data(c: _Checks, config: ml_collections.ConfigDict,
                check_paths: bool) -> None:
  d = config.data
  c.check(d.name in ("shapes", "coco", "voc", "tfds"), "data.name",
          "must be 'shapes', 'coco', 'voc' or 'tfds'", d.name)
  c.pos("data.scale", d.scale)
  c.check(d.max_size >= d.scale, "data.max_size",
          f"must be >= data.scale ({d.scale})", d.max_size)
  c.pos("data.max_num_box", d.max_num_box)
  c.check(d.get("resize", "seed") in transforms.RESIZE_MODES, "data.resize",
          f"must be one of {transforms.RESIZE_MODES}", d.get("resize"))
  buckets = [tuple(int(x) for x in bk) for bk in d.buckets]
  c.check(len(buckets) > 0, "data.buckets", "needs at least one canvas",
          d.buckets)
  for i, (h, w) in enumerate(buckets):
    c.check(h % 16 == 0 and w % 16 == 0 and h > 0 and w > 0,
            f"data.buckets[{i}]", "sides must be positive multiples of 16",
            (h, w))
  # Any aspect ratio can reach max_size on its long side (evaluation never
  # crops): both orientations of (scale, max_size) must fit some canvas.
  for need in ((d.scale, d.max_size), (d.max_size, d.scale)):
    c.check(any(h >= need[0] and w >= need[1] for h, w in buckets),
            "data.buckets",
            f"no canvas holds a {need[0]}x{need[1]} image (data.scale="
            f"{d.scale}, data.max_size={d.max_size})", d.buckets)
  if check_paths and d.name in ("coco", "voc"):
    c.check(os.path.isdir(d.root), "data.root",
            f"folder not found (cwd {os.getcwd()}); see README 'Datasets'",
            d.root)
  if check_paths and d.name == "tfds":
    c.check(bool(d.tfds_name), "data.tfds_name", "must name a dataset",
            d.tfds_name)
    c.check(not d.tfds_data_dir or os.path.isdir(d.tfds_data_dir),
            "data.tfds_data_dir", "folder not found", d.tfds_data_dir)


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
