"""ops.boxes against plain NumPy transcriptions of the seed's formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import boxes as B


def np_bbox_overlaps(a, b):
  """The seed's bbox_overlaps (utils/cython_bbox), one pair at a time."""
  out = np.zeros((len(a), len(b)), np.float64)
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = min(p[2], q[2]) - max(p[0], q[0]) + 1
      ih = min(p[3], q[3]) - max(p[1], q[1]) + 1
      if iw > 0 and ih > 0:
        ua = ((p[2] - p[0] + 1) * (p[3] - p[1] + 1) +
              (q[2] - q[0] + 1) * (q[3] - q[1] + 1) - iw * ih)
        out[i, j] = iw * ih / ua
  return out


def np_bbox_transform(ex_rois, gt_rois):
  """The seed's bbox_transform."""
  ex_w = ex_rois[:, 2] - ex_rois[:, 0] + 1.0
  ex_h = ex_rois[:, 3] - ex_rois[:, 1] + 1.0
  ex_x = ex_rois[:, 0] + 0.5 * ex_w
  ex_y = ex_rois[:, 1] + 0.5 * ex_h
  gt_w = gt_rois[:, 2] - gt_rois[:, 0] + 1.0
  gt_h = gt_rois[:, 3] - gt_rois[:, 1] + 1.0
  gt_x = gt_rois[:, 0] + 0.5 * gt_w
  gt_y = gt_rois[:, 1] + 0.5 * gt_h
  return np.stack([(gt_x - ex_x) / ex_w, (gt_y - ex_y) / ex_h,
                   np.log(gt_w / ex_w), np.log(gt_h / ex_h)], 1)


def np_bbox_transform_inv(boxes, deltas):
  """The seed's bbox_transform_inv (from the seed text), unbatched."""
  widths = boxes[:, 2] - boxes[:, 0] + 1.0
  heights = boxes[:, 3] - boxes[:, 1] + 1.0
  ctr_x = boxes[:, 0] + 0.5 * widths
  ctr_y = boxes[:, 1] + 0.5 * heights
  dx, dy, dw, dh = deltas.T
  pcx = dx * widths + ctr_x
  pcy = dy * heights + ctr_y
  pw = np.exp(dw) * widths
  ph = np.exp(dh) * heights
  return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph,
                   pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


def random_boxes(rng, n, size=200.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh - 1], 1).astype(np.float32)


def test_area_hand_values():
  b = jnp.array([[0, 0, 9, 9], [0, 0, 0, 0], [5, 5, 3, 9], [0, 0, 4, 1]],
                jnp.float32)
  np.testing.assert_array_equal(B.area(b), [100, 1, 0, 10])


def test_iou_hand_value_and_reference(rng):
  a = jnp.array([[0, 0, 9, 9]], jnp.float32)
  b = jnp.array([[5, 0, 14, 9], [10, 10, 20, 20], [0, 0, 9, 9]], jnp.float32)
  np.testing.assert_allclose(B.iou(a, b), [[50 / 150, 0, 1]], rtol=1e-6)
  x = random_boxes(rng, 40)
  y = random_boxes(rng, 30)
  np.testing.assert_allclose(B.iou(x, y), np_bbox_overlaps(x, y), atol=1e-6)


def test_iou_bad_input_is_zero_not_nan():
  good = jnp.array([[0, 0, 9, 9]], jnp.float32)
  bad = jnp.array([[np.nan, 0, 9, 9], [0, 0, np.inf, np.inf],
                   [9, 9, 0, 0], [-np.inf, -np.inf, np.inf, np.inf]],
                  jnp.float32)
  out = np.asarray(B.iou(good, bad))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out, 0)
  assert np.all(np.isfinite(np.asarray(B.iou(bad, bad))))


