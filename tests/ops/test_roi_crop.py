"""ops/roi_crop.py against PyTorch: F.affine_grid + F.grid_sample (+ max_pool2d)
with the grid built exactly as the seed's `_affine_grid_gen` builds it
(align_corners=True, the seed's PyTorch default), forward and gradient w.r.t.
the features; hand-computed cases; jit, vmap.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ops.roi_crop import crop_grid, roi_crop

H, W, C = 9, 12, 3          # not square; 144 x 192 input pixels at stride 16
IMG_H, IMG_W = 16 * H, 16 * W


def torch_seed_crop(feat, rois, pooling_size=7, max_pool=True):
  """The seed's crop path in PyTorch. feat [H,W,C], rois [R,4] (network-input
  pixels) -> (out [R,oh,ow,C] numpy, the torch feature tensor, the output)."""
  f = torch.tensor(np.ascontiguousarray(feat.transpose(2, 0, 1))[None],
                   requires_grad=True)                       # [1,C,H,W]
  r = torch.tensor(rois)
  height, width = f.shape[2], f.shape[3]
  grid_size = pooling_size * 2 if max_pool else pooling_size
  # _affine_grid_gen (rois here without the batch-index column).
  x1 = r[:, 0::4] / 16.0
  y1 = r[:, 1::4] / 16.0
  x2 = r[:, 2::4] / 16.0
  y2 = r[:, 3::4] / 16.0
  zero = torch.zeros(r.shape[0], 1)
  theta = torch.cat([
      (x2 - x1) / (width - 1), zero, (x1 + x2 - width + 1) / (width - 1),
      zero, (y2 - y1) / (height - 1), (y1 + y2 - height + 1) / (height - 1),
  ], 1).view(-1, 2, 3)
  grid = F.affine_grid(theta, torch.Size((r.shape[0], 1, grid_size, grid_size)),
                       align_corners=True).detach()
  # RCNN_roi_crop == grid_sample (bilinear, zeros, align_corners=True); every
  # RoI samples the one image.
  crops = F.grid_sample(f.expand(r.shape[0], -1, -1, -1), grid,
                        mode="bilinear", padding_mode="zeros",
                        align_corners=True)
  if max_pool:
    crops = F.max_pool2d(crops, 2, 2)
  return crops.detach().numpy().transpose(0, 2, 3, 1), f, crops


def make_rois(rng):
  """RoIs inside, partly outside, wholly outside, degenerate and mirrored."""
  def boxes(n, lo_x, hi_x, lo_y, hi_y, wmax):
    x = rng.uniform(lo_x, hi_x, n)
    y = rng.uniform(lo_y, hi_y, n)
    w = rng.uniform(1, wmax, n)
    h = rng.uniform(1, wmax, n)
    return np.stack([x, y, x + w, y + h], 1)
  inside = boxes(12, 0, IMG_W - 80, 0, IMG_H - 80, 80)
  partly = boxes(8, -60, IMG_W, -60, IMG_H, 150)
  outside = np.array([[-200, -200, -50, -40], [IMG_W + 20, 0, IMG_W + 90, 50]])
  degenerate = np.array([
      [40, 30, 40, 30],          # a point
      [40, 30, 40, 100],         # a vertical line
      [10, 50, 90, 50],          # a horizontal line
      [0, 0, IMG_W - 16, IMG_H - 16],   # exactly the corner pixels of the map
      [16, 16, 16, 16],          # a point on a feature pixel
      [90, 80, 30, 20],          # mirrored (x2 < x1, y2 < y1)
  ])
  return np.concatenate([inside, partly, outside, degenerate]).astype(
      np.float32)


@pytest.fixture
def case(rng):
  feat = rng.normal(size=(H, W, C)).astype(np.float32)
  return feat, make_rois(rng)


@pytest.mark.parametrize("max_pool", [True, False])
def test_forward_matches_torch(case, max_pool):
  feat, rois = case
  ref, _, _ = torch_seed_crop(feat, rois, 7, max_pool)
  out = np.asarray(roi_crop(jnp.asarray(feat), jnp.asarray(rois), 7, 1 / 16,
                            max_pool))
  assert out.shape == (len(rois), 7, 7, C) == ref.shape
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
  # The test is not vacuous: most RoIs see non-zero features, the wholly
  # outside ones exactly zero.
  assert (np.abs(out).reshape(len(rois), -1).max(1) > 0.1).sum() >= 20
  np.testing.assert_array_equal(out[20:22], 0)


@pytest.mark.parametrize("max_pool", [True, False])
def test_gradient_matches_torch(case, rng, max_pool):
  feat, rois = case
  _, f, crops = torch_seed_crop(feat, rois, 7, max_pool)
  cot = rng.normal(size=crops.shape).astype(np.float32)      # [R,C,oh,ow]
  (g_ref,) = torch.autograd.grad(crops, f, torch.tensor(cot))
  g_ref = g_ref[0].numpy().transpose(1, 2, 0)                # [H,W,C]
  cot_j = jnp.asarray(cot.transpose(0, 2, 3, 1))
  loss = lambda x: jnp.sum(roi_crop(x, jnp.asarray(rois), 7, 1 / 16,
                                    max_pool) * cot_j)
  g = np.asarray(jax.grad(loss)(jnp.asarray(feat)))
  assert np.abs(g_ref).max() > 1.0
  np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-5)


def test_no_gradient_to_rois(case):
  feat, rois = case
  g = jax.grad(lambda r: roi_crop(jnp.asarray(feat), r).sum())(
      jnp.asarray(rois))
  np.testing.assert_array_equal(g, 0)


def test_hand_values():
  # f[y, x] = 100 y + x is reproduced exactly by bilinear sampling inside the
  # map, so each sample equals 100 * y + x at its grid point.
  feat = (100.0 * np.arange(H)[:, None] + np.arange(W)[None, :])[..., None]
  feat = jnp.asarray(feat, jnp.float32)
  # RoI covering feature pixels x 1..4, y 2..8: samples at x = 1 + 3j/6.
  rois = jnp.array([[16, 32, 64, 128]], jnp.float32)
  out = roi_crop(feat, rois, 7, 1 / 16, max_pool=False)[0, ..., 0]
  xs = 1 + 3 * np.arange(7) / 6
  ys = 2 + 6 * np.arange(7) / 6
  np.testing.assert_allclose(out, 100 * ys[:, None] + xs[None, :], atol=1e-4)
  # With max pooling the grid is 14 x 14 and the max of each 2x2 window is
  # its bottom-right sample (f increases in x and y).
  out = roi_crop(feat, rois, 7, 1 / 16)[0, ..., 0]
  xs = 1 + 3 * np.arange(14) / 13
  ys = 2 + 6 * np.arange(14) / 13
  np.testing.assert_allclose(out, 100 * ys[1::2, None] + xs[None, 1::2],
                             atol=1e-4)
  # Half outside: a RoI from x = -1 to x = 1 (feature pixels) samples x = -1
  # (0: both corners out), -2/3 and -1/3 (only the right corner in: weight
  # 1/3, 2/3), 0, 1/3, 2/3, 1 (inside).
  rois = jnp.array([[-16, 0, 16, 0]], jnp.float32)
  out = roi_crop(jnp.ones((H, W, 1)), rois, 7, 1 / 16, max_pool=False)
  np.testing.assert_allclose(out[0, 0, :, 0], [0, 1 / 3, 2 / 3, 1, 1, 1, 1],
                             atol=1e-6)


def test_crop_grid_spans_roi_corners(rng):
  rois = make_rois(rng)[:12]
  ys, xs = crop_grid(jnp.asarray(rois), H, W, 14)
  np.testing.assert_allclose(xs[:, 0], rois[:, 0] / 16, atol=1e-5)
  np.testing.assert_allclose(xs[:, -1], rois[:, 2] / 16, atol=1e-5)
  np.testing.assert_allclose(ys[:, 0], rois[:, 1] / 16, atol=1e-5)
  np.testing.assert_allclose(ys[:, -1], rois[:, 3] / 16, atol=1e-5)
  np.testing.assert_allclose(np.diff(xs, axis=1),
                             np.broadcast_to((rois[:, 2:3] - rois[:, 0:1])
                                             / 16 / 13, (12, 13)), atol=1e-5)


def test_nonfinite_rois_give_zeros():
  rois = jnp.array([[np.nan, 0, 32, 32], [0, 0, np.inf, 32],
                    [-np.inf, -np.inf, np.inf, np.inf]], jnp.float32)
  out = np.asarray(roi_crop(jnp.ones((H, W, 2)), rois))
  np.testing.assert_array_equal(out, 0)


def test_bad_sizes_raise():
  with pytest.raises(ValueError):
    roi_crop(jnp.ones((1, W, 2)), jnp.zeros((1, 4)))
  with pytest.raises(ValueError):
    roi_crop(jnp.ones((H, W, 2)), jnp.zeros((1, 4)), output_size=(7, 7, 7))


def test_jit_equals_eager_and_vmap(rng):
  feats = rng.normal(size=(2, H, W, C)).astype(np.float32)
  rois = np.stack([make_rois(rng), make_rois(rng)])
  f = lambda x, r: roi_crop(x, r, (7, 5))
  eager = np.stack([f(jnp.asarray(a), jnp.asarray(b))
                    for a, b in zip(feats, rois)])
  assert eager.shape == (2, rois.shape[1], 7, 5, C)
  # Equal up to float32 rounding: under jit, XLA:CPU contracts the grid's
  # theta00 * x_n + theta02 into a fused multiply-add (1 ulp of the grid).
  np.testing.assert_allclose(jax.jit(f)(feats[0], rois[0]), eager[0],
                             rtol=0, atol=4e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(feats, rois), eager,
                             rtol=0, atol=4e-6)
  # Gradients under jit + vmap equal the per-image eager gradients.
  gf = jax.grad(lambda x, r: jnp.sum(f(x, r) ** 2))
  g_eager = np.stack([gf(jnp.asarray(a), jnp.asarray(b))
                      for a, b in zip(feats, rois)])
  # (Sums of up to 4 * 14 * 14 * R terms, in another order: tolerance
  # relative to the largest entry, ~100 at the degenerate RoIs' points.)
  np.testing.assert_allclose(jax.jit(jax.vmap(gf))(feats, rois), g_eager,
                             rtol=0, atol=2e-6 * np.abs(g_eager).max())


def test_max_pool_ties_and_nan_follow_torch(rng):
  # Ties (small integers) and NaNs: same values as torch's max_pool2d and the
  # gradient on the element torch's argmax picks (first maximum, last NaN).
  from ops.roi_crop import _max_pool_2x2
  x = rng.integers(0, 3, (5, 6, 4, 2)).astype(np.float32)     # [R,2a,2b,C]
  x[0, 0, 0, 0] = x[1, 3, 2, 1] = x[1, 2, 3, 1] = np.nan
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  yt = F.max_pool2d(xt, 2, 2)
  cot = rng.normal(size=yt.shape).astype(np.float32)
  (gt,) = torch.autograd.grad(yt, xt, torch.tensor(cot))
  y, vjp = jax.vjp(_max_pool_2x2, jnp.asarray(x))
  (g,) = vjp(jnp.asarray(cot.transpose(0, 2, 3, 1)))
  np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(g, gt.numpy().transpose(0, 2, 3, 1))


def test_valid_size_crops_as_the_unpadded_map(rng):
  """The seed's grid depends on the map size; valid_size gives the crop of
  an image's own map placed on a larger, zero-padded canvas."""
  h, w, c = 10, 14, 4
  feat = rng.normal(size=(h, w, c)).astype(np.float32)
  canvas = np.zeros((18, 24, c), np.float32)
  canvas[:h, :w] = feat
  rois = np.array([[0, 0, 223, 159], [100, 40, 260, 200], [180, 120, 300, 190],
                   [20, 30, 90, 100]], np.float32)
  want, _, _ = torch_seed_crop(feat, rois)
  got = roi_crop(jnp.asarray(canvas), jnp.asarray(rois), valid_size=(h, w))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  traced = jax.jit(lambda f, r, e: roi_crop(f, r, valid_size=e))(
      jnp.asarray(canvas), jnp.asarray(rois), jnp.asarray([h, w]))
  np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-5, atol=1e-5)
