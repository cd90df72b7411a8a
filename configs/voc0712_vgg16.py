"""PASCAL VOC 2007+2012 trainval -> 2007 test, vgg16 (see pascal_voc.py)."""

from configs import pascal_voc


def get_config():
  return pascal_voc.voc_config("vgg16", years="0712")
