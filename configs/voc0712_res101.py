"""PASCAL VOC 2007+2012 trainval -> 2007 test, resnet101 (see pascal_voc.py)."""

from configs import pascal_voc


def get_config():
  return pascal_voc.voc_config("resnet101", years="0712")
