"""Batched inference over a dataset split, and its COCO / VOC metrics.

Inference is one ``jax.jit`` of :meth:`FasterRCNN.predict` with the batch
sharded on the ``data`` mesh axis and the detections replicated, so with
several processes every process sees every detection (they are small) and
process 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx
from frcnn_jax import analysis
from frcnn_jax import checkpoints
from frcnn_jax import compiler_options
from frcnn_jax import console
from frcnn_jax import data as data_lib
from frcnn_jax import metrics as metrics_lib
from frcnn_jax import parallel
from frcnn_jax import paths
from frcnn_jax import vis
from frcnn_jax.data import loader as loader_lib
from frcnn_jax.modeling import detector as detector_lib
from frcnn_jax.weights import compat

log = logging.getLogger(__name__)


def make_predict_fn(graphdef, mesh):
  """``(params, rest, image, im_info, image_id) -> detections`` (jitted).

  ``image_id`` passes through so that every process gets the ids of the
  whole global batch next to its detections.
  """
  rep = parallel.replicated(mesh)
  data = parallel.batch_sharding(mesh)

  def predict(params, rest, image, im_info, image_id):
    out = nnx.merge(graphdef, params, rest).predict(image, im_info)
    return dict(out, image_id=image_id)

  return jax.jit(predict, in_shardings=(rep, rep, data, data, data),
                 out_shardings=rep,
                 compiler_options=compiler_options.detector_options())


def predict_batch(predict_fn, params, rest, batch, mesh) -> dict:
  """``predict_fn`` on one host batch (``image``, ``im_info``, ``image_id``;
  other keys ignored) placed on ``mesh``; NumPy outputs of the whole global
  batch (``boxes`` in original pixels, ``scores``, ``classes``, ``valid``,
  ``image_id``)."""
  g = parallel.global_batch(
      {k: batch[k] for k in ("image", "im_info", "image_id")}, mesh)
  return jax.device_get(predict_fn(params, rest, g["image"], g["im_info"],
                                   g["image_id"]))


class Predictor:
  """A detector split for jit with its jitted ``predict`` on a mesh: the core
  that eval's, demo.py's and the Python API's (``inference.Detector``)
  detectors share.

  Attributes:
    config: the config it runs with (``config.test``, ``config.data``'s
      resizing).
    graphdef, params, rest: the model as ``detector.split_model`` splits it,
      arrays replicated on ``mesh``.
    class_names: ``K`` names, background first.
    mesh: the ``data`` mesh.
    step: the checkpoint step it was restored from (None: fresh).
    path: the folder it was restored from (None: fresh).
    batch_size: images per batch: ``test.batch_size`` rounded up to a
      multiple of the mesh's device count (a batch is split over them).
  """

  def __init__(self, config, graphdef, params, rest, class_names, *, mesh,
               step: int | None = None, path: str | None = None):
    self.config = config
    self.graphdef, self.params, self.rest = graphdef, params, rest
    self.class_names = tuple(class_names)
    self.mesh = mesh
    self.step = step
    self.path = path
    n = mesh.size
    self.batch_size = -(-max(int(config.test.batch_size), 1) // n) * n
    self._predict = make_predict_fn(graphdef, mesh)

  @classmethod
  def restore(cls, config, path: str, *, step: int | None = None, mesh=None,
              **kwargs):
    """The checkpoint of ``path`` (see :func:`load_for_inference`) in the
    network of ``config``, on ``mesh`` (default: every device, or
    ``config.mesh.num_devices``). ``kwargs`` go to the constructor (a
    subclass's own)."""
    path = os.path.abspath(os.fspath(path))
    mesh = mesh or parallel.create_mesh(config.mesh.num_devices)
    graphdef, params, rest, step, names = load_for_inference(
        config, path, step=step, mesh=mesh)
    return cls(config, graphdef, params, rest, names, mesh=mesh, step=step,
               path=path, **kwargs)

  def predict_batch(self, batch) -> dict:
    """The raw model output of one prepared batch (``image``, ``im_info``,
    ``image_id`` as ``data.loader.image_batches`` makes them).

    Returns:
      NumPy ``boxes [B, Dt, 4]`` (original pixels), ``scores``, ``classes``,
      ``valid``, ``image_id`` for the ``B = batch_size`` slots.
    """
    return predict_batch(self._predict, self.params, self.rest, batch,
                         self.mesh)

  def predict_images(self, items) -> Iterator[tuple[Any, dict, int]]:
    """``(key, output, slot)`` for each ``(key, uint8 [h, w, 3] RGB)`` of
    ``items``: resized as evaluation resizes, batched by canvas bucket
    (keys come back grouped by canvas), ``output`` the batch's
    :meth:`predict_batch` and ``slot`` the image's row in it."""
    for keys, batch in loader_lib.image_batches(list(items), self.config.data,
                                              self.batch_size):
      out = self.predict_batch(batch)
      for j, key in enumerate(keys):
        yield key, out, j


def predict_dataset(predict_fn, params, rest, loader, mesh, *,
                    max_images: int | None = None, desc: str = "eval",
                    timing: dict | None = None) -> dict[str, np.ndarray]:
  """Detections for every image of ``loader`` (or its first ``max_images``).

  ``timing`` (optional, kept by the caller across calls): ``'shapes'`` (a
  set) collects the batch shapes seen and ``'compile_s'`` is increased by
  the time of each batch of a new shape (it traces and compiles), so that
  a caller can tell evaluation time from compilation time.

  Returns:
    dict of NumPy arrays over real images only (padding images dropped):
    ``image_id [n]``, ``boxes [n, Dt, 4]`` (original pixels), ``scores``,
    ``classes``, ``valid``.
  """
  parts = []
  seen = 0
  show = jax.process_index() == 0
  total = len(loader)
  # A bar on a terminal only: a log gets no per-batch output.
  with console.Progress(total, desc=desc, unit="batch",
                        enabled=show) as bar:
    for batch in loader:
      t = time.perf_counter()
      out = predict_batch(predict_fn, params, rest, batch, mesh)
      if timing is not None:
        shapes = timing.setdefault("shapes", set())
        if batch["image"].shape not in shapes:
          shapes.add(batch["image"].shape)
          timing["compile_s"] = (timing.get("compile_s", 0.0) +
                                 time.perf_counter() - t)
      keep = out["image_id"] >= 0
      parts.append({k: v[keep] for k, v in out.items()})
      seen += int(keep.sum())
      bar.update(1)
      bar.postfix(images=seen)
      if max_images is not None and seen >= max_images:
        break
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if max_images is not None:
    out = {k: v[:max_images] for k, v in out.items()}
  return out


def ground_truth(source, record) -> tuple[np.ndarray, np.ndarray,
                                          np.ndarray]:
  """``(boxes [M, 4], classes [M], ignore [M])`` of one image as the
  evaluation sees it: the record's boxes (VOC difficult ones ignored) and
  the crowd boxes the reader kept out of training (ignored)."""
  crowd = [d for d in source.dropped.get(record.image_id, ())
           if d.reason == "box_crowd"]
  boxes = np.concatenate([np.asarray(record.boxes, np.float64).reshape(-1, 4),
                          np.asarray([d.box for d in crowd],
                                     np.float64).reshape(-1, 4)])
  classes = np.concatenate([record.classes,
                            [d.class_id for d in crowd]]).astype(np.int64)
  ignore = np.concatenate([record.difficult, np.ones(len(crowd), bool)])
  return boxes, classes, ignore


def _voc_inputs(source, preds):
  by_id = {r.image_id: r for r in source.records}
  gt, dets = [], []
  for i, image_id in enumerate(preds["image_id"]):
    rec = by_id[int(image_id)]
    gt.append(dict(boxes=rec.boxes, classes=rec.classes,
                   difficult=rec.difficult))
    v = preds["valid"][i]
    dets.append(dict(boxes=preds["boxes"][i][v], scores=preds["scores"][i][v],
                     classes=preds["classes"][i][v]))
  return gt, dets


def compute_metrics(source, preds, *, metric: str = "coco",
                    coco_evaluator: str = "pycocotools") -> tuple[
                        dict[str, Any], list[dict]]:
  """COCO and/or VOC metrics of ``preds`` against ``source``'s ground truth.

  Args:
    source: the split's ``DetectionSource``.
    preds: output of :func:`predict_dataset`.
    metric: ``'coco'`` (pycocotools COCOeval), ``'voc'`` (VOC07 11-point and
      area AP per class) or ``'both'``.
    coco_evaluator: ``metrics.COCO_EVALUATORS`` (``test.coco_evaluator``).

  Returns:
    ``(metrics, coco_results)``; ``metrics['coco']`` (or ``['voc07']`` for
    ``'voc'``) holds ``pr_curves`` (:func:`evaluate` moves them out).
  """
  if metric not in ("coco", "voc", "both"):
    raise ValueError(f"metric must be 'coco', 'voc' or 'both', got {metric!r}")
  results = metrics_lib.detections_to_coco(
      preds["image_id"], preds["boxes"], preds["scores"], preds["classes"],
      preds["valid"], source.cat_ids)
  out: dict[str, Any] = {"num_images": int(len(preds["image_id"])),
                         "num_detections": len(results)}
  if not source.has_annotations:
    out["no_ground_truth"] = (
        f"{source.name} is an image list without annotations (like COCO "
        f"test-dev): no AP computed; submit detections.json to the "
        f"dataset's evaluation server")
    return out, results
  if metric in ("coco", "both"):
    out["coco"] = metrics_lib.coco_evaluate(
        source.coco_gt(), results,
        image_ids=[int(i) for i in preds["image_id"]],
        class_names=source.class_names, pr_curves=True,
        evaluator=coco_evaluator)
  if metric in ("voc", "both"):
    gt, dets = _voc_inputs(source, preds)
    names = source.class_names
    out["voc07"] = metrics_lib.voc_evaluate(gt, dets, names,
                                            use_07_metric=True,
                                            pr_curves=metric == "voc")
    out["voc_area"] = metrics_lib.voc_evaluate(gt, dets, names,
                                               use_07_metric=False)
  return out, results


def format_metrics(m: dict[str, Any]) -> str:
  parts = [m["no_ground_truth"]] if "no_ground_truth" in m else []
  if "coco" in m:
    parts.append(metrics_lib.format_coco_table(m["coco"]))
  if "voc07" in m:
    parts.append("VOC07 11-point AP:\n" + metrics_lib.format_voc_table(
        m["voc07"]))
    parts.append("VOC area AP:\n" + metrics_lib.format_voc_table(
        m["voc_area"]))
  return "\n\n".join(parts)


def headline_names(metric: str) -> tuple[str, ...]:
  """The names :func:`headline` gives for ``test.metric`` = ``metric``."""
  names = ()
  if metric in ("coco", "both"):
    names += ("AP", "AP50", "AP75")
  if metric in ("voc", "both"):
    names += ("voc07_mAP", "voc_area_mAP")
  return names


def headline(m: dict[str, Any]) -> dict[str, float]:
  """A few scalars for logs and TensorBoard (training logs them as
  ``eval/<name>``): ``AP``, ``AP50``, ``AP75`` (COCO), ``voc07_mAP``,
  ``voc_area_mAP`` (VOC); nothing for a split without ground truth."""
  out = {}
  if "coco" in m:
    for k in ("AP", "AP50", "AP75"):
      out[k] = float(m["coco"][k])
  if "voc07" in m:
    out["voc07_mAP"] = float(m["voc07"]["mAP"])
    out["voc_area_mAP"] = float(m["voc_area"]["mAP"])
  return out


def draw_examples(source, preds, out_dir: str, n: int, *,
                  score_threshold: float = 0.5) -> list[str]:
  """Writes the first ``n`` images with ground truth and detections as PNGs.

  :func:`analysis.draw_evaluation`: detections scoring at least
  ``score_threshold`` in green (found an object) or red (false), ground
  truth dashed, misses highlighted.
  """
  os.makedirs(out_dir, exist_ok=True)
  by_id = {r.image_id: r for r in source.records}
  paths = []
  for i in range(min(n, len(preds["image_id"]))):
    rec = by_id[int(preds["image_id"][i])]
    gb, gc, ignore = ground_truth(source, rec)
    v = preds["valid"][i]
    img = analysis.draw_evaluation(
        source.load_image(rec), preds["boxes"][i][v], preds["classes"][i][v],
        preds["scores"][i][v], gb, gc, source.class_names, gt_ignore=ignore,
        score_threshold=score_threshold)
    path = os.path.join(out_dir, f"{rec.image_id}.png")
    vis.save_png(path, img)
    paths.append(path)
  return paths


def write_analysis(source, preds, curves, out_dir: str, *,
                   score_threshold: float = 0.5) -> list[str]:
  """PR curves and the confusion matrix (json + png) into ``out_dir``."""
  by_id = {r.image_id: r for r in source.records}
  gts, dets = [], []
  for i, image_id in enumerate(preds["image_id"]):
    b, c, ignore = ground_truth(source, by_id[int(image_id)])
    gts.append(dict(boxes=b, classes=c, ignore=ignore))
    v = preds["valid"][i]
    dets.append(dict(boxes=preds["boxes"][i][v], classes=preds["classes"][i][v],
                     scores=preds["scores"][i][v]))
  cm = analysis.confusion_matrix(gts, dets, source.num_classes,
                                 score_threshold=score_threshold)
  return analysis.write_report(out_dir, curves=curves, cm_json=(
      analysis.confusion_json(cm, source.class_names,
                              score_threshold=score_threshold,
                              iou_threshold=0.5)))


def evaluate(predict_fn, params, rest, loader, mesh, *, metric: str,
             out_dir: str | None = None, max_images: int | None = None,
             vis_images: int = 0, vis_score_threshold: float = 0.5,
             desc: str = "eval", timing: dict | None = None,
             class_map=None, coco_evaluator: str = "pycocotools"
             ) -> dict[str, Any]:
  """Inference over ``loader`` + metrics; process 0 writes ``out_dir``:

  ``detections.json`` (COCO results, original pixels, dataset category ids),
  ``metrics.json``, ``pr_curves.json`` / ``.png`` (per class),
  ``confusion_matrix.json`` / ``.png`` (detections scoring at least
  ``vis_score_threshold``; PNGs with matplotlib) and, with ``vis_images``,
  ``vis/<image_id>.png`` (:func:`draw_examples`). ``timing``: see
  :func:`predict_dataset`. ``class_map``: model class -> dataset class
  (:func:`class_map_by_name`); ``coco_evaluator``: see
  ``metrics.COCO_EVALUATORS``.
  """
  preds = predict_dataset(predict_fn, params, rest, loader, mesh,
                          max_images=max_images, desc=desc, timing=timing)
  preds = remap_classes(preds, class_map)
  m, results = compute_metrics(loader.source, preds, metric=metric,
                               coco_evaluator=coco_evaluator)
  curves = None
  for key in ("coco", "voc07"):
    if key in m and "pr_curves" in m[key]:
      curves = m[key].pop("pr_curves")
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "detections.json"), "w") as f:
      json.dump(results, f)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(m, f, indent=1)
    if loader.source.has_annotations:
      write_analysis(loader.source, preds, curves, out_dir,
                     score_threshold=vis_score_threshold)
    if vis_images:
      draw_examples(loader.source, preds, os.path.join(out_dir, "vis"),
                    vis_images, score_threshold=vis_score_threshold)
  return m


