"""COCO train2017 -> val2017, resnet101, 800 / 1200: the seed's --ls."""

from configs import coco_common


def get_config():
  return coco_common.coco_config("resnet101", large_scale=True)
