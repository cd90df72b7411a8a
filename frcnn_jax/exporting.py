"""Export: a trained detector as a folder that needs no model code to run.

``export_detector(detector, out)`` writes::

  out/model.json                 format, class names, preprocessing, the
                                 programs' inputs and outputs, the config
  out/params.npz                 the weights: p00000, p00001, ... in the
                                 order of the programs' first argument
  out/bucket_<H>x<W>.jaxexport   one serialized jax.export program per
                                 canvas bucket of data.buckets
  out/saved_model/               (tf_saved_model=True) the same as a
                                 TensorFlow SavedModel, via jax2tf

Each program is the detector's ``predict`` (backbone, RPN, proposals, RoI
head, per-class NMS, rescaling to original pixels; the config's test-time
settings baked in), lowered to StableHLO by ``jax.export`` with a symbolic
batch dimension ``b``::

  (params: list of arrays, image: uint8 [b, H, W, 3], im_info: float32 [b, 3])
    -> (boxes float32 [b, D, 4], scores float32 [b, D],
        classes int32 [b, D], valid bool [b, D])

``image`` is the RGB picture resized by the rule in ``model.json``
(``preprocessing``: short side ``scale``, long side at most ``max_size``,
bilinear) and placed top-left on the zero canvas ``H x W``; ``im_info`` is
``(resized height, resized width, scale)``; boxes come back in original
pixels. Weights are arguments, not constants, so they are stored once for
all buckets. :mod:`frcnn_jax.exported` loads the folder with jax, NumPy and
the package's preprocessing only (no flax, no model code, no checkpoints);
any StableHLO consumer can run the programs.

Serialization needs the ``flatbuffers`` package (in requirements.txt).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frcnn_jax import exported as exported_lib
from frcnn_jax.data import transforms
from frcnn_jax.inference import Detector

log = logging.getLogger(__name__)


def _predict_fn(graphdef, treedef):
  """``(leaves, image, im_info) -> (boxes, scores, classes, valid)``."""

  def predict(leaves, image, im_info):
    params, rest = jax.tree.unflatten(treedef, leaves)
    out = nnx.merge(graphdef, params, rest).predict(image, im_info)
    return out["boxes"], out["scores"], out["classes"], out["valid"]

  return predict


def _host_leaves(detector: Detector):
  leaves, treedef = jax.tree.flatten((detector.params, detector.rest))
  host = [np.asarray(jax.device_get(x)) for x in leaves]
  for i, a in enumerate(host):
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
      raise TypeError(f"model state leaf {i} has dtype {a.dtype}: only "
                      f"numeric arrays can be exported")
  return host, treedef


def export_programs(detector: Detector, *,
                    buckets: Sequence[tuple[int, int]] | None = None,
                    platforms: Sequence[str] | None = None):
  """``({(H, W): jax.export.Exported}, host leaves)`` of ``detector``."""
  host, treedef = _host_leaves(detector)
  fn = jax.jit(_predict_fn(detector.graphdef, treedef))
  specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in host]
  b, = jax.export.symbolic_shape("b")
  buckets = buckets or [tuple(int(x) for x in bk)
                        for bk in detector.config.data.buckets]
  # uint8 canvases, or float32 for the resizes that keep float pixels.
  image_dtype = transforms.TransformParams.from_config(
      detector.config.data).image_dtype
  programs = {}
  for h, w in buckets:
    programs[(h, w)] = jax.export.export(
        fn, platforms=tuple(platforms) if platforms else None)(
            specs, jax.ShapeDtypeStruct((b, h, w, 3), image_dtype),
            jax.ShapeDtypeStruct((b, 3), jnp.float32))
  return programs, host


def export_detector(detector: Detector, out: str, *,
                    platforms: Sequence[str] | None = None,
                    tf_saved_model: bool = False,
                    overwrite: bool = False) -> str:
  """Writes ``detector`` as a self-contained folder (module docstring).

  Args:
    detector: a ``frcnn_jax.Detector`` (``Detector.load(workdir)``).
    out: the folder to write.
    platforms: lower for these platforms (``'cpu'``, ``'cuda'``, ``'rocm'``,
      ``'tpu'``); default the platform JAX runs on now.
    tf_saved_model: also write ``out/saved_model`` (needs tensorflow).
    overwrite: replace an earlier export in ``out``.

  Returns:
    ``out``.
  """
  meta_path = os.path.join(out, exported_lib.MODEL_JSON)
  if os.path.exists(meta_path) and not overwrite:
    raise FileExistsError(f"{out} already holds an exported model "
                          f"(overwrite=True / --overwrite replaces it)")
  os.makedirs(out, exist_ok=True)
  programs, host = export_programs(detector, platforms=platforms)
  files = {}
  for (h, w), exp in programs.items():
    name = f"bucket_{h}x{w}.jaxexport"
    with open(os.path.join(out, name), "wb") as f:
      f.write(exp.serialize())
    files[f"{h}x{w}"] = name
  np.savez(os.path.join(out, exported_lib.PARAMS),
           **{exported_lib.param_key(i): a for i, a in enumerate(host)})
  config = detector.config
  meta = {
      "format": exported_lib.FORMAT,
      "class_names": list(detector.class_names),
      "preprocessing": {
          "scale": int(config.data.scale),
          "max_size": int(config.data.max_size),
          "buckets": [[int(h), int(w)] for h, w in programs],
          "exif_transpose": bool(config.data.get("exif_transpose", True)),
          "resize": str(config.data.get("resize", "pil")),
          "rule": ("frcnn_jax.data.transforms.plan_resize(h, w, scale, "
                   "max_size, resize) gives the size and im_scale (the "
                   "seed's: im_scale = scale / min(h, w), or max_size / "
                   "max(h, w) when round(im_scale * max(h, w)) > max_size, "
                   "size round(h * im_scale) x round(w * im_scale); "
                   "'torchvision': floor sizes); pixels as "
                   "frcnn_jax.data.transforms.resize_image; placed "
                   "top-left on the smallest bucket holding it, zeros "
                   "elsewhere"),
      },
      "batch_size": int(config.test.batch_size),
      "programs": files,
      "params": exported_lib.PARAMS,
      "num_params": len(host),
      "inputs": ["params: list of num_params arrays (params.npz order)",
                 "image: uint8 [b, H, W, 3] RGB canvas",
                 "im_info: float32 [b, 3] (resized height, width, scale)"],
      "outputs": ["boxes: float32 [b, D, 4] x1, y1, x2, y2, original "
                  "pixels, inclusive (w = x2 - x1 + 1)",
                  "scores: float32 [b, D]", "classes: int32 [b, D] 1..K-1",
                  "valid: bool [b, D]"],
      "platforms": sorted({p for e in programs.values() for p in e.platforms}),
      "jax_version": jax.__version__,
      "source": detector.path,
      "step": detector.step,
      "config": json.loads(config.to_json_best_effort()),
  }
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=1)
  if tf_saved_model:
    write_saved_model(detector, os.path.join(out, "saved_model"))
  log.info("exported %s (%d buckets, %d arrays) to %s", detector.path,
           len(programs), len(host), out)
  return out


def write_saved_model(detector: Detector, out: str) -> str:
  """The detector as a TensorFlow SavedModel (``jax2tf``), one signature
  ``detect_<H>x<W>`` per bucket: ``(image uint8 [b, H, W, 3], im_info
  float32 [b, 3]) -> {boxes, scores, classes, valid}``, weights as
  variables. Needs tensorflow."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("a SavedModel needs tensorflow (pip install "
                      "tensorflow); the jax.export programs do not") from e
  host, treedef = _host_leaves(detector)
  fn = _predict_fn(detector.graphdef, treedef)
  module = tf.Module()
  module.params = [tf.Variable(a, trainable=False) for a in host]
  signatures = {}
  for bk in detector.config.data.buckets:
    h, w = int(bk[0]), int(bk[1])
    tf_fn = jax2tf.convert(
        fn, polymorphic_shapes=[None, f"(b, {h}, {w}, 3)", "(b, 3)"],
        with_gradient=False)

    def serve(image, im_info, _fn=tf_fn):
      boxes, scores, classes, valid = _fn(list(module.params), image, im_info)
      return {"boxes": boxes, "scores": scores, "classes": classes,
              "valid": valid}

    sig = tf.function(serve, autograph=False, input_signature=[
        tf.TensorSpec([None, h, w, 3], tf.uint8, name="image"),
        tf.TensorSpec([None, 3], tf.float32, name="im_info")])
    setattr(module, f"detect_{h}x{w}", sig)
    signatures[f"detect_{h}x{w}"] = sig
  tf.saved_model.save(module, out, signatures=signatures)
  return out
