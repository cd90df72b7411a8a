"""ops.multiscale_roi_align against torchvision.ops.MultiScaleRoIAlign (forward,
gradients by torch autograd, its LevelMapper and scale inference) and, where
torch is absent, against a plain-numpy transcription of the same rules;
plus the adjoint identity of the custom VJP, jit, vmap and padded RoIs.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import multiscale_roi_align as M
from ops.multiscale_roi_align import multiscale_roi_align

F32 = np.float32

# Four levels of a 128 x 192 input (strides 4..32), few channels: small and
# fast, the same level structure as P2..P5 of an 800 x 1216 input.
IMG = (128, 192)
SHAPES = [(32, 48), (16, 24), (8, 12), (4, 6)]
C = 3


def make_features(rng, shapes=SHAPES, c=C, lead=()):
  return [rng.normal(size=lead + (h, w, c)).astype(F32) for h, w in shapes]


def make_rois(rng, n=160):
  """RoIs of every level (sqrt(area) from 0.5 to 900 px), partly or wholly
  outside the image, elongated, and degenerate ones."""
  size = np.exp(rng.uniform(math.log(0.5), math.log(900), n))
  ar = np.exp(rng.uniform(math.log(1 / 6), math.log(6), n))
  w, h = size / np.sqrt(ar), size * np.sqrt(ar)
  cx = rng.uniform(-40, IMG[1] + 40, n)
  cy = rng.uniform(-40, IMG[0] + 40, n)
  rois = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
  rois[:13] = [
      [10, 10, 10, 10],        # a point (area 0): the finest level
      [20, 5, 20, 60],         # zero width
      [50, 50, 40, 40],        # both sides inverted: positive area
      [50, 50, 40, 60],        # one side inverted: negative area, no level
      [-300, -300, -200, -250],  # entirely outside
      [0, 0, 192, 128],        # the whole image
      [-500, -400, 700, 600],  # larger than the image: coarsest level
      [0, 0, 112, 112],        # exactly on a level boundary (112, 224)
      [0, 0, 224, 224],
      # A sample exactly on the border of the valid range (included):
      [10, -8, 20, 104],       # P2, y = -1
      [10, 20, 20, 132],       # P2, y = H = 32
      [-16, 40, 208, 140],     # P3, x = -1
      [-24, 40, 200, 140],     # P3, x = W = 24
  ]
  return rois.astype(F32)


# ----------------------------------------------------------------------------
# Plain numpy reference (torchvision's rules; float32 coordinates).
# ----------------------------------------------------------------------------

def np_level(box, k_min=2, k_max=5):
  """torchvision's LevelMapper in float32 numpy; None where it is NaN."""
  area = F32(box[2] - box[0]) * F32(box[3] - box[1])
  if not area >= 0:
    return None
  with np.errstate(divide="ignore"):
    t = F32(F32(np.log2(F32(np.sqrt(area) / F32(224)))) + F32(4)) + F32(1e-6)
  return int(min(max(np.floor(t), k_min), k_max)) - k_min


def np_roi_align_one(feat, box, scale, out=7, sr=2):
  """torchvision's roi_align (aligned=False) of one RoI: [out, out, C]."""
  h, w, c = feat.shape
  x1, y1, x2, y2 = [F32(v) * F32(scale) for v in box]
  rw, rh = max(F32(x2 - x1), F32(1)), max(F32(y2 - y1), F32(1))
  bw, bh = F32(rw / F32(out)), F32(rh / F32(out))
  res = np.zeros((out, out, c), np.float64)
  for i in range(out):
    for j in range(out):
      acc = np.zeros(c, np.float64)
      for a in range(sr):
        y = F32(F32(y1 + F32(i) * bh) + F32(F32(a + 0.5) * bh) / F32(sr))
        for b in range(sr):
          x = F32(F32(x1 + F32(j) * bw) + F32(F32(b + 0.5) * bw) / F32(sr))
          if y < -1 or y > h or x < -1 or x > w:
            continue
          yy, xx = max(y, F32(0)), max(x, F32(0))
          y0, x0 = int(yy), int(xx)
          if y0 >= h - 1:
            y0 = y1_ = h - 1
            yy = F32(y0)
          else:
            y1_ = y0 + 1
          if x0 >= w - 1:
            x0 = x1_ = w - 1
            xx = F32(x0)
          else:
            x1_ = x0 + 1
          ly, lx = yy - y0, xx - x0
          acc += ((1 - ly) * (1 - lx) * feat[y0, x0] + (1 - ly) * lx * feat[y0, x1_]
                  + ly * (1 - lx) * feat[y1_, x0] + ly * lx * feat[y1_, x1_])
      res[i, j] = acc / (sr * sr)
  return res