def test_clip():
  b = jnp.array([[-5, -3, 700, 20], [np.nan, np.inf, -np.inf, 3]], jnp.float32)
  out = B.clip(b, 100, 600)
  np.testing.assert_array_equal(out, [[0, 0, 599, 20], [0, 99, 0, 3]])
  # Traced sizes and broadcasting over a batch of images.
  hw = jnp.array([[100, 600], [50, 60]], jnp.float32)
  out = jax.jit(jax.vmap(B.clip))(jnp.stack([b, b]), hw[:, 0], hw[:, 1])
  np.testing.assert_array_equal(out[1], [[0, 0, 59, 20], [0, 49, 0, 3]])


def test_encode_matches_seed(rng):
  ex = random_boxes(rng, 50)
  gt = random_boxes(rng, 50)
  np.testing.assert_allclose(B.encode(gt, ex), np_bbox_transform(ex, gt),
                             rtol=1e-5, atol=1e-5)
  stds = (0.1, 0.1, 0.2, 0.2)
  np.testing.assert_allclose(B.encode(gt, ex, stds),
                             np_bbox_transform(ex, gt) / np.array(stds),
                             rtol=1e-5, atol=1e-4)


def test_decode_matches_seed_up_to_inclusive_correction(rng):
  anchors = random_boxes(rng, 50)
  deltas = rng.normal(0, 0.5, (50, 4)).astype(np.float32)
  ref = np_bbox_transform_inv(anchors, deltas)
  ref[:, 2:] -= 1.0  # documented: x2/y2 in the inclusive convention
  np.testing.assert_allclose(B.decode(deltas, anchors), ref, rtol=1e-5,
                             atol=1e-3)
  # Zero deltas give back the anchor itself.
  np.testing.assert_allclose(B.decode(jnp.zeros_like(deltas), anchors),
                             anchors, atol=1e-4)


@pytest.mark.parametrize("stds", [(1, 1, 1, 1), (0.1, 0.1, 0.2, 0.2)])
def test_round_trip(rng, stds):
  anchors = random_boxes(rng, 100)
  b = random_boxes(rng, 100)
  d = B.encode(b, anchors, stds)
  np.testing.assert_allclose(B.decode(d, anchors, stds), b, rtol=1e-5,
                             atol=2e-3)


def test_decode_clamps_wild_deltas():
  a = jnp.array([[0, 0, 15, 15]] * 3, jnp.float32)
  d = jnp.array([[0, 0, 1e4, 1e4], [0, 0, np.inf, -np.inf],
                 [0, 0, 100.0, 0]], jnp.float32)
  out = np.asarray(B.decode(d, a))
  assert np.all(np.isfinite(out))
  w = out[:, 2] - out[:, 0] + 1
  np.testing.assert_allclose(w, 16 * 1000 / 16, rtol=1e-5)
  assert out[1, 3] - out[1, 1] + 1 == pytest.approx(0.0)  # empty box
  assert B.BBOX_XFORM_CLIP == pytest.approx(math.log(1000 / 16))


def test_encode_degenerate_is_finite():
  a = jnp.array([[0, 0, 15, 15], [5, 5, 3, 3]], jnp.float32)
  b = jnp.array([[9, 9, 3, 3], [0, 0, 15, 15]], jnp.float32)
  assert np.all(np.isfinite(np.asarray(B.encode(b, a))))


def test_jit_and_vmap_equal_eager(rng):
  a = random_boxes(rng, 20)
  b = random_boxes(rng, 20)
  for f in (B.iou, lambda x, y: B.encode(x, y, (0.1, 0.1, 0.2, 0.2)),
            lambda x, y: B.decode(x / 100, y), B.area):
    args = (a, b) if f is not B.area else (a,)
    # XLA fuses exp/log differently under jit: equal to float32 rounding.
    np.testing.assert_allclose(jax.jit(f)(*args), f(*args), rtol=1e-5)
  batched = jax.vmap(B.iou)(jnp.stack([a, b]), jnp.stack([b, a]))
  np.testing.assert_allclose(batched[1], B.iou(b, a))


