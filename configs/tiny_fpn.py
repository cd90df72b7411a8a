"""A seconds-long FPN smoke run: a tiny ResNet + FPN on 24 synthetic images.

torchvision's FPN detector (model.arch='fpn', v1) at a CPU test's size: the
tiny ResNet body (GroupNorm, from scratch) under an 32-channel FPN, anchors
8..128 px, fewer proposals and RoIs. Used by the tests (it must overfit a
batch); also `python train.py --config=configs/tiny_fpn.py`.
"""

from configs import common
from configs import tiny


def get_config():
  c = common.fpn_config("tiny_resnet", "v1")
  t = tiny.get_config()
  c.seed = 0
  c.data = t.data
  c.data.resize = "torchvision"
  c.data.crop_extreme_ratios = False
  c.data.buckets = ((64, 128), (128, 64))
  c.backbone.norm = "group"
  c.backbone.fixed_blocks = -1
  c.backbone.tiny_widths = (8, 16, 16, 32)
  c.backbone.gn_groups = 4
  c.fpn.out_channels = 32
  c.fpn.anchor_sizes = (8, 16, 32, 64, 128)
  c.fpn.representation_size = 64
  c.rpn.conv_channels = 32
  c.rpn.pre_nms_top_n = 200
  c.rpn.post_nms_top_n = 50
  c.rpn.batch_size = 64
  c.test.rpn_pre_nms_top_n = 100
  c.test.rpn_post_nms_top_n = 30
  c.test.max_detections = 20
  c.test.score_thresh = 0.0
  c.test.batch_size = 4
  c.roi.batch_size = 32
  c.roi.fg_fraction = 0.5
  c.train.batch_size = 4
  c.train.num_epochs = 0
  c.train.num_steps = 200
  c.train.log_every = 10
  c.optimizer.lr = 0.04
  c.optimizer.warmup_steps = 10
  c.optimizer.warmup_factor = 1.0 / 3.0
  c.optimizer.lr_decay_epochs = ()
  c.optimizer.lr_decay_steps = (160,)
  c.optimizer.bias_decay = False
  c.optimizer.grad_clip_norm = 10.0
  c.checkpoint.every_steps = 50
  return c
