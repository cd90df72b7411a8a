"""frcnn_jax.Detector (the Python API) and frcnn_jax.detections.

A fresh tiny detector (random weights, seeded) is enough to check what the
API adds around the model: input conversions, batching by bucket with one
compilation per bucket, boxes in the pixels of the image given, results
equal to the evaluation path (EvalLoader + predict_dataset, a separate
preprocessing path), loading from a folder, Detections' conversions.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from frcnn_jax import checkpoints
from frcnn_jax import config_lib
from frcnn_jax import eval_lib
from frcnn_jax.data import loader as loader_lib
from frcnn_jax.detections import Detections
from frcnn_jax.inference import Detector
from frcnn_jax.weights import ConfigMismatchError
from tests.conftest import REPO
from tests.conftest import run_with_devices


@pytest.fixture(scope="module")
def det():
  # A low score threshold keeps many detections, so comparisons bite.
  return Detector.from_config("tiny", overrides={"test.score_thresh": 0.0})


def _image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  im = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
  im[h // 4:h // 2, w // 4:w // 2] = (230, 40, 40)
  return im


def assert_same(a: Detections, b: Detections, atol=1e-4):
  assert np.array_equal(a.class_ids, b.class_ids)
  np.testing.assert_allclose(a.scores, b.scores, atol=atol)
  np.testing.assert_allclose(a.boxes, b.boxes, atol=atol * 100)


def test_one_image_gives_sorted_detections_in_its_pixels(det):
  im = _image(60, 90)
  r = det(im)
  assert isinstance(r, Detections) and len(r) > 0
  assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(r), 4)
  assert np.all(np.diff(r.scores) <= 0)
  assert r.class_ids.min() >= 1 and r.class_ids.max() <= 3
  assert r.labels[0] in ("circle", "square", "triangle")
  # Original pixels: clipped by the model to the resized content, then
  # divided by the scale (64 / 60): at most (round(90 s) - 1) / s.
  s = 64 / 60
  assert r.boxes.min() >= 0
  assert r.boxes[:, [0, 2]].max() <= (96 - 1) / s + 1e-3
  assert r.boxes[:, [1, 3]].max() <= (64 - 1) / s + 1e-3
  assert r.boxes[:, [0, 2]].max() > 80     # not in canvas pixels
  assert len(det(im, score_threshold=0.5)) == int((r.scores >= 0.5).sum())


def test_every_input_kind_gives_the_same_detections(det, tmp_path):
  im = _image(52, 70, seed=1)
  ref = det(im)
  path = tmp_path / "x.png"
  Image.fromarray(im).save(path)
  buf = io.BytesIO()
  Image.fromarray(im).save(buf, format="PNG")
  rgba = np.concatenate([im, np.full(im.shape[:2] + (1,), 7, np.uint8)], -1)
  for other in (str(path), path, buf.getvalue(), Image.fromarray(im),
                Image.fromarray(rgba), rgba, im.astype(np.float32)):
    assert_same(det(other), ref, atol=0)
  r = det(str(path))
  assert r.source == str(path) and r.image.shape == im.shape
  gray = im[..., 0]
  assert_same(det(gray), det(np.repeat(gray[..., None], 3, -1)), atol=0)
  with pytest.raises(ValueError, match="HxW|h, w, 3"):
    det(np.zeros((4, 5, 6, 3), np.uint8))


def test_a_list_is_batched_by_bucket_and_compiled_once_per_bucket(det):
  images = [_image(50, 90, 2), _image(90, 50, 3), _image(60, 80, 4),
            _image(70, 48, 5), _image(40, 100, 6), _image(64, 64, 7)]
  singles = [det(im) for im in images]
  together = det(images)
  assert isinstance(together, list) and len(together) == len(images)
  for a, b in zip(together, singles):
    assert_same(a, b)
  det(images[::-1])
  assert det._predict._cache_size() == 2   # two buckets, any batch content


def test_same_detections_as_the_evaluation_path(det, tmp_path):
  """EvalLoader (grain, transforms.make_example) + predict_dataset vs the
  Detector (prepare_image, image_batches) on the same files."""
  cfg = config_lib.load_config("tiny", {"data.root": str(tmp_path / "d"),
                                        "test.score_thresh": 0.0})
  loader = loader_lib.build_eval_loader(cfg.data, "val", batch_size=4)
  preds = eval_lib.predict_dataset(det._predict, det.params, det.rest, loader,
                                   det.mesh)
  by_id = {r.image_id: r.path for r in loader.source.records}
  paths = [by_id[int(i)] for i in preds["image_id"]]
  mine = det(paths)
  for k, r in enumerate(mine):
    v = preds["valid"][k]
    order = np.argsort(-preds["scores"][k][v], kind="stable")
    ref = Detections(preds["boxes"][k][v][order], preds["scores"][k][v][order],
                     preds["classes"][k][v][order], det.class_names)
    assert_same(r, ref)


def test_four_devices_detect_what_one_device_detects(det):
  """One bucket (landscape images): one compilation in the subprocess."""
  code = """
