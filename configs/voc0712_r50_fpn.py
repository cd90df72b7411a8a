"""Faster R-CNN R50-FPN (torchvision's v1 network) on VOC 2007+2012 trainval
-> VOC 2007 test.

torchvision has no VOC recipe; this is mmdetection's for the same network
scaled to torchvision's settings: a global batch of 16, lr 0.02, 12 epochs
with decay at 9 and 11, warmup 500 steps, torchvision's preprocessing (min
800 / max 1333), ImageNet ResNet-50 start
(``--config.init_from=resnet50-0676ba61.pth``). Fine-tuning torchvision's
COCO detector instead: ``--config.init_from=<converted folder>`` (the
box-predictor layers are re-initialised for the 21 classes).
"""

from configs import common


def get_config():
  c = common.fpn_config("resnet50", "v1")
  c.data.name = "voc"
  c.data.root = "data/VOCdevkit"
  c.data.train_split = "2007_trainval+2012_trainval"
  c.data.val_split = "2007_test"
  c.data.max_num_box = 50
  c.test.metric = "voc"
  c.train.batch_size = 16
  c.train.num_epochs = 12
  c.optimizer.lr = 0.02
  c.optimizer.lr_decay_epochs = (9, 11)
  c.optimizer.warmup_steps = 500
  c.optimizer.warmup_factor = 1e-3
  return c
