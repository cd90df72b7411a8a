"""COCO train2017 -> val2017, resnet152, 600 / 1000 (see coco_common.py)."""

from configs import coco_common


def get_config():
  return coco_common.coco_config("resnet152")
