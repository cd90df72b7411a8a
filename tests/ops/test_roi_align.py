"""Tests for ops/roi_align.py against plain-numpy references written from
torchvision's roi_align / roi_pool CPU kernel rules (see the op docstrings),
closed-form cases, the adjoint identity and finite differences for the custom
gradients, vmap/jit/sharding properties, and torchvision itself when importable
(run with /work/venv-bench, which has torchvision; skipped otherwise).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.roi_align import roi_align, roi_pool

F32 = np.float32

# One standard setting shared by most tests, so that compiled programs are
# reused (each distinct configuration compiles the tiered op once).
H, W, C = 7, 8, 2        # small (fast to compile: 2 size tiers), not square
SCALE = 1 / 8            # the "image" is 56 x 64 pixels
IMG_H, IMG_W = 8 * H, 8 * W
OUT = (3, 2)
N = 16
CHUNK = 4                # several chunks per tier


# ----------------------------------------------------------------------------
# Plain numpy references (loops; float32 arithmetic in torchvision's order).
# ----------------------------------------------------------------------------

def _bilinear(feat, y, x):
  """One sample of feat [H,W,C] at (y, x), torchvision's boundary rules."""
  h, w = feat.shape[:2]
  if not (y >= -1.0 and y <= h and x >= -1.0 and x <= w):
    return np.zeros(feat.shape[2], np.float64)
  y = max(y, F32(0))
  x = max(x, F32(0))
  y_lo, x_lo = int(y), int(x)
  if y_lo >= h - 1:
    y_lo = y_hi = h - 1
    y = F32(y_lo)
  else:
    y_hi = y_lo + 1
  if x_lo >= w - 1:
    x_lo = x_hi = w - 1
    x = F32(x_lo)
  else:
    x_hi = x_lo + 1
  ly, lx = F32(y - y_lo), F32(x - x_lo)
  hy, hx = F32(1) - ly, F32(1) - lx
  f = feat.astype(np.float64)
  return (hy * hx * f[y_lo, x_lo] + hy * lx * f[y_lo, x_hi] +
          ly * hx * f[y_hi, x_lo] + ly * lx * f[y_hi, x_hi])


def ref_roi_align(feat, rois, out_size, scale, sr=0, aligned=False, grid=None):
  """numpy RoIAlign: feat [H,W,C], rois [R,4] -> [R,oh,ow,C] float64.

  `grid` = (gh, gw) forces the sampling grid (to check the capped grid).
  """
  oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
  feat = np.asarray(feat, F32)
  rois = np.asarray(rois, F32)
  out = np.zeros((len(rois), oh, ow, feat.shape[2]), np.float64)
  off = F32(0.5) if aligned else F32(0)
  for r, (x1, y1, x2, y2) in enumerate(rois):
    if not np.all(np.isfinite([x1, y1, x2, y2])):
      continue
    sx, sy = F32(x1 * F32(scale)) - off, F32(y1 * F32(scale)) - off
    ex, ey = F32(x2 * F32(scale)) - off, F32(y2 * F32(scale)) - off
    rw, rh = F32(ex - sx), F32(ey - sy)
    if not aligned:
      rw, rh = max(rw, F32(1)), max(rh, F32(1))
    bh, bw = F32(rh / F32(oh)), F32(rw / F32(ow))
    gh = sr if sr > 0 else int(math.ceil(rh / F32(oh)))
    gw = sr if sr > 0 else int(math.ceil(rw / F32(ow)))
    if grid is not None:
      gh, gw = grid
    count = max(gh * gw, 1)
    for i in range(oh):
      for j in range(ow):
        acc = np.zeros(feat.shape[2], np.float64)
        for iy in range(gh):
          y = F32(F32(sy + F32(i) * bh) + F32(F32(iy + 0.5) * bh) / F32(gh))
          for ix in range(gw):
            x = F32(F32(sx + F32(j) * bw) + F32(F32(ix + 0.5) * bw) / F32(gw))
            acc += _bilinear(feat, y, x)
        out[r, i, j] = acc / count
  return out


