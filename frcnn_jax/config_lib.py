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

_BACKBONES = ("resnet50", "resnet101", "resnet152", "vgg16", "tiny_resnet")


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


def _check(errors: list[str], ok: bool, key: str, msg: str, value) -> None:
  if not ok:
    errors.append(f"config.{key} = {value!r}: {msg}")


def validate(config: ml_collections.ConfigDict, *,
             check_paths: bool = True) -> None:
  """Raises :class:`ConfigError` listing every problem found.

  Args:
    config: a frcnn-jax config (see configs/common.py).
    check_paths: also require the dataset folders to exist (off for tools
      that do not read data, e.g. demo.py).
  """
  e: list[str] = []
  for key, v in _walk(config, ""):
    if isinstance(v, float) and not math.isfinite(v):
      e.append(f"config.{key} = {v!r}: must be a finite number")

  def frac(key, v, lo_open=True):
    _check(e, (0.0 < v <= 1.0) if lo_open else (0.0 <= v <= 1.0), key,
           "must be in (0, 1]" if lo_open else "must be in [0, 1]", v)

  def pos(key, v):
    _check(e, v > 0, key, "must be > 0", v)

  b = config.backbone
  _check(e, b.name in _BACKBONES, "backbone.name", f"one of {_BACKBONES}",
         b.name)
  _check(e, -1 <= b.fixed_blocks <= 3, "backbone.fixed_blocks",
         "must be in -1..3", b.fixed_blocks)
  _check(e, config.model.dtype in ("float32", "bfloat16"), "model.dtype",
         "must be 'float32' or 'bfloat16'", config.model.dtype)
  _check(e, config.model.nms_impl in ("auto", "jnp", "pallas"),
         "model.nms_impl", "must be 'auto', 'jnp' or 'pallas'",
         config.model.nms_impl)
  _check(e, len(config.model.pixel_mean) == 3, "model.pixel_mean",
         "needs 3 values", config.model.pixel_mean)
  _check(e, len(config.model.pixel_std) == 3 and
         all(s > 0 for s in config.model.pixel_std), "model.pixel_std",
         "needs 3 positive values", config.model.pixel_std)

  a = config.anchors
  _check(e, len(a.scales) > 0 and all(s > 0 for s in a.scales),
         "anchors.scales", "needs positive values", a.scales)
  _check(e, len(a.ratios) > 0 and all(r > 0 for r in a.ratios),
         "anchors.ratios", "needs positive values", a.ratios)
  _check(e, a.stride == 16, "anchors.stride",
         "the backbones' trunks have stride 16", a.stride)

  r = config.rpn
  frac("rpn.fg_fraction", r.fg_fraction)
  pos("rpn.batch_size", r.batch_size)
  pos("rpn.post_nms_top_n", r.post_nms_top_n)
  frac("rpn.nms_thresh", r.nms_thresh, lo_open=False)
  _check(e, r.pre_nms_top_n <= 0 or r.pre_nms_top_n >= r.post_nms_top_n,
         "rpn.pre_nms_top_n",
         f"must be >= rpn.post_nms_top_n ({r.post_nms_top_n}) or <= 0 (all)",
         r.pre_nms_top_n)
  _check(e, 0.0 <= r.negative_overlap <= r.positive_overlap <= 1.0,
         "rpn.negative_overlap",
         f"need 0 <= negative_overlap <= positive_overlap "
         f"({r.positive_overlap}) <= 1", r.negative_overlap)
  _check(e, r.positive_weight < 0 or 0 < r.positive_weight < 1,
         "rpn.positive_weight", "must be < 0 or in (0, 1)",
         r.positive_weight)
  pos("rpn.sigma", r.sigma)

  q = config.roi
  _check(e, q.pooling_mode in ("align", "pool"), "roi.pooling_mode",
         "must be 'align' or 'pool'", q.pooling_mode)
  pos("roi.pooling_size", q.pooling_size)
  _check(e, q.sampling_ratio >= 0, "roi.sampling_ratio",
         "must be >= 0 (0 = adaptive)", q.sampling_ratio)
  pos("roi.batch_size", q.batch_size)
  frac("roi.fg_fraction", q.fg_fraction)
  frac("roi.fg_thresh", q.fg_thresh)
  _check(e, 0.0 <= q.bg_thresh_lo <= q.bg_thresh_hi <= 1.0,
         "roi.bg_thresh_lo",
         f"need 0 <= bg_thresh_lo <= bg_thresh_hi ({q.bg_thresh_hi}) <= 1",
         q.bg_thresh_lo)
  _check(e, len(q.bbox_normalize_stds) == 4 and
         all(s > 0 for s in q.bbox_normalize_stds), "roi.bbox_normalize_stds",
         "needs 4 positive values", q.bbox_normalize_stds)
  if config.backbone.name == "vgg16" or config.backbone.name.startswith(
      "resnet"):
    _check(e, q.pooling_size == 7, "roi.pooling_size",
           "the ImageNet heads (layer4 / fc6) expect 7x7", q.pooling_size)

  t = config.test
  pos("test.rpn_post_nms_top_n", t.rpn_post_nms_top_n)
  _check(e, t.rpn_pre_nms_top_n <= 0 or
         t.rpn_pre_nms_top_n >= t.rpn_post_nms_top_n, "test.rpn_pre_nms_top_n",
         f"must be >= test.rpn_post_nms_top_n ({t.rpn_post_nms_top_n}) or <= 0",
         t.rpn_pre_nms_top_n)
  frac("test.nms_thresh", t.nms_thresh, lo_open=False)
  pos("test.max_detections", t.max_detections)
  pos("test.batch_size", t.batch_size)
  _check(e, t.metric in ("coco", "voc", "both"), "test.metric",
         "must be 'coco', 'voc' or 'both'", t.metric)

  d = config.data
  _check(e, d.name in ("shapes", "coco", "voc", "tfds"), "data.name",
         "must be 'shapes', 'coco', 'voc' or 'tfds'", d.name)
  pos("data.scale", d.scale)
  _check(e, d.max_size >= d.scale, "data.max_size",
         f"must be >= data.scale ({d.scale})", d.max_size)
  pos("data.max_num_box", d.max_num_box)
  buckets = [tuple(int(x) for x in bk) for bk in d.buckets]
  _check(e, len(buckets) > 0, "data.buckets", "needs at least one canvas",
         d.buckets)
  for i, (h, w) in enumerate(buckets):
    _check(e, h % 16 == 0 and w % 16 == 0 and h > 0 and w > 0,
           f"data.buckets[{i}]", "sides must be positive multiples of 16",
           (h, w))
  # Any aspect ratio can reach max_size on its long side (evaluation never
  # crops): both orientations of (scale, max_size) must fit some canvas.
  for need in ((d.scale, d.max_size), (d.max_size, d.scale)):
    _check(e, any(h >= need[0] and w >= need[1] for h, w in buckets),
           "data.buckets",
           f"no canvas holds a {need[0]}x{need[1]} image (data.scale="
           f"{d.scale}, data.max_size={d.max_size})", d.buckets)
  if check_paths and d.name in ("coco", "voc"):
    _check(e, os.path.isdir(d.root), "data.root",
           f"folder not found (cwd {os.getcwd()}); see README 'Datasets'",
           d.root)
  if check_paths and d.name == "tfds":
    _check(e, bool(d.tfds_name), "data.tfds_name", "must name a dataset",
           d.tfds_name)
    _check(e, not d.tfds_data_dir or os.path.isdir(d.tfds_data_dir),
           "data.tfds_data_dir", "folder not found", d.tfds_data_dir)

  tr = config.train
  pos("train.batch_size", tr.batch_size)
  _check(e, tr.num_steps > 0 or tr.num_epochs > 0, "train.num_steps",
         "train.num_steps or train.num_epochs must be > 0", tr.num_steps)
  pos("train.log_every", tr.log_every)
  _check(e, tr.nonfinite_rollbacks >= 0, "train.nonfinite_rollbacks",
         "must be >= 0 (0 = stop on a non-finite loss)",
         tr.nonfinite_rollbacks)
  o = config.optimizer
  _check(e, o.name in ("sgd", "adam"), "optimizer.name",
         "must be 'sgd' or 'adam'", o.name)
  pos("optimizer.lr", o.lr)
  _check(e, 0.0 <= o.momentum < 1.0, "optimizer.momentum", "must be in [0, 1)",
         o.momentum)
  _check(e, o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0",
         o.weight_decay)
  _check(e, 0 < o.gamma <= 1, "optimizer.gamma", "must be in (0, 1]", o.gamma)
  _check(e, o.grad_clip_norm >= 0, "optimizer.grad_clip_norm",
         "must be >= 0 (0 = off)", o.grad_clip_norm)
  pos("checkpoint.every_steps", config.checkpoint.every_steps)
  pos("checkpoint.max_to_keep", config.checkpoint.max_to_keep)
  if config.init_from:
    _check(e, os.path.exists(config.init_from), "init_from",
           "file or folder not found", config.init_from)
  kind = config.get("init_from_kind", "")
  if kind:
    from frcnn_jax import weights  # pylint: disable=g-import-not-at-top
    _check(e, kind in weights.ALL_KINDS, "init_from_kind",
           f"must be '' or one of {sorted(weights.ALL_KINDS)}", kind)
  if e:
    raise ConfigError("invalid config:\n  " + "\n  ".join(e))
