"""Transforms: resize rule, buckets, flip, the seed's crop, padding."""

import math

import numpy as np
import pytest

from frcnn_jax.data import transforms as T


def params(**kw):
  base = dict(scale=600, max_size=1000, buckets=((608, 1008), (1008, 608)),
              max_num_box=4)
  base.update(kw)
  return T.TransformParams(**base)


# --- resize (prep_im_for_blob) ----------------------------------------------


@pytest.mark.parametrize('h, w, want_scale, want_hw', [
    (375, 500, 1.6, (600, 800)),          # VOC-like: short side -> 600
    (500, 375, 1.6, (800, 600)),
    (100, 1000, 1.0, (100, 1000)),        # long side capped at 1000
    (480, 640, 1.25, (600, 800)),
    (300, 600, 5 / 3, (500, 1000)),       # round(2 * 600) = 1200 > 1000
    (1000, 1000, 0.6, (600, 600)),
])
def test_resize_rule_hand_computed(h, w, want_scale, want_hw):
  s = T.compute_scale(h, w, 600, 1000)
  assert s == pytest.approx(want_scale)
  assert T.resized_size(h, w, s) == want_hw


def test_resize_rule_rounding_of_the_cap():
  # 600 / 333 * 555 = 999.99..: rounds to 1000, not > max_size: no cap.
  s = T.compute_scale(333, 555, 600, 1000)
  assert s == pytest.approx(600 / 333)
  assert T.resized_size(333, 555, s) == (600, 1000)


def test_resize_always_within_limits(rng):
  for _ in range(200):
    h, w = rng.integers(1, 3000, 2)
    s = T.compute_scale(h, w, 600, 1000)
    oh, ow = T.resized_size(h, w, s)
    assert max(oh, ow) <= 1000 and min(oh, ow) <= 600
    assert max(oh, ow) == 1000 or min(oh, ow) == 600


# --- buckets ------------------------------------------------------------------


def test_choose_bucket_smallest_area_first_on_ties():
  buckets = ((608, 1008), (1008, 608), (800, 800), (608, 608))
  assert T.choose_bucket(600, 800, buckets) == 0
  assert T.choose_bucket(800, 600, buckets) == 1
  assert T.choose_bucket(600, 600, buckets) == 3
  assert T.choose_bucket(700, 700, buckets) == 2
  assert T.choose_bucket(1009, 10, buckets) == -1
  assert T.choose_bucket(600, 600, ((608, 1008), (1008, 608))) == 0


# --- flip ---------------------------------------------------------------------


def test_flip_boxes_inclusive_convention():
  b = np.array([[0, 5, 9, 7], [3, 0, 3, 0]], np.float64)
  f = T.flip_boxes(b, 10)
  np.testing.assert_array_equal(f, [[0, 5, 9, 7], [6, 0, 6, 0]])
  np.testing.assert_array_equal(T.flip_boxes(f, 10), b)


def _box_from_mask(mask):
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def test_flip_matches_the_pixels(rng):
  for _ in range(20):
    h, w = rng.integers(5, 40, 2)
    x1, x2 = np.sort(rng.integers(0, w, 2))
    y1, y2 = np.sort(rng.integers(0, h, 2))
    mask = np.zeros((h, w), bool)
    mask[y1:y2 + 1, x1:x2 + 1] = True
    flipped = T.flip_boxes(np.array([[x1, y1, x2, y2]], np.float64), w)[0]
    np.testing.assert_array_equal(flipped, _box_from_mask(mask[:, ::-1]))


# --- the seed's crop ------------------------------------------------------------


def test_crop_size_seed_trim():
  assert T.crop_size(300, 100) == (200, 100)    # floor(100 / 0.5)
  assert T.crop_size(101, 301) == (101, 202)    # ceil(101 * 2)
  assert T.crop_size(100, 200) == (100, 200)    # ratio exactly 2: no crop
  assert T.crop_size(200, 100) == (200, 100)


class _ScriptedRng:
  """Stands in for np.random: records the range it was asked for."""

  def __init__(self):
    self.calls = []

  def integers(self, lo, hi):
    self.calls.append((lo, hi))
    return lo


def _seed_crop_start(min_y, max_y, height, trim):
  """The seed's Code1 (roibatchLoader), literally, for one axis; returns the
  start or the half-open range it draws from."""
  box_region = max_y - min_y + 1
  if min_y == 0:
    return 0
  if (box_region - trim) < 0:
    y_s_min = max(max_y - trim, 0)
    y_s_max = min(min_y, height - trim)
    if y_s_min == y_s_max:
      return y_s_min
    return ('choice', y_s_min, y_s_max)
  y_s_add = int((box_region - trim) / 2)
  if y_s_add == 0:
    return min_y
  return ('choice', min_y, min_y + y_s_add)


