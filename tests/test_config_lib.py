"""Configs by name or path, absolute paths, configs read back from a run.

(The value checks of ``config_lib.validate`` are exercised by the jobs'
tests; here: finding, loading, recording, the data-path checks, and the
FPN configs' values.)
"""
import json
import os

import numpy as np
import pytest

from frcnn_jax import checkpoints
from frcnn_jax import config_lib
from frcnn_jax import paths
from frcnn_jax.data import catalog
from frcnn_jax.data.class_names import COCO_CLASSES
from frcnn_jax.data.class_names import VOC_CLASSES
from tests.conftest import REPO

BUILTIN = os.path.join(REPO, "configs")


def test_builtin_configs_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for spelling in ("tiny", "tiny.py", "configs/tiny.py"):
    assert config_lib.find_config_file(spelling) == os.path.join(BUILTIN,
                                                                 "tiny.py")
  names = config_lib.builtin_config_names()
  assert {"shapes", "tiny", "voc07_res101", "coco_res101_ls"} <= set(names)
  assert not {"common", "coco_common", "pascal_voc", "__init__"} & set(names)
  with pytest.raises(FileNotFoundError, match="built-in: .*voc07_res101"):
    config_lib.find_config_file("voc07_res10")
  with pytest.raises(FileNotFoundError):
    config_lib.find_config_file("elsewhere/tiny.py")  # only configs/<name>


def test_a_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  mine = tmp_path / "configs" / "tiny.py"
  mine.write_text("from configs import tiny\n"
                  "def get_config():\n"
                  "  c = tiny.get_config()\n"
                  "  c.train.num_steps = 7\n"
                  "  return c\n")
  assert config_lib.find_config_file("configs/tiny.py") == str(mine)
  assert config_lib.load_config("configs/tiny.py").train.num_steps == 7
  assert config_lib.load_config("tiny").train.num_steps == 200


def test_load_config_overrides_and_absolute_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = config_lib.load_config("tiny", {"train.num_steps": 5,
                                      "data.root": "my/data",
                                      "init_from": "~/w.pth"}, check=False)
  assert c.train.num_steps == 5
  assert c.data.root == str(tmp_path / "my" / "data")
  assert c.init_from == os.path.expanduser("~/w.pth")
  assert c.is_locked
  with pytest.raises(KeyError, match="train.num_stepz"):
    config_lib.load_config("tiny", {"train.num_stepz": 5})
  with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
    config_lib.load_config("tiny", {"train.batch_size": 0})


@pytest.mark.parametrize("name", config_lib.builtin_config_names())
def test_every_builtin_config_survives_its_json(name):
  """What a run records (config.json, checkpoint meta) reads back equal."""
  c = config_lib.load_config(name, check=False)
  back = config_lib.config_from_dict(c.to_json_best_effort())
  assert back == c and back.is_locked
  assert isinstance(back.data.buckets[0], tuple)


def test_resolve_paths():
  c = config_lib.load_config("tiny", check=False)
  c.data.root = "a/b"
  c.init_from = ""
  c.data.tfds_data_dir = "gs://bucket/tfds"
  c.data.train_json = "/abs/x.json"
  out = paths.resolve_paths(c, base="/base")
  assert out.data.root == "/base/a/b"
  assert out.init_from == ""                       # not set stays not set
  assert out.data.tfds_data_dir == "gs://bucket/tfds"
  assert out.data.train_json == "/abs/x.json"
  assert c.data.root == "a/b"                      # a copy
  assert paths.resolve_paths(out, base="/other") == out   # idempotent
  assert paths.relative_path_keys(c) == ["data.root"]
  assert paths.relative_path_keys(out) == []


def test_recorded_config_of_a_workdir(tmp_path):
  c = config_lib.load_config("tiny", {"data.root": str(tmp_path / "d")})
  (tmp_path / "w1").mkdir()
  (tmp_path / "w1" / "config.json").write_text(c.to_json_best_effort())
  assert config_lib.recorded_config(str(tmp_path / "w1")) == c
  # A checkpoint's meta wins over config.json (it is per step).
  c2 = config_lib.load_config("tiny", {"train.num_steps": 3})
  checkpoints.save_model_checkpoint({"x": np.zeros(2)},
                                    str(tmp_path / "w1"),
                                    {"config": c2.to_json_best_effort()})
  assert config_lib.recorded_config(str(tmp_path / "w1")).train.num_steps == 3
  assert config_lib.recorded_config(str(tmp_path / "nothing")) is None


def test_converted_detector_config():
  voc = {"kind": "faster_rcnn_pytorch_res101",
         "class_names": ["__background__"] + list(VOC_CLASSES),
         "implied_config": {"roi.pooling_mode": "pool", "num_anchors": 9,
                            "model.pixel_mean": [102.9801, 115.9465,
                                                 122.7717]}}
  c = config_lib.converted_detector_config(voc)
  assert c.data.name == "voc" and c.backbone.name == "resnet101"
  assert c.roi.pooling_mode == "pool"      # what the weights imply
  coco = dict(voc, kind="faster_rcnn_pytorch_vgg16", class_names=[
      "__background__"] + list(COCO_CLASSES), implied_config={
          "num_anchors": 12})
  c = config_lib.converted_detector_config(coco)
  assert c.data.name == "coco" and c.backbone.name == "vgg16"
  assert tuple(c.anchors.scales) == (4, 8, 16, 32)
  with pytest.raises(ValueError, match="not a converted"):
    config_lib.converted_detector_config({"class_names": ["a"]})


def test_data_path_checks(tmp_path):
  c = config_lib.load_config("tiny", check=False)
  c.data.train_json = str(tmp_path / "missing.json")
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert "data.train_json" in str(e.value) and "needs data.name='coco'" in \
      str(e.value) and "file not found" in str(e.value)
  (tmp_path / "t.json").write_text("{}")
  c.data.name = "coco"
  c.data.train_json = str(tmp_path / "t.json")
  config_lib.validate(c)            # data.root is not needed for training
  c.data.train_images = str(tmp_path / "nope")
  with pytest.raises(config_lib.ConfigError, match="data.train_images"):
    config_lib.validate(c)
  c.data.name = "pets"
  with pytest.raises(config_lib.ConfigError, match="data.name"):
    config_lib.validate(c, check_paths=False)
  catalog.register_dataset("pets", {"train": []}, ["cat"])
  try:
    config_lib.validate(c, check_paths=False)
  finally:
    catalog.unregister_dataset("pets")


FPN = ["coco_r50_fpn", "coco_r50_fpn_v2", "voc0712_r50_fpn", "tiny_fpn"]
C4 = ["coco_res50", "coco_res101", "voc07_vgg16", "tiny", "shapes"]


def load(name):
  return config_lib.load_config(name, check=False)


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
