"""The top-level packages shipped next to ``frcnn_jax``: ``ops`` and ``configs``.

frcnn-jax installs three top-level packages side by side (one wheel, one
folder each in ``site-packages``, or the checkout for ``pip install -e .``):
``frcnn_jax``, ``ops`` (pure ``jax.numpy`` ops, public API: ``from ops
import nms``) and ``configs`` (the built-in configs, which import each other
as ``from configs import common``).

Both names are generic: another installed distribution may own an ``ops``
package (Canonical's charm library does), and many projects have a
``configs`` folder that Python finds first when a script runs from it. A
wrong ``ops`` would fail deep inside the model with an unrelated message, so
``import frcnn_jax`` checks it at once (:func:`check`), without importing
it: the package Python would import under the name must be the folder next
to ``frcnn_jax`` and carry our marker line. ``configs`` is checked where the
built-in configs are used (``config_lib``), so that a project with its own
``configs`` package can still use the Python API on a trained workdir.

This module imports nothing of the project (it runs inside
``frcnn_jax/__init__.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys

# The line every shipped sibling's __init__.py holds.
MARKER = "__frcnn_jax_sibling__ = True"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_PACKAGE_DIR)


class SiblingPackageError(ImportError):
  """``ops`` or ``configs`` resolves to a package that is not frcnn-jax's."""


def expected_dir(name: str) -> str:
  """The folder of sibling ``name`` next to ``frcnn_jax`` (it may be absent)."""
  return os.path.join(_ROOT, name)


def _has_marker(init_file: str) -> bool:
  try:
    with open(init_file, encoding="utf-8") as f:
      return any(line.strip() == MARKER for line in f)
  except OSError:
    return False


def problem(name: str) -> str | None:
  """None when ``import <name>`` gives frcnn-jax's sibling, else why not."""
  want = expected_dir(name)
  mod = sys.modules.get(name)
  try:
    spec = (mod.__spec__ if mod is not None and getattr(mod, "__spec__", None)
            else importlib.util.find_spec(name))
  except (ImportError, ValueError) as e:
    spec, err = None, f" ({type(e).__name__}: {e})"
  else:
    err = ""
  if spec is None or not spec.submodule_search_locations:
    return (f"frcnn_jax needs its top-level package {name!r} (expected in "
            f"{want}), but Python finds no such package{err}. Reinstall "
            f"frcnn-jax (pip install <checkout>), or run from the checkout.")
  where = [os.path.abspath(p) for p in spec.submodule_search_locations]
  init = spec.origin or os.path.join(where[0], "__init__.py")
  if os.path.normcase(want) in {os.path.normcase(p) for p in where}:
    if _has_marker(os.path.join(want, "__init__.py")):
      return None
    return (f"{want}/__init__.py is not frcnn-jax's {name!r} package (no "
            f"marker line {MARKER!r}): another installed distribution wrote "
            f"a package {name!r} into the same folder. Install frcnn-jax in "
            f"its own virtualenv.")
  return (f"'import {name}' resolves to {init}, not to frcnn-jax's {name!r} "
          f"package in {want}: a folder or distribution of that name comes "
          f"first on sys.path (the current directory or the script's folder "
          f"counts). Run from another directory, rename your {name!r} "
          f"package, or install frcnn-jax in its own virtualenv.")


def check(name: str) -> None:
  """Raises :class:`SiblingPackageError` when ``name`` is not our sibling."""
  why = problem(name)
  if why is not None:
    raise SiblingPackageError(why)
