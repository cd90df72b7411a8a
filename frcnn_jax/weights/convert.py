"""``python -m frcnn_jax.weights convert``: .pth files -> converted folders."""

from __future__ import annotations

import numpy as np
from flax import nnx

from frcnn_jax.modeling import backbones
from frcnn_jax.weights import torch_io
from frcnn_jax.weights import torchvision_frcnn
from frcnn_jax.weights.backbone import load_backbone_state_dict
from frcnn_jax.weights.backbone import save_backbone_weights
from frcnn_jax.weights.frcnn_pytorch import convert_detector_file
from frcnn_jax.weights.identify import guess_kind
from frcnn_jax.weights.kinds import ALL_KINDS
from frcnn_jax.weights.kinds import backbone_config_for_kind
from frcnn_jax.weights.kinds import is_detector_kind
from frcnn_jax.weights.kinds import is_torchvision_detector_kind
from frcnn_jax.weights.kinds import kind_info


def convert_backbone_file(src: str, kind: str, out: str) -> str:
  """Reads a backbone .pth of `kind`, writes a converted directory; returns a
  one-line summary."""
  cfg = backbone_config_for_kind(kind)
  backbone = backbones.build_backbone(cfg, rngs=nnx.Rngs(0))
  load_backbone_state_dict(backbone, torch_io.read_state_dict(src), kind=kind)
  save_backbone_weights(backbone, out, kind=kind, backbone_config=cfg)
  n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(backbone)))
  return (f"{src} ({kind}, {n} values) -> {out}\n"
          f"  train from it: --config.init_from={out}")

def convert_file(src: str, kind: str, out: str, classes: str = "") -> str:
  """`python -m frcnn_jax.weights convert`: any kind ('' = from the keys)."""
  if not kind:
    kind, cands = guess_kind(torch_io.read_torch_checkpoint(src)[0])
    if kind is None:
      raise ValueError(f"{src}: the kind cannot be told from the keys; pass "
                       f"--kind, one of {cands or list(ALL_KINDS)}")
  if is_torchvision_detector_kind(kind):
    return torchvision_frcnn.convert_file(src, kind, out, classes)
  if is_detector_kind(kind):
    if not classes:
      raise ValueError("a detector checkpoint needs --classes=voc, "
                       "--classes=coco or --classes=name1,name2,...")
    return convert_detector_file(src, kind, out, classes)
  if classes:
    raise ValueError(f"--classes is for detector checkpoints, not {kind!r}")
  kind_info(kind)
  return convert_backbone_file(src, kind, out)