def class_map_by_name(model_names, dataset_names) -> np.ndarray | None:
  """Model class index -> dataset class index, matched by name.

  For a model whose classes are not the dataset's but name them (e.g.
  torchvision's COCO detectors: 91 slots, slot k = COCO category id k, unused
  ids named 'N/A', against the COCO reader's 81 contiguous classes).

  Returns:
    ``[len(model_names)]`` int32 (-1: the dataset has no such class, its
    detections are dropped), or None when the counts are equal: classes are
    then taken as they are, by index, whatever their names (as before
    names were compared).

  Raises:
    ValueError: a dataset class the model does not name.
  """
  model_names, dataset_names = list(model_names), list(dataset_names)
  if len(model_names) == len(dataset_names):
    return None
  index = {n: i for i, n in enumerate(dataset_names)}
  missing = [n for n in dataset_names[1:] if n not in model_names]
  if missing:
    raise ValueError(f"the model's {len(model_names)} classes do not name "
                     f"the dataset's {missing[:5]} ({len(missing)} missing)")
  out = np.array([index.get(n, -1) for n in model_names], np.int32)
  out[0] = 0
  return out


def remap_classes(preds: dict[str, np.ndarray],
                  class_map: np.ndarray | None) -> dict[str, np.ndarray]:
  """Detections with ``classes`` mapped by ``class_map`` (see
  :func:`class_map_by_name`); unmapped classes become invalid."""
  if class_map is None:
    return preds
  cls = class_map[np.asarray(preds["classes"])]
  valid = np.asarray(preds["valid"]) & (cls > 0)
  return dict(preds, classes=np.where(valid, cls, 0).astype(np.int32),
              valid=valid)