def np_bbox_transform_inv_f32(boxes, deltas):
  """The seed's bbox_transform_inv, float32 throughout, in its operation order
  (the torch code of the seed analysis, lines ~661-700, unbatched)."""
  boxes = boxes.astype(np.float32)
  deltas = deltas.astype(np.float32)
  one, half = np.float32(1.0), np.float32(0.5)
  widths = boxes[:, 2] - boxes[:, 0] + one
  heights = boxes[:, 3] - boxes[:, 1] + one
  ctr_x = boxes[:, 0] + half * widths
  ctr_y = boxes[:, 1] + half * heights
  pred_ctr_x = deltas[:, 0] * widths + ctr_x
  pred_ctr_y = deltas[:, 1] * heights + ctr_y
  pred_w = np.exp(deltas[:, 2]) * widths
  pred_h = np.exp(deltas[:, 3]) * heights
  return np.stack([pred_ctr_x - half * pred_w, pred_ctr_y - half * pred_h,
                   pred_ctr_x + half * pred_w, pred_ctr_y + half * pred_h], 1)


@pytest.mark.parametrize("stds", [(1, 1, 1, 1), (0.1, 0.1, 0.2, 0.2)])
def test_decode_seed_style_matches_seed(rng, stds):
  anchors = random_boxes(rng, 500, size=1000.0)
  deltas = rng.normal(0, 1.0, (500, 4)).astype(np.float32)
  ref = np_bbox_transform_inv_f32(anchors,
                                  deltas * np.asarray(stds, np.float32))
  out = np.asarray(B.decode(deltas, anchors, stds, style="seed"))
  # float32 reference in the same order: equal up to exp() rounding.
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-4)
  # The float64 transcription too, and "seed" is "exact" + 1 on x2/y2 only.
  np.testing.assert_allclose(
      out, np_bbox_transform_inv(anchors.astype(np.float64),
                                 deltas * np.asarray(stds)),
      rtol=1e-5, atol=1e-3)
  exact = np.asarray(B.decode(deltas, anchors, stds))
  np.testing.assert_array_equal(out[:, :2], exact[:, :2])
  np.testing.assert_allclose(out[:, 2:] - exact[:, 2:], 1.0, atol=1e-3)


def test_decode_seed_style_hand_values():
  # Zero deltas: the seed's anchor grows by one pixel on x2/y2.
  a = jnp.array([[-84, -40, 99, 55], [0, 0, 15, 15]], jnp.float32)
  out = B.decode(jnp.zeros((2, 4)), a, style="seed")
  np.testing.assert_array_equal(out, [[-84, -40, 100, 56], [0, 0, 16, 16]])
  # dx = 0.5 on a 16-px box shifts by 8; dw = log 2 doubles the width.
  d = jnp.array([[0.5, 0, math.log(2.0), 0]], jnp.float32)
  out = B.decode(d, a[1:], style="seed")
  np.testing.assert_allclose(out, [[0, 0, 32, 16]], atol=1e-5)
  np.testing.assert_allclose(B.decode(d, a[1:]), [[0, 0, 31, 15]], atol=1e-5)


def test_decode_seed_style_clamps_like_exact():
  a = jnp.array([[0, 0, 15, 15]] * 2, jnp.float32)
  d = jnp.array([[0, 0, 1e4, -np.inf], [0, 0, 100.0, 0]], jnp.float32)
  out = np.asarray(B.decode(d, a, style="seed"))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[:, 2] - out[:, 0], 1000.0, rtol=1e-5)
  np.testing.assert_allclose(out, np.asarray(B.decode(d, a)) + [0, 0, 1, 1])


def test_decode_unknown_style_raises():
  a = jnp.zeros((1, 4))
  with pytest.raises(ValueError, match="style"):
    B.decode(a, a, style="detectron")
  with pytest.raises(TypeError):
    B.decode(a, a, (1, 1, 1, 1), "seed")  # style is keyword-only


