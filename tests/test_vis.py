"""Tests for frcnn_jax/vis.py: drawing detections, PNG output, loss curves."""
import json

import numpy as np
import pytest
from PIL import Image

from frcnn_jax import vis

NAMES = ["__background__", "circle", "square", "triangle"]


def _gray(h=120, w=160):
  return np.full((h, w, 3), 128, np.uint8)


def test_draw_detections_edges_changed_far_pixels_untouched():
  img = _gray()
  boxes = np.array([[60, 50, 109, 99]], np.float32)   # inclusive corners
  out = vis.draw_detections(img, boxes, [2], [0.87], NAMES, line_width=2)
  assert out.dtype == np.uint8 and out.shape == img.shape
  assert np.array_equal(img, _gray())                 # input not modified
  color = np.array(vis.class_color(2))
  # All four edges, at the inclusive corners, carry the class colour.
  for y, x in [(75, 60), (75, 109), (50, 85), (99, 85), (99, 109), (50, 60)]:
    np.testing.assert_array_equal(out[y, x], color, err_msg=f"{(y, x)}")
  # Inside the box (below the label) and far outside: unchanged.
  np.testing.assert_array_equal(out[80, 85], [128, 128, 128])
  assert np.all(out[:, :40] == 128)                    # left strip
  assert np.all(out[105:, :] == 128)                   # below the box
  # The label sits above the box: pixels there changed.
  assert np.any(out[35:50, 60:110] != 128)


def test_draw_detections_threshold_valid_and_bad_rows():
  img = _gray()
  boxes = np.array([[10, 10, 40, 40],       # below threshold
                    [50, 10, 80, 40],       # padding (valid False)
                    [np.nan, 0, 5, 5],      # non-finite
                    [90, 40, 70, 60],       # inverted
                    [90, 60, 120, 90]],     # background class
                   np.float32)
  out = vis.draw_detections(img, boxes, [1, 1, 1, 1, 0],
                            [0.3, 0.9, 0.9, 0.9, 0.9], NAMES,
                            valid=[True, False, True, True, True])
  assert np.array_equal(out, img)
  # Lowering the threshold draws the first box.
  out = vis.draw_detections(img, boxes[:1], [1], [0.3], NAMES,
                            score_threshold=0.2)
  assert not np.array_equal(out, img)


def test_draw_detections_clips_and_distinct_colors():
  img = _gray(64, 64)
  out = vis.draw_detections(img, [[-20, -20, 200, 200]], [3], [0.99], NAMES)
  assert not np.array_equal(out, img)
  assert np.array_equal(out[-1, 32], np.array(vis.class_color(3)))
  colors = {vis.class_color(c) for c in range(1, 81)}
  assert len(colors) == 80
  # Grayscale / float inputs are accepted.
  out = vis.draw_detections(np.zeros((32, 32), np.float32), [[2, 2, 20, 20]],
                            [1], [0.9], None)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_save_png_round_trip(tmp_path):
  arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
  path = tmp_path / "sub" / "x.png"
  vis.save_png(path, arr)
  with Image.open(path) as im:
    assert im.format == "PNG"
    np.testing.assert_array_equal(np.asarray(im), arr)


def _write_jsonl(path, n=40, prefix=""):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for s in range(1, n + 1):
      rec = {"step": s, "wall_time": 1000.0 + s}
      for k in vis.LOSS_KEYS:
        rec[prefix + k] = float(np.exp(-s / 20) + 0.1 * rng.random())
      rec["lr"] = 1e-3 if s < 30 else 1e-4
      rec["images_per_sec"] = 4.0 + rng.random()
      f.write(json.dumps(rec) + "\n")
    f.write('{"step": 41, "loss_to')                 # cut short by a crash


def test_plot_loss_curves_writes_png(tmp_path):
  jl = tmp_path / "metrics.jsonl"
  _write_jsonl(jl)
  out = tmp_path / "plots" / "loss.png"
  keys = vis.plot_loss_curves(jl, out)
  assert keys == list(vis.LOSS_KEYS) + ["lr", "images_per_sec"]
  with Image.open(out) as im:
    im.verify()
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
    arr = np.asarray(im.convert("RGB"))
  assert arr.std() > 5                      # something was drawn


def test_plot_loss_curves_prefixed_keys_and_empty(tmp_path):
  jl = tmp_path / "metrics.jsonl"
  _write_jsonl(jl, n=5, prefix="train/")
  keys = vis.plot_loss_curves(jl, tmp_path / "a.png")
  assert keys[:5] == ["train/" + k for k in vis.LOSS_KEYS]
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  assert vis.plot_loss_curves(empty, tmp_path / "b.png") == []
  with Image.open(tmp_path / "b.png") as im:
    assert im.format == "PNG"


def test_ema_smooth_matches_hand_values():
  # weight 0.5: debiased EMA of [2, 4]: (0.5*2)/0.5 = 2; (0.25*2 + 0.5*4)/0.75.
  np.testing.assert_allclose(vis.ema_smooth(np.array([2.0, 4.0]), 0.5),
                             [2.0, 2.5 / 0.75])
  out = vis.ema_smooth(np.array([np.nan, 3.0, np.inf]), 0.9)
  assert np.isnan(out[0]) and out[1] == pytest.approx(3.0) and out[2] == pytest.approx(3.0)