def load_for_inference(config, path: str, *, num_classes: int | None = None,
                       step: int | None = None, mesh=None,
                       dataset_class_names=None):
  """Builds the detector of ``config`` and restores a checkpoint into it.

  Args:
    config: the config the model was trained with (overrides allowed for
      test-time settings: proposals, NMS, thresholds, dtype).
    path: a train workdir, its ``checkpoints`` folder, or a folder written
      by ``python -m frcnn_jax.weights convert``.
    num_classes: expected number of classes (incl. background); default:
      the checkpoint's class names.
    dataset_class_names: the dataset's class names: a checkpoint with other
      classes is accepted when it names every one of them (evaluated through
      :func:`class_map_by_name`); num_classes is then not checked.
    step: a checkpoint step; default the newest readable one.

  Returns:
    ``(graphdef, params, rest, step, class_names)``, arrays replicated on
    ``mesh``.
  """
  ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_location(path),
                                 read_only=True, async_save=False)
  try:
    if not ckpt.all_steps():
      raise FileNotFoundError(
          f"no checkpoint in {ckpt.directory}: train first (python train.py "
          f"--workdir={path}) or convert weights (python -m frcnn_jax.weights "
          f"convert ...)")
    meta = ckpt.read_meta(step)
    compat.check_config_against_checkpoint(config, meta,
                                           where=ckpt.directory)
    config = compat.adopt_checkpoint_settings(config, meta, ckpt.directory)
    names = meta.get("class_names")
    if (names and dataset_class_names is not None and
        len(names) != len(dataset_class_names)):
      class_map_by_name(names, dataset_class_names)   # Raises if unusable.
      num_classes = None
    if num_classes is None:
      if not names:
        raise ValueError(f"{ckpt.directory}: the checkpoint has no class "
                         f"names; pass num_classes")
      num_classes = len(names)
    elif names and len(names) != num_classes:
      raise ValueError(
          f"{ckpt.directory} was trained for {len(names)} classes "
          f"({names[:5]}...), the dataset has {num_classes}")
    model = detector_lib.build_detector(config, num_classes)
    rep = parallel.replicated(mesh) if mesh is not None else None
    got = ckpt.restore_model(model, step, sharding=rep)
  finally:
    ckpt.close()
  restored_step, _ = got
  graphdef, params, rest = detector_lib.split_model(model)
  if mesh is not None:
    params, rest = jax.device_put((params, rest), rep)
  return graphdef, params, rest, restored_step, names


