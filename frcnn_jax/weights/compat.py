"""The config against what a set of weights or a checkpoint was made for.

A config whose backbone, preprocessing, anchors or pooling differ from the
weights' gives wrong results or does not load: :class:`ConfigMismatchError`
names every disagreeing key with both values and the command-line overrides
that fix it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from frcnn_jax.modeling.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class ConfigMismatchError(ValueError):
  """The config does not match what a set of weights was made for.

  The message lists each disagreeing key with both values and the
  command-line overrides that fix it.
  """

def preprocessing_config_values(prep: Preprocessing) -> dict[str, Any]:
  """``prep`` as the config's model.bgr / pixel_mean / pixel_std."""
  return prep.config_values()


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

def override_flag(key: str, value: Any) -> str:
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
  lines.append("  set: " + " ".join(override_flag(k, w) for k, _, w in mismatches))
  return "\n".join(lines)

def check_preprocessing(config: ml_collections.ConfigDict, prep: Preprocessing,
                        where: str) -> None:
  """Raises ConfigMismatchError when config.model normalises images other
  than the weights `prep` expect (channel order, means, stds)."""
  bad = config_mismatches(config, preprocessing_config_values(prep))
  if bad:
    raise ConfigMismatchError(_mismatch_message(where, bad))

# Keys that change what the weights compute: a checkpoint evaluated (or
# fine-tuned) with other values gives wrong results or does not load.
MODEL_KEYS = ("backbone", "model.bgr", "model.pixel_mean", "model.pixel_std",
              "rpn.conv_channels", "num_anchors", "roi", "model.arch", "fpn")

# The part a new run started from a checkpoint must share with it (the heads
# may change: other classes, anchors or pooling).
ARCHITECTURE_KEYS = ("backbone", "model.bgr", "model.pixel_mean",
                     "model.pixel_std", "rpn.conv_channels", "model.arch",
                     "fpn.variant", "fpn.out_channels")

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
              "model.box_decode", "rpn.conv_channels", "roi.class_agnostic",
              "roi.pooling_mode", "roi.pooling_size"):
    put(key)
  if get("roi.pooling_mode") == "align":
    put("roi.sampling_ratio")
    put("roi.aligned")
  scales, ratios = get("anchors.scales"), get("anchors.ratios")
  if get("model.arch") == "fpn":   # torchvision's FPN models
    for key in ("model.arch", "fpn.variant", "fpn.out_channels",
                "fpn.representation_size", "fpn.head_convs"):
      put(key)
  else:
    put("model.arch")   # 'c4' (absent in checkpoints of older versions)
    if scales is not None and ratios is not None:
      out["num_anchors"] = len(scales) * len(ratios)
  return out

# Settings that belong to the weights and show in no array's shape: a
# checkpoint is only right with the values it was trained with, so inference
# takes them from the checkpoint instead of asking for an override.
ADOPTED_KEYS = ("model.box_decode",)


def adopt_checkpoint_settings(config: ml_collections.ConfigDict,
                              meta: Mapping[str, Any], where: str
                              ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the ADOPTED_KEYS the checkpoint records.

  A checkpoint that records none (older runs: trained with the defaults)
  leaves the config as it is. Changed values are logged.
  """
  implied = implied_config_from_meta(meta)
  out = ml_collections.ConfigDict(config.to_dict())
  for key in ADOPTED_KEYS:
    if key not in implied or _same(_config_value(config, key), implied[key]):
      continue
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    log.info("%s was trained with %s=%r: using it (the config says %r)",
             where, key, implied[key], _config_value(config, key))
    node[leaf] = implied[key]
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
  implied = {k: v for k, v in implied_config_from_meta(meta).items()
             if k not in ADOPTED_KEYS}
  bad = config_mismatches(config, implied, keys)
  if bad:
    raise ConfigMismatchError(_mismatch_message(where, bad))
  pm = (meta.get("checkpoint") or {}).get("pooling_mode")
  if isinstance(pm, str) and pm not in ("align", "pool", "crop"):
    log.warning("%s was trained with pooling_mode %r, which frcnn-jax does "
                "not implement; using config.roi.pooling_mode=%r: results "
                "differ from PyTorch's", where, pm, config.roi.pooling_mode)
