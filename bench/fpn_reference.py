"""torchvision's FPN detectors made comparable to ours: random weights with
non-trivial BatchNorm statistics and peaked class scores, and a test image.

Used by bench/fpn_parity.py (800 x 1333) and tests/modeling/test_detector_fpn.py
(320 x 480). It lives in bench/ because tests may import bench (they test its
tools) while bench never imports tests. torch is imported only by
:func:`randomize`, so the benchmark can import this module without it.
"""

import numpy as np


def randomize(model, seed: int, cls_scale: float) -> None:
  """Non-trivial BatchNorm statistics and peaked class scores."""
  # pylint: disable=import-outside-toplevel
  import torch
  from torchvision import ops as tv_ops
  # pylint: enable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, (torch.nn.BatchNorm2d, tv_ops.FrozenBatchNorm2d)):
        n = m.weight.shape[0]
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        if name.endswith("bn3"):
          m.weight.mul_(0.2)
    model.roi_heads.box_predictor.cls_score.weight.mul_(cls_scale)


def make_image(h: int = 320, w: int = 480, seed: int = 0, *,
               rects: int = 6, margin: int = 40,
               rect_h: tuple[int, int] = (20, 120),
               rect_w: tuple[int, int] = (20, 160)) -> np.ndarray:
  """Smooth noise with ``rects`` flat rectangles (some structure for the
  RPN): each placed at least ``margin`` pixels from the bottom/right edge,
  ``rect_h`` x ``rect_w`` pixels (half-open ranges) before clipping."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3))
  img = np.kron(small, np.ones((8, 8, 1)))[:h, :w]
  for _ in range(rects):
    y, x = rng.integers(0, h - margin), rng.integers(0, w - margin)
    img[y:y + rng.integers(*rect_h), x:x + rng.integers(*rect_w)] = (
        rng.uniform(0, 255, 3))
  return img.astype(np.uint8)
