"""Export (frcnn_jax.exporting) and its runtime (frcnn_jax.exported).

The round trip: a folder written by ``export_detector`` and read back by
``load_exported`` detects what the in-process ``Detector`` detects, for any
batch size (the programs' batch dimension is symbolic), without importing
flax or the model code.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs "
                    "flatbuffers (pip install -r requirements.txt)")

from frcnn_jax import exported as exported_lib  # noqa: E402
from frcnn_jax import exporting  # noqa: E402
from frcnn_jax.data import loader as loader_lib  # noqa: E402
from frcnn_jax.inference import Detector  # noqa: E402
from tests.conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def det():
  return Detector.from_config("tiny")


@pytest.fixture(scope="module")
def folder(det, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("exported") / "model")
  return exporting.export_detector(det, out)


def _images():
  rng = np.random.default_rng(3)
  # Two per bucket: one program of b = 2 per bucket is compiled.
  sizes = [(50, 90), (90, 50), (60, 80), (70, 48)]
  out = []
  for h, w in sizes:
    im = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
    im[h // 3:h // 2, w // 3:w // 2] = (40, 40, 230)
    out.append(im)
  return out


def test_the_folder_holds_programs_weights_and_what_to_feed_them(det, folder):
  files = sorted(os.listdir(folder))
  assert files == ["bucket_128x64.jaxexport", "bucket_64x128.jaxexport",
                   "model.json", "params.npz"]
  meta = json.load(open(os.path.join(folder, "model.json")))
  assert meta["format"] == exported_lib.FORMAT
  assert meta["class_names"] == list(det.class_names)
  assert meta["preprocessing"]["scale"] == 64
  assert meta["preprocessing"]["buckets"] == [[64, 128], [128, 64]]
  with np.load(os.path.join(folder, "params.npz")) as z:
    assert len(z.files) == meta["num_params"] > 10
  exp = exported_lib.load(folder).program((64, 128))
  image_aval = exp.in_avals[-2]
  assert str(image_aval.shape[0]) == "b" and image_aval.shape[1:] == (64, 128, 3)
  assert [str(a.shape[0]) for a in exp.out_avals] == ["b"] * 4
  with pytest.raises(FileExistsError, match="already holds"):
    exporting.export_detector(det, folder)


def test_round_trip_equals_the_detector(det, folder):
  loaded = exported_lib.load(folder)
  images = _images()
  mine, theirs = det(images), loaded(images)
  for a, b in zip(mine, theirs):
    assert len(a) > 0
    assert np.array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2)


def test_any_batch_size_runs(det, folder):
  """b = 3 in one call (no padding) equals three calls with b = 1."""
  loaded = exported_lib.load(folder)
  canvases = np.zeros((3, 64, 128, 3), np.uint8)
  info = np.zeros((3, 3), np.float32)
  images = _images()[0::2] + [_images()[0][:, ::-1]]
  for j, im in enumerate(images):
    resized, inf = loader_lib.prepare_image(im, loaded._data)
    canvases[j, :resized.shape[0], :resized.shape[1]] = resized
    info[j] = inf
  together = loaded.run(canvases, info)
  assert together["boxes"].shape[0] == 3
  for j in range(3):
    alone = loaded.run(canvases[j:j + 1], info[j:j + 1])
    for k in ("boxes", "scores"):
      np.testing.assert_allclose(alone[k][0], together[k][j], atol=1e-4)
    assert np.array_equal(alone["classes"][0], together["classes"][j])
  one = loaded(images[0])                 # b = 1 through the API
  np.testing.assert_allclose(one.boxes, det(images[0]).boxes, atol=1e-2)
  assert one.class_names == det.class_names


def test_loads_without_flax_or_the_model_code(folder):
  code = f"""
import sys
import numpy as np
from frcnn_jax import load_exported
det = load_exported({folder!r})
r = det(np.full((50, 70, 3), 120, np.uint8))
banned = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax',
          'configs') or m.startswith(('frcnn_jax.modeling', 'frcnn_jax.train',
          'frcnn_jax.checkpoints', 'frcnn_jax.inference', 'frcnn_jax.weights'))]
assert not banned, banned
print('ok', len(r))
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO] + sys.path))
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_tf_saved_model(det, tmp_path):
  tf = pytest.importorskip("tensorflow")
  out = exporting.write_saved_model(det, str(tmp_path / "saved_model"))
  model = tf.saved_model.load(out)
  im = _images()[0]
  resized, info = loader_lib.prepare_image(im, det.config.data)
  canvas = np.zeros((1, 64, 128, 3), np.uint8)
  canvas[0, :resized.shape[0], :resized.shape[1]] = resized
  got = model.signatures["detect_64x128"](image=canvas, im_info=info[None])
  want = det.predict_batch({"image": np.repeat(canvas, 4, 0),
                            "im_info": np.repeat(info[None], 4, 0),
                            "image_id": np.arange(4, dtype=np.int32)})
  np.testing.assert_allclose(got["scores"].numpy()[0], want["scores"][0],
                             atol=1e-5)