def np_multiscale(feats, rois, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32)):
  out = np.zeros((len(rois), 7, 7, feats[0].shape[-1]), np.float64)
  for r, box in enumerate(rois):
    lv = np_level(box)
    if lv is not None:
      out[r] = np_roi_align_one(feats[lv], box, scales[lv])
  return out


def tv_multiscale(feats, rois, image_size=IMG, names=("0", "1", "2", "3")):
  """torchvision's MultiScaleRoIAlign on NHWC numpy inputs -> NHWC numpy."""
  torch = pytest.importorskip("torch")
  from collections import OrderedDict
  from torchvision.ops import MultiScaleRoIAlign
  x = OrderedDict((n, torch.tensor(f.transpose(2, 0, 1)[None]))
                  for n, f in zip(names, feats))
  m = MultiScaleRoIAlign(list(names), 7, 2)
  out = m(x, [torch.tensor(rois)], [image_size])
  return out.numpy().transpose(0, 2, 3, 1)


def levels_used(rois):
  return {np_level(b) for b in rois} - {None}


# ----------------------------------------------------------------------------
# Levels and scales.
# ----------------------------------------------------------------------------

def test_infer_scales_and_bounds_equal_torchvision():
  torch = pytest.importorskip("torch")
  from torchvision.ops.poolers import _setup_scales
  cases = [((800, 1216), [(200, 304), (100, 152), (50, 76), (25, 38)]),
           ((800, 1199), [(200, 304), (100, 152), (50, 76), (25, 38)]),
           ((601, 1000), [(152, 256), (76, 128), (38, 64), (19, 32)]),
           (IMG, SHAPES)]
  for image_size, shapes in cases:
    feats = [torch.zeros(1, 1, h, w) for h, w in shapes]
    scales, mapper = _setup_scales(feats, [image_size], 224, 4)
    assert M.infer_scales_tv(shapes, image_size) == tuple(scales)
    assert M.level_bounds_tv(scales) == (mapper.k_min, mapper.k_max) == (2, 5)


def test_level_thresholds_equal_torchvision_level_mapper():
  """Every float32 area within +-2000 ulps of each level boundary, and a
  broad sweep, lands on torchvision's level, except where torch's float32
  sqrt is not correctly rounded (MKL's vector sqrt on some CPUs) and that
  moves the level: at most a few values (one, 200703.66, on the AMD EPYC
  this was written on)."""
  torch = pytest.importorskip("torch")
  from torchvision.ops.poolers import LevelMapper
  thr = M.level_area_thresholds_tv(2, 5)
  np.testing.assert_allclose(np.sqrt(thr), [112, 224, 448], rtol=1e-6)
  bits = (thr.view(np.int32)[:, None]
          + np.arange(-2000, 2000, dtype=np.int32)).ravel()
  rng = np.random.default_rng(0)
  areas = np.concatenate([bits.view(F32), np.exp(rng.uniform(-8, 16, 20000)),
                          [0, np.inf]]).astype(F32)
  boxes = np.zeros((len(areas), 4), F32)
  boxes[:, 2], boxes[:, 3] = 1, areas
  ref = LevelMapper(2, 5)([torch.tensor(boxes)]).numpy()
  out = np.asarray(M.map_levels_tv(jnp.asarray(boxes), 2, 5))
  ieee = torch.sqrt(torch.tensor(areas)).numpy() == np.sqrt(areas)
  wrong = np.flatnonzero(out != ref)
  assert len(wrong) <= 3, areas[wrong]
  assert not ieee[wrong].any(), areas[wrong]  # only where torch's sqrt is off
  # The level moves up exactly at each threshold.
  below = np.nextafter(thr, F32(0))
  lv = M.map_levels_tv(jnp.asarray(np.stack(
      [np.zeros(6), np.zeros(6), np.ones(6), np.concatenate([below, thr])],
      1).astype(F32)), 2, 5)
  np.testing.assert_array_equal(lv, [0, 1, 2, 1, 2, 3])