def _c_round(v):
  return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def ref_roi_pool(feat, rois, out_size, scale):
  """numpy RoIPool -> (out [R,oh,ow,C], argmax [R,oh,ow,C] flat y*W+x or -1)."""
  oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
  feat = np.asarray(feat, F32)
  h, w, c = feat.shape
  out = np.zeros((len(rois), oh, ow, c), F32)
  arg = np.full((len(rois), oh, ow, c), -1, np.int64)
  for r, roi in enumerate(np.asarray(rois, F32)):
    if not np.all(np.isfinite(roi)):
      continue
    x1, y1, x2, y2 = [_c_round(float(F32(v * F32(scale)))) for v in roi]
    rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    bh, bw = F32(rh) / F32(oh), F32(rw) / F32(ow)
    for i in range(oh):
      for j in range(ow):
        hs = min(max(int(math.floor(F32(i) * bh)) + y1, 0), h)
        he = min(max(int(math.ceil(F32(i + 1) * bh)) + y1, 0), h)
        ws = min(max(int(math.floor(F32(j) * bw)) + x1, 0), w)
        we = min(max(int(math.ceil(F32(j + 1) * bw)) + x1, 0), w)
        if he <= hs or we <= ws:
          continue
        for ch in range(c):
          best, bi = -np.finfo(F32).max, -1
          for y in range(hs, he):
            for x in range(ws, we):
              if feat[y, x, ch] > best:
                best, bi = feat[y, x, ch], y * w + x
          out[r, i, j, ch], arg[r, i, j, ch] = best, bi
  return out, arg


def _rand_rois(rng, n, img_h, img_w, lo=2.0, hi=None):
  hi = hi or max(img_h, img_w)
  s = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
  ar = np.exp(rng.uniform(-0.7, 0.7, n))
  bw, bh = s * np.sqrt(ar), s / np.sqrt(ar)
  x1 = rng.uniform(-0.1 * img_w, img_w, n)
  y1 = rng.uniform(-0.1 * img_h, img_h, n)
  return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(F32)


# ----------------------------------------------------------------------------
# roi_align
# ----------------------------------------------------------------------------

def align(feat, rois, sr=0, aligned=False, grid=None, **kw):
  return roi_align(jnp.asarray(feat), jnp.asarray(rois), OUT, SCALE, sr, aligned,
                   chunk_size=CHUNK, max_sampling_grid=grid, **kw)


# (sampling_ratio, aligned, max_sampling_grid): 32 keeps sr=0 exact for the
# RoIs larger than the map used below.
CONFIGS = [(0, False, 32), (0, True, 32), (1, False, None), (1, True, None),
           (2, False, None), (2, True, None)]


@pytest.mark.parametrize("sr,aligned,grid", CONFIGS)
def test_matches_reference_random(rng, sr, aligned, grid):
  feat = rng.normal(size=(H, W, C)).astype(F32)
  # From sub-pixel to ~37 feature px (larger than the map), partly and fully
  # outside, so every tier including the whole-map one is used.
  rois = _rand_rois(rng, N, 8 * H, 8 * W, lo=1.0, hi=300.0)
  got = np.asarray(align(feat, rois, sr, aligned, grid))
  want = ref_roi_align(feat, rois, OUT, SCALE, sr, aligned)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("sr,aligned,grid", [c for c in CONFIGS if c[0] != 1])
