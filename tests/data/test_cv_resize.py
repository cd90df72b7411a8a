"""cv_resize: the seed's resize size rule and OpenCV's bilinear, against cv2.

OpenCV runs float32 INTER_LINEAR through Intel IPP when it has it (the x86
opencv-python wheels) and through its own C++ code otherwise, or with
cv2.setUseOptimized(False); the two differ in the precision of the source
coordinate, and each has its own `precision` here.
"""

import contextlib

import numpy as np
import pytest

from frcnn_jax.data import cv_resize as cr

cv2 = pytest.importorskip("cv2")

# The typical aspect ratios of VOC / COCO images, and what the seed makes of
# them at scale 600 (no max_size cap in its code).
TYPICAL = [
    ((281, 500), (600, 1068)),
    ((500, 375), (800, 600)),
    ((375, 500), (600, 800)),
    ((333, 500), (600, 901)),
    ((500, 333), (901, 600)),
    ((480, 640), (600, 800)),
    ((640, 480), (800, 600)),
    ((427, 640), (600, 899)),
    ((640, 427), (899, 600)),
    ((612, 612), (600, 600)),
    ((1024, 683), (900, 600)),
    ((300, 1000), (600, 2000)),
]


def cv_resize(img, s):
  return cv2.resize(img, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)


@contextlib.contextmanager
def cv_optimized(flag):
  before = cv2.useOptimized()
  cv2.setUseOptimized(flag)
  try:
    yield
  finally:
    cv2.setUseOptimized(before)


def opencv_uses_ipp():
  return bool(cv2.ipp.useIPP()) and cv2.useOptimized()


# --- sizes ------------------------------------------------------------------


@pytest.mark.parametrize("hw, want", TYPICAL)
def test_typical_sizes_hand_computed_and_cv2(hw, want):
  h, w = hw
  new_h, new_w, s = cr.seed_resize_size(h, w, 600)
  assert (new_h, new_w) == want
  assert s == 600.0 / min(h, w)
  out = cv_resize(np.zeros((h, w, 3), np.float32), s)
  assert out.shape == (new_h, new_w, 3)


def test_sizes_match_cv2_many(rng):
  """Random sizes and scales, and exact halves (cvRound: half to even)."""
  cases = [(int(h), int(w), 600.0 / min(h, w))
           for h, w in rng.integers(1, 1300, (300, 2))]
  cases += [(int(h), int(w), float(s)) for h, w, s in
            zip(rng.integers(1, 900, 200), rng.integers(1, 900, 200),
                rng.uniform(0.05, 5.0, 200))]
  # x.5 products: 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4, 3 * 1.5 = 4.5 -> 4.
  cases += [(5, 7, 0.5), (7, 5, 0.5), (3, 9, 1.5), (9, 3, 1.5), (1, 3, 0.5)]
  seen_half = False
  for h, w, s in cases:
    if round(h * s) < 1 or round(w * s) < 1:
      with pytest.raises(ValueError, match="empty"):
        cr.resized_size(h, w, s)
      continue
    got = cr.resized_size(h, w, s)
    assert got == cv_resize(np.zeros((h, w), np.float32), s).shape, (h, w, s)
    seen_half |= (h * s) % 1 == 0.5
  assert seen_half
  assert cr.resized_size(5, 7, 0.5) == (2, 4)


def test_max_size_cap():
  # py-faster-rcnn / Detectron: round(600 / 300 * 1000) = 2000 > 1000.
  assert cr.seed_resize_size(300, 1000, 600, 1000) == (300, 1000, 1.0)
  assert cr.seed_resize_size(300, 1000, 600) == (600, 2000, 2.0)
  # 375x500: 800 <= 1000, no cap; 281x500: 1068 <= 1000 is false.
  assert cr.seed_resize_size(375, 500, 600, 1000) == (600, 800, 1.6)
  h, w, s = cr.seed_resize_size(281, 500, 600, 1000)
  assert (h, w, s) == (562, 1000, 2.0)
  # The long side rounds to exactly max_size after the cap.
  for hh, ww in [(100, 999), (333, 1001), (1, 7), (613, 2000)]:
    nh, nw, s = cr.seed_resize_size(hh, ww, 600, 1000)
    assert max(nh, nw) <= 1000
    assert (nh, nw) == cv_resize(np.zeros((hh, ww), np.float32), s).shape
  with pytest.raises(ValueError):
    cr.seed_resize_size(0, 5, 600)


