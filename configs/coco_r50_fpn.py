"""torchvision's fasterrcnn_resnet50_fpn on COCO train2017 -> val2017.

torchvision's reference recipe (references/detection, 37.0 box AP):
``--epochs 26 --lr-steps 16 22 --lr 0.02`` on 8 GPUs x 2 images (a global
batch of 16), SGD momentum 0.9, weight decay 1e-4 on every parameter, linear
warmup from 0.001x over the first 1000 steps, random horizontal flips,
images resized to min 800 / max 1333, ImageNet ResNet-50 start
(``--config.init_from=resnet50-0676ba61.pth``). Differences: aspect-ratio
grouping is our buckets; BatchNorm statistics are frozen (they are in v1
anyway). Evaluate torchvision's own weights with it after
``python -m frcnn_jax.weights convert --kind=torchvision_fasterrcnn_resnet50_fpn``.
"""

from configs import common


def coco_fpn_config(variant: str = "v1", backbone: str = "resnet50"):
  c = common.fpn_config(backbone, variant)
  c.data.name = "coco"
  c.data.root = "data/coco"
  c.data.train_split = "train2017"
  c.data.val_split = "val2017"
  c.data.max_num_box = 100         # COCO's largest image has 93 boxes
  c.test.metric = "coco"
  c.train.batch_size = 16
  c.train.num_epochs = 26
  c.optimizer.lr = 0.02
  c.optimizer.momentum = 0.9
  c.optimizer.lr_decay_epochs = (16, 22)
  c.optimizer.gamma = 0.1
  c.optimizer.warmup_steps = 1000
  c.optimizer.warmup_factor = 1e-3
  c.checkpoint.every_steps = 5000
  return c


def get_config():
  return coco_fpn_config("v1")