def test_closed_forms(rng, sr, aligned, grid):
  # RoIs whose samples all lie inside [0, H-1] x [0, W-1] (image coords from
  # 4 to 8*(H-2) / 8*(W-2) at scale 1/8, so a RoI size forced to 1 fits too).
  ymax, xmax = 8 * (H - 2), 8 * (W - 2)
  x1 = rng.uniform(4, xmax - 4, N)
  y1 = rng.uniform(4, ymax - 4, N)
  x2 = np.minimum(x1 + np.exp(rng.uniform(0, np.log(xmax), N)), xmax)
  y2 = np.minimum(y1 + np.exp(rng.uniform(0, np.log(ymax), N)), ymax)
  rois = np.stack([x1, y1, x2, y2], 1).astype(F32)
  # Constant map: every bin averages to the constant.
  out = np.asarray(align(np.full((H, W, C), 2.5, F32), rois, sr, aligned, grid))
  np.testing.assert_allclose(out, 2.5, rtol=1e-6)
  # Linear ramp f = 3y + 2x + 1 (channel 0) and 1 - y (channel 1): bilinear
  # interpolation reproduces it exactly and the samples of a bin are symmetric
  # about its centre, so each bin equals f at the bin centre.
  yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  ramp = np.stack([3 * yy + 2 * xx + 1, 1 - yy], -1).astype(F32)
  out = np.asarray(align(ramp, rois, sr, aligned, grid))
  off = 0.5 if aligned else 0.0
  sx, sy = rois[:, 0] * SCALE - off, rois[:, 1] * SCALE - off
  rw, rh = (rois[:, 2] - rois[:, 0]) * SCALE, (rois[:, 3] - rois[:, 1]) * SCALE
  if not aligned:
    rw, rh = np.maximum(rw, 1), np.maximum(rh, 1)
  cy = sy[:, None] + (np.arange(OUT[0]) + 0.5) * (rh[:, None] / OUT[0])
  cx = sx[:, None] + (np.arange(OUT[1]) + 0.5) * (rw[:, None] / OUT[1])
  np.testing.assert_allclose(out[..., 0], 3 * cy[:, :, None] + 2 * cx[:, None, :] + 1,
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(out[..., 1], np.broadcast_to(1 - cy[:, :, None], out.shape[:3]),
                             rtol=1e-5, atol=1e-4)


def test_hand_computed_single_sample(rng):
  # sampling_ratio 1: one sample per bin, at its centre. Integer map values.
  feat = rng.integers(0, 10, size=(H, W, C)).astype(F32)
  v = feat[..., 0]
  s = 1 / SCALE
  # RoI x 0..2, y 0..3 feature px: bins of 1 px.
  rois = np.zeros((N, 4), F32)
  rois[0] = [0, 0, 2 * s, 3 * s]
  # aligned=True: x from 8 -> 0.5 px, y from -16 -> -2.5 px; bins of 1 px.
  rois[1] = [8, -16, 24, 8]
  # aligned=False: centres at x + 0.5, y + 0.5 -> mean of a 2x2 block.
  out = np.asarray(align(feat, rois, *CONFIGS[2]))[..., 0]
  want = [[v[i:i + 2, j:j + 2].mean() for j in range(2)] for i in range(3)]
  np.testing.assert_allclose(out[0], want, rtol=1e-6)
  # aligned=True: centres on pixels -> the pixel values; for RoI 1 the
  # samples are at y = -2 (below -1: contributes 0), y = -1 (still counts,
  # clamped to row 0) and y = 0, at x = 1 and 2.
  out = np.asarray(align(feat, rois, *CONFIGS[3]))[..., 0]
  np.testing.assert_allclose(out[0], v[:3, :2], rtol=1e-6)
  np.testing.assert_allclose(out[1], [[0, 0], v[0, 1:3], v[0, 1:3]], rtol=1e-6)


def test_default_grid_bound(rng):
  feat = rng.normal(size=(H, W, C)).astype(F32)
  s = 1 / SCALE
  special = np.array([
      [0, 0, (W - 1) * s, (H - 1) * s],            # whole map
      [-400, -400, -80, -80],                      # fully outside (above-left)
      [(W + 5) * s, (H + 5) * s, (W + 40) * s, (H + 9) * s],  # fully outside
      [-3 * s, 2 * s, 4 * s, (H + 1) * s],         # partly outside
      [40, 40, 40, 40],                            # zero size
      [48, 48, 32, 24],                            # x2 < x1, y2 < y1
      [18, 28, 22, 30],                            # sub-pixel
      [0, 0, (W + 0.9) * s, (H + 0.9) * s],        # extent H+1 (the bound)
      [-40 * s, -30 * s, 50 * s, 60 * s],          # far larger than the map
  ], F32)
  rois = np.concatenate([special, _rand_rois(rng, N - len(special), IMG_H,
                                             IMG_W, hi=IMG_H)])
  got = np.asarray(align(feat, rois))
  # Exact for every RoI whose extent is <= H+1 / W+1 feature pixels.
  ext = (rois[:, 2:] - rois[:, :2]) * SCALE
  exact = (ext[:, 0] <= W + 1) & (ext[:, 1] <= H + 1)
  assert exact.sum() == N - 3
  np.testing.assert_allclose(got[exact], ref_roi_align(feat, rois[exact], OUT, SCALE),
                             rtol=2e-5, atol=2e-5)
  # The huge RoI gets the capped grid (ceil((H+1)/oh), ceil((W+1)/ow)).
  cap = (math.ceil((H + 1) / OUT[0]), math.ceil((W + 1) / OUT[1]))
  np.testing.assert_allclose(got[8], ref_roi_align(feat, rois[8:9], OUT, SCALE,
                                                   grid=cap)[0], rtol=2e-5, atol=2e-5)


def test_tiny_map(rng):
  feat = rng.normal(size=(1, 1, 3)).astype(F32)
  rois = np.array([[0, 0, 0, 0], [-1, -1, 3, 3], [0.2, 0.1, 0.3, 0.9],
                   [-2, 0.5, 0.5, 5]], F32)
  got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(rois), (2, 3), 1.0, 0,
                             True, max_sampling_grid=8))
  np.testing.assert_allclose(got, ref_roi_align(feat, rois, (2, 3), 1.0, 0, True),
                             rtol=2e-5, atol=2e-5)


