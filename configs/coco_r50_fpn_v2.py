"""torchvision's fasterrcnn_resnet50_fpn_v2 on COCO (46.7 box AP weights).

The v2 network (BatchNorm in the FPN and the 4conv-1fc box head, 2-conv RPN
head). Mainly for evaluating torchvision's weights (``python -m
frcnn_jax.weights convert --kind=torchvision_fasterrcnn_resnet50_fpn_v2``).
Training uses v1's 26-epoch schedule (coco_r50_fpn.py); torchvision trained
its weights with a much longer recipe (large-scale jitter, 400 epochs,
synchronised BatchNorm), which this config does not reproduce: BatchNorm
statistics stay frozen here, their scales and biases train.
"""

from configs import coco_r50_fpn


def get_config():
  return coco_r50_fpn.coco_fpn_config("v2")