def run(config, workdir: str, *, split: str | None = None,
        step: int | None = None, out_dir: str | None = None,
        max_images: int | None = None, vis_images: int = 0) -> dict[str, Any]:
  """What eval.py does: restore, infer over ``split``, print and write metrics.

  Writes ``out_dir`` (default ``<workdir>/eval/<split>_step<N>``): see
  :func:`evaluate`. Returns the metrics.
  """
  config = paths.resolve_paths(config)
  split = split or config.data.val_split
  mesh = parallel.create_mesh(config.mesh.num_devices)
  # Never writes a dataset (the synthetic one): only training does.
  loader = data_lib.build_eval_loader(
      config.data, split, batch_size=config.test.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      generate=False)
  graphdef, params, rest, step, names = load_for_inference(
      config, workdir, num_classes=loader.source.num_classes, step=step,
      mesh=mesh, dataset_class_names=loader.source.class_names)
  class_map = class_map_by_name(names, loader.source.class_names) if (
      names) else None
  if (names and class_map is None
      and list(names) != list(loader.source.class_names)):
    log.warning("%s was trained on the classes %s, %s has %s: detections are "
                "scored against the dataset's classes by position", workdir,
                list(names)[1:], loader.source.name,
                loader.source.class_names[1:])
  out_dir = out_dir or os.path.join(workdir, "eval", f"{split}_step{step}")
  m = evaluate(make_predict_fn(graphdef, mesh), params, rest, loader, mesh,
               metric=config.test.metric, out_dir=out_dir,
               max_images=max_images, vis_images=vis_images,
               vis_score_threshold=config.test.vis_score_thresh,
               desc=f"eval {split}", class_map=class_map,
               coco_evaluator=config.test.get("coco_evaluator", "pycocotools"))
  if jax.process_index() == 0:
    print(f"\n{workdir} step {step}, {split}: {m['num_images']} images, "
          f"{m['num_detections']} detections")
    print(format_metrics(m))
    wrote = ["metrics.json", "detections.json"]
    if loader.source.has_annotations:
      wrote += ["pr_curves.json", "confusion_matrix.json"]
      if os.path.exists(os.path.join(out_dir, "pr_curves.png")) or \
          os.path.exists(os.path.join(out_dir, "confusion_matrix.png")):
        wrote += ["pr_curves.png", "confusion_matrix.png"]
      else:
        wrote.append("(no PNG plots: pip install matplotlib)")
    if vis_images:
      wrote.append("vis/")
    print(f"\nwrote to {out_dir}: {', '.join(wrote)}")
  return m
