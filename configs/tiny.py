"""A seconds-long smoke run: a very small net on a 24-image synthetic set.

Used by the end-to-end tests; handy to check an installation:
  python train.py --config=configs/tiny.py && python eval.py --config=configs/tiny.py
"""

from configs import shapes


def get_config():
  c = shapes.get_config()
  c.data.root = "data/tiny_shapes"
  c.data.scale = 64
  c.data.max_size = 128
  c.data.buckets = ((64, 128), (128, 64))
  c.data.max_num_box = 6
  c.data.num_threads = 1
  c.data.shapes.num_train = 24
  c.data.shapes.num_val = 8
  c.data.shapes.min_image_size = 48
  c.data.shapes.max_image_size = 80
  c.data.shapes.min_object_size = 16
  c.data.shapes.max_objects = 2
  c.backbone.tiny_widths = (8, 16, 16, 32)
  c.backbone.gn_groups = 4
  c.anchors.scales = (1, 2, 4)
  c.rpn.conv_channels = 32
  c.rpn.pre_nms_top_n = 200
  c.rpn.post_nms_top_n = 50
  c.rpn.batch_size = 64
  c.test.rpn_pre_nms_top_n = 200
  c.test.rpn_post_nms_top_n = 30
  c.test.max_detections = 20
  c.test.batch_size = 4
  c.roi.batch_size = 32
  c.roi.fg_fraction = 0.5
  c.train.batch_size = 4
  c.train.num_steps = 200
  c.train.log_every = 10
  c.optimizer.lr = 0.04
  c.optimizer.warmup_steps = 10
  c.optimizer.lr_decay_steps = (160,)
  c.checkpoint.every_steps = 50
  return c