def test_map_levels_negative_and_nan_area():
  boxes = jnp.array([[0, 0, 10, 10], [10, 0, 0, 10], [10, 10, 0, 0],
                     [0, 0, np.nan, 5], [0, 0, 1000, 1000]], jnp.float32)
  np.testing.assert_array_equal(M.map_levels_tv(boxes, 2, 5), [0, -1, 0, -1, 3])


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------

def test_forward_equals_torchvision(rng):
  feats = make_features(rng)
  rois = make_rois(rng)
  assert levels_used(rois) == {0, 1, 2, 3}
  ref = tv_multiscale(feats, rois)
  out = np.asarray(multiscale_roi_align(feats, rois, IMG))
  assert out.shape == (len(rois), 7, 7, C) and out.dtype == np.float32
  scale = max(np.abs(f).max() for f in feats)
  assert np.abs(out - ref).max() < 1e-4 * scale
  # No level (negative area) and wholly outside: zeros; the other
  # degenerate RoIs are pooled.
  peak = np.abs(ref).reshape(len(rois), -1).max(1)
  assert peak[3] == 0 and peak[4] == 0
  assert (peak[[0, 1, 2, 5, 6, 7, 8]] > 0).all()
  assert (peak > 0).sum() > 0.6 * len(rois)


def test_forward_equals_numpy_reference(rng):
  feats = make_features(rng)
  rois = make_rois(rng, 48)
  assert levels_used(rois) == {0, 1, 2, 3}
  ref = np_multiscale(feats, rois)
  out = np.asarray(jax.jit(lambda f, r: multiscale_roi_align(f, r, IMG))(
      feats, rois))
  np.testing.assert_allclose(out, ref, atol=2e-5)


def test_single_level_is_plain_roi_align(rng):
  """One level: torchvision skips the mapper, negative areas included."""
  feats = make_features(rng, SHAPES[:1])
  rois = make_rois(rng, 30)
  out = np.asarray(multiscale_roi_align(feats, rois, IMG))
  ref = np.stack([np_roi_align_one(feats[0], b, 0.25) for b in rois])
  np.testing.assert_allclose(out, ref, atol=2e-5)
  assert np.abs(out[3]).max() > 0
  try:
    tv = tv_multiscale(feats, rois, names=("0",))
  except pytest.skip.Exception:
    return
  np.testing.assert_allclose(out, tv, atol=1e-5)


def test_matches_single_level_op_when_all_rois_on_p2(rng):
  """Small RoIs all map to P2: the same as ops.roi_align on that map."""
  from ops.roi_align import roi_align
  feats = make_features(rng)
  xy = rng.uniform(0, 150, (40, 2))
  rois = np.concatenate([xy, xy + rng.uniform(1, 100, (40, 2))], 1).astype(F32)
  assert levels_used(rois) == {0}
  out = multiscale_roi_align(feats, rois, IMG)
  ref = roi_align(jnp.asarray(feats[0]), jnp.asarray(rois), 7, 0.25, 2)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_scales_argument_and_bfloat16(rng):
  feats = make_features(rng)
  rois = make_rois(rng, 40)
  ref = multiscale_roi_align(feats, rois, IMG)
  out = multiscale_roi_align(feats, rois, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32))
  np.testing.assert_array_equal(out, ref)
  # Any image size that rounds to the same scales (here the unpadded size).
  np.testing.assert_array_equal(multiscale_roi_align(feats, rois, (120, 181)),
                                ref)
  bf = multiscale_roi_align([f.astype(jnp.bfloat16) for f in feats], rois, IMG)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, F32), ref, atol=0.05)
  with pytest.raises(ValueError):
    multiscale_roi_align([feats[0], feats[2]], rois, IMG)  # not consecutive
  with pytest.raises(ValueError):
    multiscale_roi_align(feats, rois, IMG, sampling_ratio=0)
  assert multiscale_roi_align(feats, rois[:0], IMG).shape == (0, 7, 7, C)


# ----------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------

