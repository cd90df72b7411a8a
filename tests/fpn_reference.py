"""torchvision's FPN detectors made comparable: shared by
tests/modeling/test_detector_fpn.py and bench/fpn_parity.py (torch needed)."""

import numpy as np
import torch
from torchvision import ops as tv_ops


def randomize(model, seed: int, cls_scale: float) -> None:
  """Non-trivial BatchNorm statistics and peaked class scores."""
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


def make_image(h: int = 320, w: int = 480, seed: int = 0) -> np.ndarray:
  """Smooth noise with a few flat rectangles (some structure for the RPN)."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3))
  img = np.kron(small, np.ones((8, 8, 1)))[:h, :w]
  for _ in range(6):
    y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
    img[y:y + rng.integers(20, 120), x:x + rng.integers(20, 160)] = (
        rng.uniform(0, 255, 3))
  return img.astype(np.uint8)