def test_bad_rois_no_nan(rng):
  feat = rng.normal(size=(H, W, C)).astype(F32)
  bad = np.array([[np.nan, 0, 40, 40], [0, np.inf, 40, 40],
                  [-np.inf, 0, np.inf, 50], [3e38, -3e38, -3e38, 3e38]], F32)
  rois = np.concatenate([bad, _rand_rois(rng, N - len(bad), IMG_H, IMG_W)])
  for sr, aligned, grid in (CONFIGS[0], CONFIGS[4]):
    out = np.asarray(align(feat, rois, sr, aligned, grid))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:4], 0.0)     # non-finite: zeros
    np.testing.assert_allclose(out[4:], ref_roi_align(feat, rois[4:], OUT, SCALE, sr,
                                                      aligned), rtol=2e-5, atol=2e-5)
  g = jax.grad(lambda f: align(f, rois, *CONFIGS[0]).sum())(jnp.asarray(feat))
  assert np.isfinite(np.asarray(g)).all()


def test_empty_rois():
  feat = jnp.ones((H, W, C))
  out = roi_align(feat, jnp.zeros((0, 4)), 7, 1 / 16)
  assert out.shape == (0, 7, 7, C)
  g = jax.grad(lambda f: roi_align(f, jnp.zeros((0, 4)), 7, 1 / 16).sum())(feat)
  np.testing.assert_array_equal(np.asarray(g), 0.0)
  assert roi_pool(feat, jnp.zeros((0, 4)), 7, 1 / 16).shape == (0, 7, 7, C)


def test_jit_equals_eager_and_bfloat16(rng):
  feat = jnp.asarray(rng.normal(size=(H, W, C)).astype(F32))
  rois = jnp.asarray(_rand_rois(rng, N, IMG_H, IMG_W))
  eager = align(feat, rois, *CONFIGS[0])
  jitted = jax.jit(lambda f, r: align(f, r, *CONFIGS[0]))(feat, rois)
  np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))
  fb = feat.astype(jnp.bfloat16)
  outb = align(fb, rois, *CONFIGS[0])
  assert outb.dtype == jnp.bfloat16
  want = ref_roi_align(np.asarray(fb.astype(jnp.float32)), np.asarray(rois), OUT, SCALE)
  np.testing.assert_allclose(np.asarray(outb.astype(jnp.float32)), want,
                             rtol=1e-2, atol=1e-2)
  gb = jax.grad(lambda f: align(f, rois, *CONFIGS[0]).astype(jnp.float32).sum())(fb)
  assert gb.dtype == jnp.bfloat16
  g32 = jax.grad(lambda f: align(f, rois, *CONFIGS[0]).sum())(feat)
  np.testing.assert_allclose(np.asarray(gb.astype(jnp.float32)), np.asarray(g32),
                             rtol=1e-2, atol=1e-2)