def test_decode_seed_style_jit_vmap(rng):
  anchors = random_boxes(rng, 20)
  deltas = rng.normal(0, 0.5, (2, 20, 4)).astype(np.float32)
  f = lambda d, a: B.decode(d, a, (0.1, 0.1, 0.2, 0.2), style="seed")
  eager = np.stack([f(d, anchors) for d in deltas])
  np.testing.assert_allclose(jax.jit(jax.vmap(f, (0, None)))(deltas, anchors),
                             eager, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------------------------
# COCO format conversion (host side)
# ---------------------------------------------------------------------------


def test_xywh_round_trip(rng):
  xywh = np.concatenate([rng.uniform(0, 500, (50, 2)),
                         rng.uniform(1, 300, (50, 2))], axis=1)
  xyxy = B.xywh_to_xyxy(xywh)
  np.testing.assert_allclose(xyxy[:, 2], xywh[:, 0] + xywh[:, 2] - 1)
  np.testing.assert_allclose(B.xyxy_to_xywh(xyxy), xywh, rtol=0, atol=1e-9)
  # The seed's convention: a one-pixel box [5, 5, 5, 5] has w = h = 1.
  np.testing.assert_array_equal(B.xyxy_to_xywh([5, 7, 5, 7]), [5, 7, 1, 1])


def test_xyxy_to_xywh_clamps_inverted():
  np.testing.assert_array_equal(B.xyxy_to_xywh([10, 10, 3, 20]), [10, 10, 0, 11])


# ===========================================================================
# torchvision convention (*_tv functions, FPN models), against torchvision's
# own BoxCoder and box ops. Separate block: keep other tests above it.
# ===========================================================================

def _tv_random_boxes(rng, n, size=800.0, min_wh=1.0):
  xy = rng.uniform(-50, size, (n, 2))
  wh = rng.uniform(min_wh, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("weights", [B.RPN_WEIGHTS_TV, B.BOX_HEAD_WEIGHTS_TV])
def test_encode_tv_equals_torchvision(rng, weights):
  torch = pytest.importorskip("torch")
  from torchvision.models.detection._utils import BoxCoder
  anchors = _tv_random_boxes(rng, 300)
  boxes = _tv_random_boxes(rng, 300)
  ref = BoxCoder(weights).encode_single(torch.from_numpy(boxes),
                                        torch.from_numpy(anchors)).numpy()
  out = np.asarray(B.encode_tv(boxes, anchors, weights))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(B.encode_tv, static_argnums=2)(
      boxes, anchors, weights), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weights", [B.RPN_WEIGHTS_TV, B.BOX_HEAD_WEIGHTS_TV])
def test_decode_tv_equals_torchvision(rng, weights):
  torch = pytest.importorskip("torch")
  from torchvision.models.detection._utils import BoxCoder
  anchors = _tv_random_boxes(rng, 300)
  deltas = rng.normal(0, 1, (300, 4)).astype(np.float32) * np.float32(
      weights[0] / 4)
  deltas[:5, 2:] = [[50, 1e4], [-50, 30], [np.inf, 0], [0, -np.inf], [8, 8]]
  coder = BoxCoder(weights)
  ref = coder.decode_single(torch.from_numpy(deltas),
                            torch.from_numpy(anchors)).numpy()
  assert np.isfinite(ref).all()  # the clamp at log(1000/16) is exercised
  out = np.asarray(B.decode_tv(deltas, anchors, weights))
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(jax.jit(B.decode_tv, static_argnums=2)(
      deltas, anchors, weights), ref, rtol=1e-6, atol=1e-4)
  # torchvision's per-class layout: codes [N, K*4] against boxes [N, 4].
  codes = rng.normal(0, 1, (40, 3 * 4)).astype(np.float32)
  ref = coder.decode_single(torch.from_numpy(codes),
                            torch.from_numpy(anchors[:40])).numpy()
  out = B.decode_tv(codes.reshape(40, 3, 4), anchors[:40, None], weights)
  np.testing.assert_allclose(np.asarray(out).reshape(40, 12), ref, rtol=1e-6,
                             atol=1e-4)


def test_decode_tv_inverts_encode_tv_and_hand_value(rng):
  # Sizes within a factor 62.5 of each other (beyond, decode clamps dw/dh).
  anchors = _tv_random_boxes(rng, 100, min_wh=20.0)
  boxes = _tv_random_boxes(rng, 100, min_wh=20.0)
  for w in (B.RPN_WEIGHTS_TV, B.BOX_HEAD_WEIGHTS_TV):
    d = B.encode_tv(boxes, anchors, w)
    np.testing.assert_allclose(B.decode_tv(d, anchors, w), boxes, rtol=1e-5,
                               atol=1e-3)
  # No +1 / -1: a 10x20 anchor at (0, 0); dx = 0.5 shifts by 5 px; dw = log 2
  # doubles the width around the centre (5, 10).
  a = jnp.array([[0, 0, 10, 20]], jnp.float32)
  d = jnp.array([[0.5, 0, math.log(2), 0]], jnp.float32)
  np.testing.assert_allclose(B.decode_tv(d, a, B.RPN_WEIGHTS_TV),
                             [[0, 0, 20, 20]], atol=1e-5)
  np.testing.assert_allclose(B.encode_tv(jnp.array([[0, 0, 20, 20.]]), a,
                                         B.BOX_HEAD_WEIGHTS_TV),
                             [[5, 0, 5 * math.log(2), 0]], atol=1e-5)


def test_encode_tv_degenerate_is_finite():
  a = jnp.array([[0, 0, 16, 16], [5, 5, 5, 3], [0, 0, 0, 0]], jnp.float32)
  b = jnp.array([[9, 9, 3, 9], [0, 0, 16, 16], [0, 0, 0, 0]], jnp.float32)
  out = np.asarray(B.encode_tv(b, a, B.BOX_HEAD_WEIGHTS_TV))
  assert np.isfinite(out).all()


def test_clip_tv_and_remove_small_tv_equal_torchvision(rng):
  torch = pytest.importorskip("torch")
  from torchvision.ops import boxes as box_ops
  b = _tv_random_boxes(rng, 200, size=900.0, min_wh=-5.0)
  b[:3] = [[-5, -3, 700, 20], [np.nan, np.inf, -np.inf, 3], [1, 2, 1.5, 2]]
  ref = box_ops.clip_boxes_to_image(torch.from_numpy(b), (600, 800)).numpy()
  out = np.asarray(B.clip_tv(b, 600, 800))
  np.testing.assert_array_equal(out, ref)  # NaN stays NaN in both
  np.testing.assert_array_equal(out[0], [0, 0, 700, 20])
  for min_size in (1e-3, 0.5, 16.0):
    keep = box_ops.remove_small_boxes(torch.tensor(out), min_size).numpy()
    mask = np.asarray(B.remove_small_tv(out, min_size))
    np.testing.assert_array_equal(np.flatnonzero(mask), keep)
  # Traced sizes, vmapped over images.
  hw = jnp.array([[600, 800], [50, 60]], jnp.float32)
  out = jax.jit(jax.vmap(B.clip_tv))(jnp.stack([b, b]), hw[:, 0], hw[:, 1])
  np.testing.assert_array_equal(out[1, 0], [0, 0, 60, 20])


def test_iou_tv_equals_torchvision(rng):
  torch = pytest.importorskip("torch")
  from torchvision.ops import boxes as box_ops
  x = _tv_random_boxes(rng, 40, size=200.0)
  y = _tv_random_boxes(rng, 30, size=200.0)
  ref = box_ops.box_iou(torch.from_numpy(x), torch.from_numpy(y)).numpy()
  np.testing.assert_allclose(B.iou_tv(x, y), ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      B.iou_tv(jnp.array([[0, 0, 10, 10.]]), jnp.array([[5, 0, 15, 10.]])),
      [[50 / 150]], rtol=1e-6)
  # Empty/padded pairs: 0 where torchvision divides 0 by 0.
  z = jnp.zeros((2, 4), jnp.float32)
  np.testing.assert_array_equal(B.iou_tv(z, z), 0)