import json
import numpy as np
from frcnn_jax.inference import Detector
det = Detector.from_config("tiny", overrides={"test.score_thresh": 0.0,
                                              "test.batch_size": 2})
assert det.mesh.size == 4 and det.batch_size == 4, (det.mesh, det.batch_size)
rng = np.random.default_rng(5)
ims = [rng.integers(60, 200, (40 + 4 * i, 90 - 3 * i, 3)).astype(np.uint8)
       for i in range(5)]
print(json.dumps([[r.scores.tolist(), r.class_ids.tolist(), r.boxes.tolist()]
                  for r in det(ims)]))
"""
  out = json.loads(run_with_devices(code, 4).strip().splitlines()[-1])
  rng = np.random.default_rng(5)
  ims = [rng.integers(60, 200, (40 + 4 * i, 90 - 3 * i, 3)).astype(np.uint8)
         for i in range(5)]
  for (scores, classes, boxes), r in zip(out, det(ims)):
    assert_same(r, Detections(np.array(boxes, np.float32).reshape(-1, 4),
                              np.array(scores, np.float32),
                              np.array(classes, np.int32), r.class_names))


def test_load_a_folder_with_its_recorded_config(det, tmp_path, monkeypatch):
  folder = tmp_path / "run"
  meta = {"class_names": list(det.class_names),
          "config": det.config.to_json_best_effort()}
  checkpoints.save_model_checkpoint(
      checkpoints.model_pure_dict((det.params, det.rest)), str(folder), meta)
  im = _image(50, 80, 9)
  monkeypatch.chdir(tmp_path)
  loaded = Detector.load("run")           # relative to the current directory
  assert loaded.path == str(folder) and loaded.step == 0
  assert loaded.class_names == det.class_names
  assert_same(loaded(im), det(im), atol=0)
  assert_same(Detector.load(folder, config="tiny")(im), det(im), atol=0)
  with pytest.raises(ConfigMismatchError, match="backbone.tiny_widths"):
    Detector.load(folder, config="shapes")


def test_load_without_a_config_or_checkpoint_says_why(det, tmp_path):
  folder = tmp_path / "bare"
  checkpoints.save_model_checkpoint(
      checkpoints.model_pure_dict((det.params, det.rest)), str(folder),
      {"class_names": list(det.class_names)})
  with pytest.raises(ValueError, match="records no config"):
    Detector.load(folder)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    Detector.load(tmp_path / "empty", config="tiny")


def test_detections_conversions():
  image = np.zeros((40, 60, 3), np.uint8)
  d = Detections(boxes=np.array([[10, 20, 29, 35], [0, 0, 9, 9]], np.float32),
                 scores=np.array([0.9, 0.3], np.float32),
                 class_ids=np.array([2, 1], np.int32),
                 class_names=("__background__", "cat", "dog"), image=image)
  assert d.labels == ["dog", "cat"]
  coco = d.to_coco(image_id=7, category_ids=[0, 17, 18])
  # Inclusive pixels: w = x2 - x1 + 1.
  assert coco[0] == {"image_id": 7, "category_id": 18,
                     "bbox": [10.0, 20.0, 20.0, 16.0], "score": 0.9}
  assert d.to_coco()[1]["category_id"] == 1
  assert len(d.above(0.5)) == 1 and d.above(0.5).labels == ["dog"]
  drawn = d.draw(score_threshold=0.5)
  assert drawn.shape == image.shape and drawn[20, 10:30].any()
  assert not drawn[0:9, 0:9].any()        # the 0.3 box is not drawn
  assert not image.any()                  # the input is left alone
  assert d.to_dict()["labels"] == ["dog", "cat"]
  with pytest.raises(ValueError, match="no image"):
    Detections(d.boxes, d.scores, d.class_ids, d.class_names).draw()


def test_importing_the_package_stays_light():
  code = ("import sys, frcnn_jax; assert 'jax' not in sys.modules, 'jax'\n"
          "import frcnn_jax.data\n"
          "heavy = [m for m in ('flax', 'frcnn_jax.inference', 'optax') "
          "if m in sys.modules]\n"
          "assert not heavy, heavy\n"
          "from frcnn_jax import Detector, register_dataset, load_config\n"
          "assert 'frcnn_jax.train_lib' not in sys.modules\n"
          "print('ok')")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