def test_vmap_equals_loop(rng):
  b = 2
  feats = jnp.asarray(rng.normal(size=(b, H, W, C)).astype(F32))
  rois = jnp.asarray(np.stack([_rand_rois(rng, N, IMG_H, IMG_W, hi=200.0)
                               for _ in range(b)]))
  fn = lambda f, r: align(f, r, *CONFIGS[0])
  # (Eager vmap: the op's own jitted programs are shared between the calls.)
  batched = jax.vmap(fn)(feats, rois)
  loop = [fn(feats[i], rois[i]) for i in range(b)]
  np.testing.assert_allclose(np.asarray(batched), np.asarray(jnp.stack(loop)),
                             rtol=1e-6, atol=1e-6)
  nested = jax.vmap(jax.vmap(fn))(feats[None], rois[None])
  np.testing.assert_allclose(np.asarray(nested[0]), np.asarray(batched),
                             rtol=1e-6, atol=1e-6)
  # Outer vmap over RoI sets only (the images are shared), inner over images.
  rois2 = jnp.stack([rois, rois[:, ::-1]])                 # [S=2, B, N, 4]
  shared = jax.vmap(jax.vmap(fn), (None, 0))(feats, rois2)
  np.testing.assert_allclose(np.asarray(shared[0]), np.asarray(batched),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(shared[1, 1]),
                             np.asarray(fn(feats[1], rois[1, ::-1])), rtol=1e-6,
                             atol=1e-6)
  # Gradients through vmap equal per-image gradients.
  cot = jnp.asarray(rng.normal(size=batched.shape).astype(F32))
  gb = jax.grad(lambda f: (jax.vmap(fn)(f, rois) * cot).sum())(feats)
  grads = [jax.grad(lambda f: (fn(f, rois[i]) * cot[i]).sum())(feats[i])
           for i in range(b)]
  np.testing.assert_allclose(np.asarray(gb), np.asarray(jnp.stack(grads)),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sr,aligned,grid", [CONFIGS[0], CONFIGS[2], CONFIGS[4]])
def test_gradient_is_adjoint_of_forward(rng, sr, aligned, grid):
  # roi_align is linear in the features, so its VJP must satisfy
  # <vjp(g), v> = <g, roi_align(v)> for any v; and the gradient at a feature
  # element equals the numpy reference's response to that basis vector.
  rois = _rand_rois(rng, N, 8 * H, 8 * W, lo=1.0, hi=300.0)
  fn = lambda f: align(f, rois, sr, aligned, grid)
  g = jnp.asarray(rng.normal(size=(N,) + OUT + (C,)).astype(F32))
  v = jnp.asarray(rng.normal(size=(H, W, C)).astype(F32))
  _, vjp = jax.vjp(fn, jnp.zeros((H, W, C)))
  grad = np.asarray(vjp(g)[0])
  lhs, rhs = float(np.vdot(grad, np.asarray(v))), float(jnp.vdot(g, fn(v)))
  assert abs(lhs - rhs) <= 1e-4 * (abs(rhs) + 1)
  points = [(0, 0, 0), (H - 1, W - 1, 1), (5, 6, 1), (H - 1, 0, 0), (3, W - 1, 0)]
  basis = np.zeros((H, W, len(points)), F32)      # one basis vector per channel
  for k, (y, x, _) in enumerate(points):
    basis[y, x, k] = 1.0
  resp = ref_roi_align(basis, rois, OUT, SCALE, sr, aligned)
  for k, (y, x, ch) in enumerate(points):
    want = float((resp[..., k] * np.asarray(g)[..., ch]).sum())
    np.testing.assert_allclose(grad[y, x, ch], want, rtol=1e-4, atol=1e-5)


def test_finite_difference_gradient(rng):
  # Central differences of a non-linear loss, float32 with a step and
  # tolerance sized for it (the error is O(eps^2) plus rounding).
  feat = jnp.asarray(rng.normal(size=(H, W, C)).astype(F32))
  rois = jnp.asarray(_rand_rois(rng, N, 8 * H, 8 * W, lo=4.0, hi=200.0))
  g = jnp.asarray(rng.normal(size=(N,) + OUT + (C,)).astype(F32))
  loss = lambda f: jnp.sum(jnp.sin(align(f, rois, *CONFIGS[0])) * g)
  grad = np.asarray(jax.grad(loss)(feat))
  eps = 1e-2
  for idx in [(0, 0, 0), (4, 5, 1), (H - 1, W - 1, 0), (2, 7, 1), (6, 1, 0)]:
    d = np.zeros((H, W, C), F32)
    d[idx] = eps
    fd = (float(loss(feat + d)) - float(loss(feat - d))) / (2 * eps)
    assert abs(fd - grad[idx]) <= 2e-3 * (1 + abs(grad[idx])), (idx, fd, grad[idx])


def test_no_gradient_to_rois(rng):
  feat = jnp.asarray(rng.normal(size=(H, W, C)).astype(F32))
  rois = jnp.asarray(_rand_rois(rng, N, IMG_H, IMG_W))
  g = jax.grad(lambda r: align(feat, r, *CONFIGS[0]).sum())(rois)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_sharded_batch_stays_local():
  # Data parallel: vmapped over a batch sharded on 'data' (2 CPU devices),
  # the gradient stays sharded and the compiled step moves no features
  # between devices (the vmap rule keeps an explicit image axis; roi_pool
  # uses the same rule). Values under vmap are checked in-process above.
  from tests.conftest import run_with_devices
  out = run_with_devices("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ops.roi_align import roi_align
    mesh = Mesh(np.array(jax.devices()), ('data',))
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 10, 12, 2)).astype(np.float32)
    xy = rng.uniform(-8, 90, size=(4, 16, 2, 2)).astype(np.float32)
    r = np.concatenate([xy.min(2), xy.max(2)], -1)
    sh = NamedSharding(mesh, P('data'))
    fn = jax.vmap(lambda a, b: roi_align(a, b, 3, 1 / 8))
    step = jax.jit(jax.value_and_grad(lambda f, r: jnp.sum(jnp.sin(fn(f, r)))))
    fs, rs = jax.device_put(f, sh), jax.device_put(r, sh)
    compiled = step.lower(fs, rs).compile()
    v, g = compiled(fs, rs)
    assert np.isfinite(v) and np.abs(np.asarray(g)).sum() > 0
    assert g.sharding.spec == P('data'), g.sharding
    hlo = compiled.as_text()
    assert 'all-gather' not in hlo and 'all-to-all' not in hlo
    print('OK')
  """, 2)
  assert "OK" in out


# ----------------------------------------------------------------------------
# roi_pool
# ----------------------------------------------------------------------------

def pool(feat, rois):
  return roi_pool(jnp.asarray(feat), jnp.asarray(rois), OUT, SCALE,
                  chunk_size=CHUNK)


def test_roi_pool_hand_computed():
  # 4x4 map, values y*4+x, scale 1, 2x2 output. RoI (0,0)-(3,3): each bin is a
  # 2x2 quadrant whose max is its bottom-right element. RoI (0.5,0)-(2.5,0):
  # x1 = round(0.5) = 1, x2 = round(2.5) = 3 (half away from zero), one row:
  # bins [1,2) -> 1... -> columns {1,2} and {2,3} (ceil/floor overlap).
  # RoI beyond the map: empty bins give 0.
  feat = np.arange(16, dtype=F32).reshape(4, 4, 1)
  rois = jnp.asarray([[0, 0, 3, 3], [0.5, 0, 2.5, 0], [10, 10, 20, 20]], jnp.float32)
  out = np.asarray(roi_pool(jnp.asarray(feat), rois, 2, 1.0))[..., 0]
  np.testing.assert_array_equal(out[0], [[5, 7], [13, 15]])
  np.testing.assert_array_equal(out[1], [[2, 3], [2, 3]])
  np.testing.assert_array_equal(out[2], 0.0)
  out = np.asarray(roi_pool(jnp.asarray(-feat - 1), rois, 2, 1.0))[..., 0]
  np.testing.assert_array_equal(out[2], 0.0)
  np.testing.assert_array_equal(out[0], [[-1, -3], [-9, -11]])


def test_roi_pool_matches_reference(rng):
  feat = rng.normal(size=(H, W, C)).astype(F32)
  rois = _rand_rois(rng, N - 4, 8 * H, 8 * W, lo=1.0, hi=400.0)
  # x2 < x1; far beyond the map (whole-map tier); NaN; the whole image.
  rois = np.concatenate([rois, np.array([[40, 40, 8, 8], [-800, -800, 900, 900],
                                         [np.nan, 1, 2, 3],
                                         [0, 0, IMG_W - 1, IMG_H - 1]], F32)])
  got = np.asarray(pool(feat, rois))
  want, _ = ref_roi_pool(feat, rois, OUT, SCALE)
  np.testing.assert_array_equal(got, want)
  # Ties (many equal values, as after a ReLU): the max is still exact.
  feat2 = np.maximum(feat, 0.0).round(0)
  np.testing.assert_array_equal(np.asarray(pool(feat2, rois)),
                                ref_roi_pool(feat2, rois, OUT, SCALE)[0])


def test_roi_pool_gradient_goes_to_first_argmax(rng):
  feat = np.maximum(rng.normal(size=(H, W, C)), 0).round(0).astype(F32)  # ties
  rois = _rand_rois(rng, N, 8 * H, 8 * W, lo=4.0, hi=400.0)
  rois[:2] = [[-800, -800, 900, 900], [0, 0, IMG_W - 1, IMG_H - 1]]
  g = rng.normal(size=(N,) + OUT + (C,)).astype(F32)
  grad = np.asarray(jax.grad(lambda f: (pool(f, rois) * g).sum())(jnp.asarray(feat)))
  _, arg = ref_roi_pool(feat, rois, OUT, SCALE)
  want = np.zeros((H * W, C), np.float64)
  for r, i, j, ch in np.ndindex(arg.shape):
    if arg[r, i, j, ch] >= 0:
      want[arg[r, i, j, ch], ch] += g[r, i, j, ch]
  np.testing.assert_allclose(grad.reshape(H * W, C), want, rtol=1e-5, atol=1e-5)


def test_roi_pool_vmap_jit_bf16(rng):
  b = 2
  feats = jnp.asarray(rng.normal(size=(b, H, W, C)).astype(F32))
  rois = jnp.asarray(np.stack([_rand_rois(rng, N, IMG_H, IMG_W, hi=300.0)
                               for _ in range(b)]))
  batched = jax.vmap(pool)(feats, rois)
  for i in range(b):
    np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(pool(feats[i], rois[i])))
  gb = jax.grad(lambda f: jax.vmap(pool)(f, rois).sum())(feats)
  for i in range(b):
    gi = jax.grad(lambda f: pool(f, rois[i]).sum())(feats[i])
    np.testing.assert_array_equal(np.asarray(gb[i]), np.asarray(gi))
  fb = feats[0].astype(jnp.bfloat16)
  outb = pool(fb, rois[0])
  assert outb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(outb.astype(jnp.float32)),
      ref_roi_pool(np.asarray(fb.astype(jnp.float32)), np.asarray(rois[0]), OUT, SCALE)[0])


# ----------------------------------------------------------------------------
# torchvision (only where it is importable, e.g. /work/venv-bench)
# ----------------------------------------------------------------------------

def test_against_torchvision(rng):
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  h, w, c = 19, 23, 4
  feat = rng.normal(size=(h, w, c)).astype(F32)
  rois = _rand_rois(rng, 60, 16 * h, 16 * w, lo=4.0, hi=600.0)
  rois = np.concatenate([rois, np.array([[5, 5, 2, 2], [-300, -300, 900, 900]], F32)])
  tf = torch.from_numpy(feat).permute(2, 0, 1)[None].contiguous()
  tr = torch.cat([torch.zeros(len(rois), 1), torch.from_numpy(rois)], 1)
  for sr in (0, 1, 2):
    for aligned in (False, True):
      want = tv_ops.roi_align(tf, tr, (7, 5), 1 / 16, sr, aligned)
      want = want.permute(0, 2, 3, 1).numpy()
      got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(rois), (7, 5),
                                 1 / 16, sr, aligned,
                                 max_sampling_grid=None if sr else 64))
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  want = tv_ops.roi_pool(tf, tr, (7, 5), 1 / 16).permute(0, 2, 3, 1).numpy()
  got = np.asarray(roi_pool(jnp.asarray(feat), jnp.asarray(rois), (7, 5), 1 / 16))
  np.testing.assert_array_equal(got, want)


# --- an image's own map on a larger canvas (valid_size) ---------------------


@pytest.mark.parametrize("sr", [0, 2])
def test_valid_size_samples_as_the_unpadded_map(rng, sr):
  """On a canvas whose padding is 0, valid_size=(h, w) gives exactly the
  unpadded h x w map's RoIAlign (the last row/column rule included), also
  under vmap with a different extent per image and for the gradient."""
  h, w, c = 9, 13, 3
  feat = rng.normal(size=(h, w, c)).astype(np.float32)
  canvas = np.zeros((16, 20, c), np.float32)
  canvas[:h, :w] = feat
  rois = _rand_rois(rng, 24, h * 16, w * 16, lo=4.0)
  rois[:4] = [[0, 0, w * 16 - 1, h * 16 - 1], [100, 80, 260, 200],
              [150, 90, 400, 300], [190, 120, 207, 143]]   # edges, beyond
  want = ref_roi_align(feat, rois, 3, 1 / 16, sr=sr)
  got = roi_align(jnp.asarray(canvas), jnp.asarray(rois), 3, 1 / 16, sr,
                  valid_size=(h, w))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # Without it the canvas padding shows in the samples near the edge.
  plain = roi_align(jnp.asarray(canvas), jnp.asarray(rois), 3, 1 / 16, sr)
  assert np.abs(np.asarray(plain) - want).max() > 1e-3
  # vmap: per-image extents.
  feat2 = rng.normal(size=(12, 7, c)).astype(np.float32)
  canvas2 = np.zeros_like(canvas)
  canvas2[:12, :7] = feat2
  both = jax.vmap(lambda f, r, e: roi_align(f, r, 3, 1 / 16, sr,
                                            valid_size=e))(
      jnp.stack([canvas, canvas2]), jnp.stack([rois, rois]),
      jnp.asarray([[h, w], [12, 7]]))
  np.testing.assert_allclose(np.asarray(both[0]), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(both[1]),
                             ref_roi_align(feat2, rois, 3, 1 / 16, sr=sr),
                             rtol=1e-5, atol=1e-5)
  # The gradient is the adjoint of that map (and 0 on the padding).
  g = rng.normal(size=want.shape).astype(np.float32)
  grad = jax.grad(lambda f: jnp.sum(roi_align(
      f, jnp.asarray(rois), 3, 1 / 16, sr, valid_size=(h, w)) * g))(
          jnp.asarray(canvas))
  assert not np.asarray(grad)[h:].any() and not np.asarray(grad)[:, w:].any()
  lhs = float(jnp.sum(grad * canvas))
  np.testing.assert_allclose(lhs, float(np.sum(want * g)), rtol=1e-4)
