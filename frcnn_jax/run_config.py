"""A run's config is part of the run: what a resume may change, and the record.

A workdir's checkpoints were trained with one config (recorded in every
checkpoint's meta). Resuming with another one is checked key by key
(:func:`resume_changes`):

* ``FREE`` keys never change what the run computes (logging, checkpoint and
  evaluation cadence, test-time settings, loader threads, the number of
  steps): they change silently, and are recorded.
* ``FIXED`` keys define the checkpoint's arrays or the data order (the
  network, anchors, classes, the training split, seed, global batch, the
  optimizer's kind): a change is refused; the way out is a new workdir.
* every other key (learning rate, schedule, sampling thresholds, input
  size, data paths, ...) changes what training does from here on: refused
  unless the run is started with ``allow_change=True``
  (``frcnn-train --allow_config_change``).

Every start of a run appends one line to ``<workdir>/runs.jsonl`` (time,
host, command line, working directory, the step it starts from, the keys
that changed) and rewrites ``<workdir>/config.json`` with the effective
config (:func:`record_start`).

Plain dicts (the configs' JSON) only: no ml_collections, no jax.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any, Mapping

RUNS_FILE = "runs.jsonl"
CONFIG_FILE = "config.json"

# Prefixes (a key matches a prefix equal to it or starting with it + '.').
FREE = ("train.num_steps", "train.num_epochs", "train.log_every",
        "train.eval_every", "train.eval_max_images", "train.nonfinite_rollbacks",
        "checkpoint", "test", "mesh", "data.num_workers", "data.num_threads",
        "data.verify_images", "data.val_split", "data.val_json",
        "data.val_images", "model.nms_impl", "init_from", "init_from_kind")
FIXED = ("backbone", "model.arch", "model.bgr", "model.pixel_mean",
         "model.pixel_std", "fpn", "rpn.conv_channels", "anchors.scales",
         "anchors.ratios", "roi.class_agnostic", "roi.pooling_size", "seed",
         "train.batch_size", "data.name", "data.train_split", "data.train_json",
         "data.class_names", "data.tfds_name", "data.shapes", "optimizer.name")

# One screen.
_MAX_LINES = 20


class ConfigChangedError(ValueError):
  """Resuming a workdir with a config that differs where it matters."""


def _matches(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def kind_of(key: str) -> str:
  """``'free'``, ``'fixed'`` or ``'allowed'`` (changes with the flag)."""
  if _matches(key, FIXED):
    return "fixed"
  if _matches(key, FREE):
    return "free"
  return "allowed"


def _as_dict(config) -> dict[str, Any]:
  if isinstance(config, str):
    return json.loads(config)
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config)))


def flatten(config) -> dict[str, Any]:
  """``{'a.b': value}`` of a config (ConfigDict, dict or its JSON)."""
  out: dict[str, Any] = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, Mapping):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(_as_dict(config), "")
  return out


def diff(old, new) -> dict[str, tuple[Any, Any]]:
  """``{key: (old value, new value)}`` of the keys that differ (a key only
  one side has counts, with None on the other), sorted by key."""
  a, b = flatten(old), flatten(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)}


def resume_changes(recorded, config, *, workdir: str, step: int,
                   allow_change: bool = False,
                   flag: str = "--allow_config_change"
                   ) -> dict[str, tuple[Any, Any]]:
  """The changes of ``config`` against the ``recorded`` one of a run resumed
  at ``step``; raises when one is not allowed.

  Returns:
    every changed key (free ones included), for the run's record.

  Raises:
    ConfigChangedError: a FIXED key changed, or another non-free one without
      ``allow_change``; the message lists the keys (one screen) and the
      ways out.
  """
  changes = diff(recorded, config)
  fixed = [k for k in changes if kind_of(k) == "fixed"]
  allowed = [k for k in changes if kind_of(k) == "allowed"]
  if not fixed and (allow_change or not allowed):
    return changes
  shown = fixed + allowed
  lines = [f"{workdir} holds a run at step {step} trained with another "
           f"config; this one differs in:"]
  width = min(max(len(k) for k in shown), 32)
  for k in shown[:_MAX_LINES]:
    old, new = changes[k]
    why = ("fixed: the checkpoints depend on it" if k in fixed
           else f"may change with {flag}")
    lines.append(f"  {k:<{width}}  {_short(old)} -> {_short(new)}   ({why})")
  if len(shown) > _MAX_LINES:
    lines.append(f"  ... and {len(shown) - _MAX_LINES} more")
  new_dir = f"{workdir.rstrip(os.sep)}_2"
  if fixed:
    lines.append(f"Train it in a new workdir (--workdir={new_dir}), or "
                 f"leave out the changes to the fixed keys.")
  else:
    lines.append(f"Either train it in a new workdir (--workdir={new_dir}), "
                 f"or continue this run with the change: {flag}.")
  raise ConfigChangedError("\n".join(lines))


def _short(value: Any, limit: int = 40) -> str:
  text = json.dumps(value) if not isinstance(value, str) else repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def record_start(workdir: str, config, *, step: int,
                 changes: Mapping[str, tuple[Any, Any]] | None = None,
                 argv=None) -> dict[str, Any]:
  """Appends this start to ``runs.jsonl`` and writes ``config.json``.

  Returns:
    the line written.
  """
  entry = {
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd(),
      "argv": list(sys.argv if argv is None else argv),
      "start_step": int(step), "resumed": step > 0,
      "config_changes": {k: list(v) for k, v in (changes or {}).items()},
  }
  with open(os.path.join(workdir, RUNS_FILE), "a") as f:
    f.write(json.dumps(entry) + "\n")
  text = (config.to_json_best_effort(indent=1)
          if hasattr(config, "to_json_best_effort")
          else json.dumps(_as_dict(config), indent=1))
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))
  return entry


def read_runs(workdir: str) -> list[dict[str, Any]]:
  """The lines of ``runs.jsonl`` ([] without one)."""
  path = os.path.join(workdir, RUNS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
