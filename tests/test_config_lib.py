"""config_lib.validate on the FPN configs (and that the C4 ones still pass)."""
import importlib

import pytest

from frcnn_jax import config_lib

FPN = ["coco_r50_fpn", "coco_r50_fpn_v2", "voc0712_r50_fpn", "tiny_fpn"]
C4 = ["coco_res50", "coco_res101", "voc07_vgg16", "tiny", "shapes"]


def load(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", FPN + C4)
def test_shipped_configs_validate(name):
  config_lib.validate(load(name), check_paths=False)


def test_fpn_schedule_is_torchvisions():
  c = load("coco_r50_fpn")
  assert (c.train.batch_size, c.optimizer.lr, c.train.num_epochs) == (
      16, 0.02, 26)
  assert tuple(c.optimizer.lr_decay_epochs) == (16, 22)
  assert c.optimizer.warmup_steps == 1000 and c.model.arch == "fpn"
  assert (c.data.scale, c.data.max_size, c.data.resize) == (
      800, 1333, "torchvision")


def test_fpn_errors_are_named():
  c = load("coco_r50_fpn")
  c.fpn.variant = "v3"
  c.data.buckets = ((800, 1344), (1344, 816))
  c.rpn.conv_channels = 512
  c.roi.sampling_ratio = 0
  c.data.resize = "nearest"
  c.fpn.anchor_sizes = (32, 64, 128)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, check_paths=False)
  text = str(e.value)
  for key in ("fpn.variant", "data.buckets[1]", "rpn.conv_channels",
              "roi.sampling_ratio", "data.resize", "fpn.anchor_sizes"):
    assert f"config.{key} =" in text, key
  assert "config.anchors.stride" not in text


def test_model_arch():
  c = load("coco_res50")
  c.model.arch = "fpn"   # No fpn sub-dict in a C4 config.
  with pytest.raises(config_lib.ConfigError, match="config.fpn: missing"):
    config_lib.validate(c, check_paths=False)
  c.model.arch = "retina"
  with pytest.raises(config_lib.ConfigError, match="model.arch"):
    config_lib.validate(c, check_paths=False)
  f = load("coco_r50_fpn")
  f.backbone.name = "vgg16"
  with pytest.raises(config_lib.ConfigError, match="ResNet body"):
    config_lib.validate(f, check_paths=False)
