"""COCO configs: the seed's trainval_net.py --dataset coco.

ANCHOR_SCALES 4, 8, 16, 32 and MAX_NUM_GT_BOXES 50 as the seed; a 16-image
batch with lr 1e-2, decay after epoch 4, 6 epochs (its README's COCO row).
``large_scale`` is the seed's ``--ls``: short side 800 (its MAX_SIZE 1200
is never applied: the cap is commented out in its code).
"""

from __future__ import annotations

from configs import common


def coco_config(backbone: str, large_scale: bool = False):
  c = common.base_config(backbone)
  if backbone != "resnet101" and backbone != "vgg16":
    common.torchvision_preprocessing(c)
  c.data.name = "coco"
  c.data.root = "data/coco"
  c.data.train_split = "train2017"
  c.data.val_split = "val2017"
  c.data.max_num_box = 50
  c.anchors.scales = (4, 8, 16, 32)
  common.seed_input(c, 800 if large_scale else 600)
  c.test.metric = "coco"
  c.train.batch_size = 16
  c.optimizer.lr = 1e-2
  c.optimizer.lr_decay_epochs = (4,)
  c.train.num_epochs = 6
  c.checkpoint.every_steps = 5000
  if backbone == "vgg16":
    c.optimizer.weight_decay = 5e-4
    c.optimizer.double_bias = True
  return c