# --- pixels -----------------------------------------------------------------


def pixel_cases(rng):
  """(image, scale) pairs: up and down, odd sizes, 1-pixel-wide images."""
  shapes = [(1, 1), (1, 7), (7, 1), (2, 3), (13, 17), (31, 9), (40, 57)]
  scales = [0.5, 2.0, 1.0 / 3, 0.37, 0.9, 1.01, 1.7, 3.3, 7.25]
  out = []
  for h, w in shapes:
    for s in scales + [600.0 / min(h, w)]:
      if round(h * s) >= 1 and round(w * s) >= 1:
        out.append((rng.integers(0, 256, (h, w, 3)).astype(np.float32), s))
  # The seed's sizes (one image each, kept small in number).
  for (h, w), _ in TYPICAL[:3] + TYPICAL[-2:]:
    img = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    out.append((img - np.array([102.9801, 115.9465, 122.7717], np.float32),
                600.0 / min(h, w)))
  return out


def test_default_matches_installed_cv2(rng):
  if not opencv_uses_ipp():
    pytest.skip("this OpenCV runs its generic path (see the float32 test)")
  worst = 0.0
  for img, s in pixel_cases(rng):
    ref = cv_resize(img, s)
    got = cr.resize_bilinear(img, s)
    assert got.dtype == np.float32 and got.shape == ref.shape
    worst = max(worst, float(np.abs(got - ref).max()))
  assert worst < 1e-3, worst


def test_float32_is_bit_exact_with_opencv_generic_path(rng):
  with cv_optimized(False):
    for img, s in pixel_cases(rng):
      np.testing.assert_array_equal(cr.resize_bilinear(img, s, "float32"),
                                    cv_resize(img, s), err_msg=f"{img.shape} {s}")


def test_the_two_paths_really_differ(rng):
  """The precision choice matters at the seed's sizes (not a vacuous option)."""
  img = rng.integers(0, 256, (1024, 683, 3)).astype(np.float32)
  s = 600.0 / 683
  a = cr.resize_bilinear(img, s, "float64")
  b = cr.resize_bilinear(img, s, "float32")
  assert np.abs(a - b).max() > 1e-3
  if opencv_uses_ipp():
    ref = cv_resize(img, s)
    assert np.abs(a - ref).max() < 1e-3 < np.abs(b - ref).max()


def test_geometry_hand_computed():
  """1-D ramp: dst x samples (x + 0.5) / fx - 0.5, border replicated."""
  ramp = np.arange(4, dtype=np.float32)[None, :]   # [1, 4]
  out = cr.resize_bilinear(ramp, 2.0)               # [2, 8]
  want = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
  np.testing.assert_allclose(out[0], want, atol=1e-6)
  np.testing.assert_array_equal(out[0], out[1])
  # fx is the scale, not new_w / w: 10 * 0.26 = 2.6 -> 3 columns, and
  # column 2 samples (2.5 / 0.26 - 0.5) = 9.115..., not 9 * 10 / 3.
  ramp = np.tile(np.arange(10, dtype=np.float32), (4, 1))   # 4 x 10
  out = cr.resize_bilinear(ramp, 0.26)
  assert out.shape == (1, 3)
  np.testing.assert_allclose(out[0], np.minimum(
      (np.arange(3) + 0.5) / 0.26 - 0.5, 9), atol=1e-5)
  # Same size: a copy whatever fx (OpenCV copies when dsize == ssize).
  img = np.random.default_rng(0).standard_normal((10, 10, 2)).astype(np.float32)
  same = cr.resize_bilinear(img, 1.04)
  np.testing.assert_array_equal(same, img)
  assert same is not img
  np.testing.assert_array_equal(same, cv_resize(img, 1.04))


def test_channels_and_dtypes():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (9, 11, 5)).astype(np.uint8)
  got = cr.resize_bilinear(img, 1.7)
  assert got.dtype == np.float32 and got.shape == (15, 19, 5)
  for c in range(5):
    np.testing.assert_array_equal(got[..., c],
                                  cr.resize_bilinear(img[..., c], 1.7))
  with pytest.raises(ValueError):
    cr.resize_bilinear(img, 0.0)
  with pytest.raises(ValueError):
    cr.resize_bilinear(img, 1.0, precision="float16")
  with pytest.raises(ValueError):
    cr.resize_bilinear(img[None], 1.0)
