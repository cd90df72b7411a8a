"""The built-in job: a tiny ResNet on the synthetic shapes dataset.

Trains from scratch on a laptop CPU in minutes (GroupNorm, nothing frozen),
through exactly the code path of the real configs. Small canvases, anchors
of 16..128 px, fewer proposals and RoIs than the seed (which targets 600 px
images and ImageNet backbones).
"""

from configs import common


def get_config():
  c = common.base_config("tiny_resnet")
  common.torchvision_preprocessing(c)
  c.seed = 0
  c.data.name = "shapes"
  c.data.root = "data/shapes"
  c.data.scale = 224
  c.data.max_size = 384
  c.data.buckets = ((224, 384), (384, 224))
  c.data.max_num_box = 8
  c.anchors.scales = (1, 2, 4, 8)
  c.rpn.conv_channels = 128
  c.rpn.pre_nms_top_n = 2000
  c.rpn.post_nms_top_n = 300
  c.test.rpn_pre_nms_top_n = 1000
  c.test.rpn_post_nms_top_n = 100
  c.roi.batch_size = 64
  c.test.batch_size = 8
  c.train.batch_size = 4
  c.train.num_epochs = 0
  c.train.num_steps = 2000
  c.train.log_every = 20
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.02
  c.optimizer.warmup_steps = 100
  c.optimizer.lr_decay_epochs = ()
  c.optimizer.lr_decay_steps = (1500,)
  c.optimizer.grad_clip_norm = 10.0
  c.checkpoint.every_steps = 500
  return c