@pytest.mark.parametrize('boxes', [
    [[10, 0, 40, 50]],                      # min_y == 0
    [[10, 120, 40, 150]],                   # fits: random in a range
    [[5, 100, 50, 280], [0, 150, 20, 290]],  # region taller than the window
    [[10, 250, 40, 298]],                   # near the bottom
    [[0, 17, 99, 216]],                     # region == trim: y_s_add == 0
])
def test_crop_start_matches_seed_code(boxes):
  boxes = np.array(boxes, np.float64)
  h, w = 300, 100
  trim = int(math.floor(w / 0.5))
  want = _seed_crop_start(int(boxes[:, 1].min()), int(boxes[:, 3].max()), h,
                          trim)
  rng = _ScriptedRng()
  got = T._crop_start(boxes[:, 1], boxes[:, 3], h, trim, rng)
  if isinstance(want, tuple):
    assert rng.calls == [want[1:]] and got == want[1]
  else:
    assert rng.calls == [] and got == want


def test_crop_keeps_boxes_that_fit_and_clamps(rng):
  for _ in range(100):
    h, w = int(rng.integers(300, 600)), int(rng.integers(40, 140))
    trim = int(math.floor(w / 0.5))
    y1 = rng.uniform(1, h - trim / 2)
    boxes = np.array([[2, y1, w - 3, y1 + rng.uniform(0, trim / 2 - 2)]])
    y0, x0, ch, cw, out = T.crop_extreme_ratio(h, w, boxes, rng)
    assert (x0, ch, cw) == (0, trim, w) and 0 <= y0 <= h - trim
    assert (out >= 0).all() and (out[:, [1, 3]] <= ch - 1).all()
    # A box region shorter than the window stays, within 2 px: the seed
    # truncates coordinates with int() and its window may end at max_y - 1.
    np.testing.assert_allclose(out[:, [1, 3]], boxes[:, [1, 3]] - y0, atol=2)


def test_crop_wide_image_and_boxes_outside_window_become_flat():
  rng = np.random.default_rng(0)
  boxes = np.array([[5, 2, 40, 30], [500, 2, 590, 30]], np.float64)
  y0, x0, ch, cw, out = T.crop_extreme_ratio(50, 600, boxes, rng)
  assert (y0, ch, cw) == (0, 50, 100)
  kept, _ = T.drop_degenerate(out, np.array([1, 2]))
  # min_x = 5, box region 586 >= 100: start drawn in [5, 5 + 243).
  assert 5 <= x0 < 5 + (586 - 100) // 2
  assert len(kept) <= 2
  assert (out[:, [0, 2]] <= 99).all()


def test_crop_no_boxes_any_window():
  rng = np.random.default_rng(1)
  starts = {T.crop_extreme_ratio(400, 50, np.zeros((0, 4)), rng)[0]
            for _ in range(50)}
  assert min(starts) >= 0 and max(starts) <= 300 and len(starts) > 5


# --- padding, degenerate boxes ------------------------------------------------


def test_pad_gt_counts_overflow():
  b = np.arange(24, dtype=np.float32).reshape(6, 4)
  c = np.arange(1, 7, dtype=np.int32)
  pb, pc, pv, dropped = T.pad_gt(b, c, 4)
  assert dropped == 2 and pv.all()
  np.testing.assert_array_equal(pb, b[:4])
  pb, pc, pv, dropped = T.pad_gt(b[:1], c[:1], 4)
  assert dropped == 0 and pv.tolist() == [True, False, False, False]
  assert (pb[1:] == 0).all() and (pc[1:] == 0).all()


def test_drop_degenerate():
  b = np.array([[0, 0, 0, 5], [0, 0, 5, 0], [0, 0, 1, 1], [3, 3, 2, 5]],
               np.float64)
  kept, cls = T.drop_degenerate(b, np.array([1, 2, 3, 4]))
  assert cls.tolist() == [3]


# --- a whole example ----------------------------------------------------------


def _picture(h, w, box, color=(255, 0, 0)):
  img = np.full((h, w, 3), 40, np.uint8)
  x1, y1, x2, y2 = [int(v) for v in box]
  img[y1:y2 + 1, x1:x2 + 1] = color
  return img


def _red_box(canvas, im_info):
  oh, ow = int(im_info[0]), int(im_info[1])
  red = (canvas[:oh, :ow, 0] > 150) & (canvas[:oh, :ow, 1] < 100)
  return _box_from_mask(red)


def test_eval_example_places_top_left_and_scales():
  img = _picture(100, 150, (30, 20, 59, 39))
  p = params(scale=200, max_size=400, buckets=((208, 304), (304, 208)))
  ex = T.make_example(img, np.array([[30, 20, 59, 39]]), np.array([1]), p,
                      (208, 304))
  assert ex['image'].shape == (208, 304, 3)
  np.testing.assert_allclose(ex['im_info'], [200, 300, 2.0])
  assert (ex['image'][200:] == 0).all() and (ex['image'][:, 300:] == 0).all()
  np.testing.assert_allclose(ex['gt_boxes'][0], [60, 40, 118, 78])
  np.testing.assert_allclose(_red_box(ex['image'], ex['im_info']),
                             ex['gt_boxes'][0], atol=1.5)
  assert ex['gt_valid'].tolist() == [True, False, False, False]


