"""frcnn-jax: Faster R-CNN in JAX/Flax (model stages, training, evaluation).

The Python API (README "Use it from Python")::

  from frcnn_jax import Detector
  det = Detector.load("runs/shapes")
  result = det("photo.jpg")

Names exported here are loaded on first use (a module ``__getattr__``), so
``import frcnn_jax`` (which every ``import frcnn_jax.<module>`` runs first,
in grain's worker processes too) stays cheap: it only checks that the
top-level ``ops`` package is frcnn-jax's own (``siblings``).
"""

from __future__ import annotations

import importlib

from frcnn_jax import siblings

siblings.check("ops")

# name -> (module, attribute)
_LAZY = {
    "Detector": ("frcnn_jax.inference", "Detector"),
    "Detections": ("frcnn_jax.inference", "Detections"),
    "load_config": ("frcnn_jax.config_lib", "load_config"),
    "register_dataset": ("frcnn_jax.data.catalog", "register_dataset"),
    "export_detector": ("frcnn_jax.exporting", "export_detector"),
    "load_exported": ("frcnn_jax.exported", "load"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module 'frcnn_jax' has no attribute {name!r}")
  module, attr = _LAZY[name]
  value = getattr(importlib.import_module(module), attr)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
