"""The paths of a config, made absolute once (the one list of path keys).

A config names files and folders (``data.root``, ``init_from``, ...). Read
relative to whatever the current directory happens to be, the same config
means another dataset in another directory: ``eval.py`` run elsewhere on a
workdir would read (or, for the synthetic set, silently generate) a second
copy. So every entry point resolves them once, against the current
directory, before anything is read or stored: ``config.json`` and the
checkpoints' ``meta`` hold absolute paths, and evaluating a workdir from
anywhere uses the data it was trained with.

``resolve_paths`` is idempotent (absolute paths are kept as they are), keeps
``''`` (not set), expands ``~`` and leaves URLs (``gs://...``) alone.
"""

from __future__ import annotations

import copy
import os
from typing import Any

# Every config key that holds a path ('' = not set). Keys a config lacks are
# skipped (older configs, converted folders).
PATH_KEYS = (
    "init_from",
    "data.root",
    "data.train_json",
    "data.train_images",
    "data.val_json",
    "data.val_images",
    "data.tfds_data_dir",
)


def get(config, dotted: str) -> Any:
  """``config.<dotted>``, or None when a key is missing."""
  node = config
  for part in dotted.split("."):
    try:
      if part not in node:
        return None
    except TypeError:
      return None
    node = node[part]
  return node


def _set(config, dotted: str, value: str) -> None:
  head, _, last = dotted.rpartition(".")
  node = get(config, head) if head else config
  node[last] = value


def absolute(path: str, base: str | None = None) -> str:
  """``path`` made absolute against ``base`` (default: the current directory).

  ``''`` stays ``''``; ``~`` is expanded; URLs (``scheme://...``) are kept.
  """
  if not path or "://" in path:
    return path
  path = os.path.expanduser(path)
  if not os.path.isabs(path):
    path = os.path.join(base or os.getcwd(), path)
  return os.path.normpath(path)


def resolve_paths(config, base: str | None = None, *, copy_config: bool = True):
  """The config with every :data:`PATH_KEYS` value absolute.

  Args:
    config: an ``ml_collections.ConfigDict`` (or nested dict).
    base: the folder relative paths are relative to (default: the current
      directory).
    copy_config: return a copy (default) instead of changing ``config``.

  Returns:
    the config with absolute paths (locked if the input was).
  """
  out = copy.deepcopy(config) if copy_config else config
  for key in PATH_KEYS:
    value = get(out, key)
    if isinstance(value, str) and value:
      new = absolute(value, base)
      if new != value:
        _set(out, key, new)
  return out


def relative_path_keys(config) -> list[str]:
  """The :data:`PATH_KEYS` of ``config`` that hold a relative path."""
  return [k for k in PATH_KEYS
          if isinstance(v := get(config, k), str) and v and "://" not in v
          and not os.path.isabs(os.path.expanduser(v))]