@pytest.mark.parametrize('h, w, seed', [(120, 90, 0), (300, 80, 1),
                                        (300, 80, 5), (60, 400, 2),
                                        (60, 400, 3)])
def test_train_example_boxes_follow_pixels(h, w, seed):
  """Flip + crop + resize: the gt box stays on the drawn rectangle."""
  rng = np.random.default_rng(seed)
  x1, y1 = int(w * 0.3), int(h * 0.4)
  box = (x1, y1, x1 + max(w // 5, 6), y1 + max(h // 6, 6))
  img = _picture(h, w, box)
  p = params(scale=128, max_size=256, buckets=((128, 256), (256, 128),
                                               (256, 256)))
  oh, ow, _ = T.planned_size(h, w, p, train=True)
  bucket = p.buckets[T.choose_bucket(oh, ow, p.buckets)]
  for _ in range(4):
    ex = T.make_example(img, np.array([box], np.float64), np.array([1]), p,
                        bucket, rng=rng)
    assert tuple(ex['im_info'][:2]) == (oh, ow)
    if ex['gt_valid'][0]:
      np.testing.assert_allclose(_red_box(ex['image'], ex['im_info']),
                                 ex['gt_boxes'][0], atol=2.0)
    assert np.isfinite(ex['gt_boxes']).all()


def test_train_example_deterministic_given_rng():
  img = _picture(80, 200, (10, 10, 50, 50))
  p = params(scale=64, max_size=128, buckets=((64, 128), (128, 64)))
  a = T.make_example(img, np.array([[10, 10, 50, 50]]), np.array([2]), p,
                     (64, 128), rng=np.random.default_rng(7))
  b = T.make_example(img, np.array([[10, 10, 50, 50]]), np.array([2]), p,
                     (64, 128), rng=np.random.default_rng(7))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_params_validation():
  from frcnn_jax.data import default_data_config
  c = default_data_config()
  c.buckets = ((600, 1000),)
  with pytest.raises(ValueError, match='multiples of 16'):
    T.TransformParams.from_config(c)
  c = default_data_config()
  c.max_size = 500
  with pytest.raises(ValueError, match='max_size'):
    T.TransformParams.from_config(c)


# --- the seed configs' input rule (no cap, OpenCV float resize) -------------

# 12 typical photograph sizes (h, w): VOC and COCO's common shapes, square,
# and the extreme ratios the training crop bounds.
TYPICAL = [(281, 500), (500, 375), (375, 500), (333, 500), (500, 333),
           (480, 640), (640, 480), (427, 640), (640, 427), (612, 612),
           (683, 1024), (300, 1000)]


def _seed_params():
  from configs import pascal_voc  # pylint: disable=g-import-not-at-top
  return T.TransformParams.from_config(pascal_voc.voc_config('resnet101').data)


@pytest.mark.parametrize('h,w', TYPICAL)
def test_seed_configs_resize_as_the_seed(h, w):
  """Evaluation: cv2.resize(fx=fy=600/min(h, w)) sizes, no cap; training:
  the same after the crop to w/h in [0.5, 2], so at most 600 x 1200."""
  cv2 = pytest.importorskip('cv2')
  p = _seed_params()
  assert p.max_size == 0 and p.resize == 'cv2'
  s = 600.0 / min(h, w)
  want = cv2.resize(np.zeros((h, w), np.float32), None, None, fx=s, fy=s,
                    interpolation=cv2.INTER_LINEAR).shape
  oh, ow, got_s = T.planned_size(h, w, p, train=False)
  assert (oh, ow) == want and got_s == s
  th, tw, _ = T.planned_size(h, w, p, train=True)
  assert min(th, tw) == 600 and max(th, tw) <= 1200
  assert T.choose_bucket(th, tw, p.buckets) >= 0   # every training image fits
  if (h, w) == (281, 500):
    assert (oh, ow) == (600, 1068)   # the example (capped: 562x1000)


def test_seed_resize_pixels_are_opencv_float():
  cv2 = pytest.importorskip('cv2')
  img = np.random.default_rng(0).integers(0, 256, (281, 500, 3), np.uint8)
  ex = T.make_example(img, np.zeros((0, 4)), np.zeros((0,), np.int32),
                      _seed_params(), (608, 1200))
  assert ex['image'].dtype == np.float32
  s = 600.0 / 281
  want = cv2.resize(img.astype(np.float32), None, None, fx=s, fy=s,
                    interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(ex['image'][:600, :1068], want, atol=1e-3)
  assert not ex['image'][600:].any() and not ex['image'][:, 1068:].any()
