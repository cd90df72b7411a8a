"""ops.anchors against the seed's anchor table."""
import numpy as np

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