def test_gradients_equal_torch_autograd(rng):
  torch = pytest.importorskip("torch")
  from collections import OrderedDict
  from torchvision.ops import MultiScaleRoIAlign
  feats = make_features(rng)
  rois = make_rois(rng)
  g = rng.normal(size=(len(rois), 7, 7, C)).astype(F32)
  x = OrderedDict((str(i), torch.tensor(f.transpose(2, 0, 1)[None],
                                        requires_grad=True))
                  for i, f in enumerate(feats))
  out = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
      x, [torch.tensor(rois)], [IMG])
  out.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
  grads = jax.jit(jax.grad(
      lambda f: (multiscale_roi_align(f, rois, IMG) * g).sum()))(feats)
  for lv, (gj, t) in enumerate(zip(grads, x.values())):
    ref = t.grad.numpy()[0].transpose(1, 2, 0)
    assert np.abs(ref).max() > 0, f"level {lv} got no gradient in torch"
    assert gj.shape == feats[lv].shape
    np.testing.assert_allclose(gj, ref, atol=1e-4 * np.abs(ref).max(),
                               err_msg=f"level {lv}")


def test_gradient_is_the_adjoint(rng):
  """<op(F'), g> == <grad_F <op(F), g>, F'> for random F' (a linear op)."""
  feats = make_features(rng)
  rois = make_rois(rng, 64)
  g = rng.normal(size=(64, 7, 7, C)).astype(F32)
  f2 = make_features(rng)
  op = lambda f: multiscale_roi_align(f, rois, IMG)
  grads = jax.grad(lambda f: (op(f) * g).sum())(feats)
  lhs = float((np.asarray(op(f2), np.float64) * g).sum())
  rhs = sum(float((np.asarray(a, np.float64) * b).sum())
            for a, b in zip(grads, f2))
  assert lhs == pytest.approx(rhs, rel=1e-5)
  # Every level receives gradient, and the RoIs none.
  assert all(np.abs(np.asarray(a)).max() > 0 for a in grads)
  d_rois = jax.grad(lambda r: (multiscale_roi_align(feats, r, IMG) * g).sum())(
      jnp.asarray(rois))
  np.testing.assert_array_equal(d_rois, 0)


# ----------------------------------------------------------------------------
# jit, vmap, padding.
# ----------------------------------------------------------------------------

def test_jit_equals_eager(rng):
  feats = make_features(rng)
  rois = make_rois(rng, 40)
  eager = multiscale_roi_align(feats, rois, IMG)
  jitted = jax.jit(lambda f, r: multiscale_roi_align(f, r, IMG))(feats, rois)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def test_vmap_over_images(rng):
  feats = make_features(rng, lead=(2,))
  rois = np.stack([make_rois(rng, 40), make_rois(rng, 40)])
  valid = rng.random((2, 40)) < 0.8
  g = rng.normal(size=(2, 40, 7, 7, C)).astype(F32)
  op = lambda f, r, v: multiscale_roi_align(f, r, IMG, v)
  out = jax.jit(jax.vmap(op))(feats, rois, valid)
  grads = jax.grad(lambda f: (jax.vmap(op)(f, rois, valid) * g).sum())(feats)
  for b in range(2):
    fb = [f[b] for f in feats]
    np.testing.assert_allclose(out[b], op(fb, rois[b], valid[b]), rtol=1e-5,
                               atol=1e-5)
    gb = jax.grad(lambda f: (op(f, rois[b], valid[b]) * g[b]).sum())(fb)
    for a, c in zip(grads, gb):
      np.testing.assert_allclose(a[b], c, rtol=1e-5, atol=1e-4)


def test_padded_rois_give_zeros_and_no_gradient(rng):
  feats = make_features(rng)
  rois = make_rois(rng, 40)
  valid = np.arange(40) < 25
  op = lambda f: multiscale_roi_align(f, rois, IMG, valid)
  out = np.asarray(op(feats))
  np.testing.assert_array_equal(out[25:], 0)
  np.testing.assert_allclose(out[:25], multiscale_roi_align(
      feats, rois[:25], IMG), rtol=1e-6, atol=1e-6)
  # A cotangent on the padded rows only: no gradient anywhere.
  g = rng.normal(size=out.shape).astype(F32)
  g[:25] = 0
  for d in jax.grad(lambda f: (op(f) * g).sum())(feats):
    np.testing.assert_array_equal(d, 0)
  # Non-finite RoIs behave as padding.
  bad = rois.copy()
  bad[0, 2] = np.nan
  bad[1, 0] = -np.inf
  np.testing.assert_array_equal(multiscale_roi_align(feats, bad, IMG)[:2], 0)
