"""ops.anchors against the seed's anchor table."""
import numpy as np
import pytest

from ops import anchors as A

# The table printed at the end of the seed's generate_anchors.py.
SEED_TABLE = np.array([
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
], np.float32)


def test_generate_anchors_is_the_seed_table():
  out = A.generate_anchors()
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, SEED_TABLE)


def test_coco_scales_extend_the_table():
  out = A.generate_anchors(16, (0.5, 1, 2), (4, 8, 16, 32))
  assert out.shape == (12, 4)
  # Every anchor keeps the centre (7.5, 7.5) and area ~ (16 * scale)^2.
  np.testing.assert_allclose((out[:, 0] + out[:, 2]) / 2, 7.5)
  np.testing.assert_allclose((out[:, 1] + out[:, 3]) / 2, 7.5)
  w = out[:, 2] - out[:, 0] + 1
  h = out[:, 3] - out[:, 1] + 1
  scales = np.tile([4, 8, 16, 32], 3)
  np.testing.assert_allclose(w * h / (16 * scales) ** 2, 1, atol=0.08)
  np.testing.assert_array_equal(out[4:8], [
      [-24, -24, 39, 39], [-56, -56, 71, 71],
      [-120, -120, 135, 135], [-248, -248, 263, 263]])


def test_grid_order_is_shift_major_anchor_minor():
  base = A.generate_anchors()
  out = A.grid_anchors(3, 5, 16, base)
  assert out.shape == (3 * 5 * 9, 4)
  for y in range(3):
    for x in range(5):
      for a in range(9):
        row = out[(y * 5 + x) * 9 + a]
        np.testing.assert_array_equal(row, base[a] + [16 * x, 16 * y] * 2)


# ---------------------------------------------------------------------------
# torchvision's AnchorGenerator (the FPN models' anchors): *_tv functions.
# ---------------------------------------------------------------------------

def _fpn_feature_sizes(h, w, n=5):
  """Sizes of P2..P6 of torchvision's ResNet-FPN for an h x w input:
  stride-2 convs with padding (ceil), then LastLevelMaxPool (k1, s2, ceil)."""
  sizes = []
  h, w = -(-h // 4), -(-w // 4)
  for _ in range(n):
    sizes.append((h, w))
    h, w = -(-h // 2), -(-w // 2)
  return sizes


def test_cell_anchors_tv_hand_values():
  np.testing.assert_array_equal(
      A.cell_anchors_tv((32,), (0.5, 1.0, 2.0)),
      [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
  # Ratio-major, size-minor; half extents rounded half to even (12.5 -> 12).
  out = A.cell_anchors_tv((25, 50), (1.0, 4.0))
  np.testing.assert_array_equal(out, [
      [-12, -12, 12, 12], [-25, -25, 25, 25],
      [-6, -25, 6, 25], [-12, -50, 12, 50]])


def test_strides_tv_integer_division():
  assert A.strides_tv((800, 1216), _fpn_feature_sizes(800, 1216)) == [
      (4, 4), (8, 8), (16, 16), (32, 32), (61, 64)]


@pytest.mark.parametrize("image_size", [(800, 1216), (96, 160), (100, 130),
                                        (64, 64)])
def test_multilevel_anchors_tv_equal_torchvision(image_size):
  torch = pytest.importorskip("torch")
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.image_list import ImageList

  feats = _fpn_feature_sizes(*image_size)
  gen = AnchorGenerator(A.FPN_ANCHOR_SIZES_TV, A.FPN_ASPECT_RATIOS_TV)
  images = ImageList(torch.zeros(2, 3, *image_size),
                     [image_size, (image_size[0] - 7, image_size[1] - 3)])
  fmaps = [torch.zeros(2, 4, h, w) for h, w in feats]
  ref = gen(images, fmaps)
  out = A.multilevel_anchors_tv(image_size, feats)
  assert out.dtype == np.float32
  assert out.shape == (sum(h * w for h, w in feats) * 3, 4)
  for r in ref:  # the same anchors for every image of the batch
    np.testing.assert_array_equal(out, r.numpy())


def test_grid_anchors_tv_order_and_anisotropic_stride():
  torch = pytest.importorskip("torch")
  from torchvision.models.detection.anchor_utils import AnchorGenerator

  cell = A.cell_anchors_tv((64, 128), (0.5, 1.0, 2.0))
  out = A.grid_anchors_tv(3, 5, (7, 9), cell)
  for y in range(3):
    for x in range(5):
      for a in range(6):
        np.testing.assert_array_equal(out[(y * 5 + x) * 6 + a],
                                      cell[a] + [9 * x, 7 * y] * 2)
  gen = AnchorGenerator(((64, 128),), ((0.5, 1.0, 2.0),))
  ref = gen.grid_anchors([[3, 5]], [[torch.tensor(7), torch.tensor(9)]])[0]
  np.testing.assert_array_equal(out, ref.numpy())
