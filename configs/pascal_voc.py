"""PASCAL VOC configs: the seed's trainval_net.py --dataset pascal_voc(_0712).

Hyper-parameters follow faster-rcnn.pytorch's README table for a 4-image
batch (lr 1e-3 per image: 4e-3; decay after epoch 8; 10 epochs for ResNet,
9 for VGG16). Scale ``optimizer.lr`` with ``train.batch_size``.
"""

from __future__ import annotations

from configs import common


def voc_config(backbone: str, years: str = "2007"):
  c = common.base_config(backbone)
  if backbone != "resnet101" and backbone != "vgg16":
    # Only torchvision ImageNet weights exist for ResNet-50/152.
    common.torchvision_preprocessing(c)
  c.data.name = "voc"
  c.data.root = "data/VOCdevkit"
  c.data.train_split = ("2007_trainval" if years == "2007" else
                        "2007_trainval+2012_trainval")
  c.data.val_split = "2007_test"
  c.data.max_num_box = 20
  common.seed_input(c, 600)
  c.anchors.scales = (8, 16, 32)
  c.test.metric = "voc"
  c.train.batch_size = 4
  c.optimizer.lr = 4e-3
  c.optimizer.lr_decay_epochs = (8,)
  c.train.num_epochs = 10
  if backbone == "vgg16":
    c.train.num_epochs = 9
    c.optimizer.weight_decay = 5e-4   # config.py's default
    c.optimizer.double_bias = True
  return c
