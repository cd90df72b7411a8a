"""torchvision Faster R-CNN FPN state dicts -> converted folders -> our model.

torchvision's own fasterrcnn_resnet50_fpn / _v2 with random weights, saved
with ``torch.save(model.state_dict())`` as the downloaded files are, go
through ``python -m frcnn_jax.weights convert``; the folder is read back by
eval_lib.load_for_inference (what eval.py / demo.py do) and every variable
must be the torch array in our layout. Also: the kind is read from the
keys, a wrong kind / broken file is refused with every problem named, the
91 COCO slots map to the COCO reader's classes by name, and init_from a
torchvision .pth fine-tunes to other classes.
"""
import os

import numpy as np
import pytest
from flax import nnx

from configs import coco_r50_fpn
from configs import voc0712_r50_fpn
from frcnn_jax import eval_lib
from frcnn_jax import weights as wt
from frcnn_jax.data import class_names
from frcnn_jax.modeling import detector
from frcnn_jax.weights import __main__ as weights_cli
from frcnn_jax.weights import torchvision_frcnn as tvf

torch = pytest.importorskip("torch")
tv_det = pytest.importorskip("torchvision.models.detection")

V1 = "torchvision_fasterrcnn_resnet50_fpn"
V2 = "torchvision_fasterrcnn_resnet50_fpn_v2"


@pytest.fixture(scope="module")
def v1_file(tmp_path_factory):
  torch.manual_seed(0)
  m = tv_det.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
  with torch.no_grad():   # Distinct BatchNorm statistics, to be seen.
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.5, 0.5)
        mod.running_var.uniform_(0.5, 2.0)
  path = str(tmp_path_factory.mktemp("tv") / "fasterrcnn_v1.pth")
  sd = m.state_dict()
  torch.save(sd, path)
  return path, {k: v.numpy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def v2_state_dict():
  torch.manual_seed(1)
  m = tv_det.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None,
                                        num_classes=5)
  return {k: v.numpy() for k, v in m.state_dict().items()}


def test_convert_and_load_round_trip(v1_file, tmp_path, capsys):
  path, sd = v1_file
  out = str(tmp_path / "converted")
  assert weights_cli.main(["convert", f"--from={path}", f"--kind={V1}",
                           f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert "configs/coco_r50_fpn.py" in printed and "91 class slots" in printed
  config = coco_r50_fpn.get_config()
  graphdef, params, rest, step, names = eval_lib.load_for_inference(
      config, out)
  assert step == 0 and names == list(class_names.TORCHVISION_COCO_CATEGORIES)
  model = nnx.merge(graphdef, params, rest)
  spec = tvf.fpn_torch_spec(model)
  used = {s.key for s in spec.values()}
  assert used == {k for k in sd if not k.endswith("num_batches_tracked")}
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  for p, src in spec.items():
    np.testing.assert_array_equal(np.asarray(flat[p][...]),
                                  src.to_ours(sd[src.key]), err_msg=src.key)
  # The first fc takes torch's (c, h, w) flatten: rows permuted, not copied.
  fc6 = np.asarray(model.box_head.fc6.kernel[...])
  assert not np.array_equal(fc6, sd["roi_heads.box_head.fc6.weight"].T)
  # A C4 config is refused with the keys to change.
  with pytest.raises(wt.ConfigMismatchError, match="model.arch"):
    eval_lib.load_for_inference(coco_r50_fpn.common.base_config("resnet50"),
                                out)


def test_kind_from_keys_and_wrong_kind(v1_file, v2_state_dict, tmp_path):
  path, sd = v1_file
  assert wt.guess_kind(sd) == (V1, [])
  assert wt.guess_kind(v2_state_dict) == (V2, [])
  info = tvf.analyze_state_dict(v2_state_dict)
  assert (info.variant, info.backbone, info.num_classes) == ("v2", "resnet50",
                                                             5)
  with pytest.raises(ValueError, match=f"--kind={V1}"):
    wt.convert_file(path, V2, str(tmp_path / "x"))
  # 5 slots need names: a wrong count is refused.
  p2 = str(tmp_path / "v2.pth")
  torch.save({k: torch.from_numpy(v) for k, v in v2_state_dict.items()}, p2)
  with pytest.raises(ValueError, match="5 class slots"):
    wt.convert_file(p2, V2, str(tmp_path / "y"), classes="a,b")
  msg = wt.convert_file(p2, "", str(tmp_path / "z"), classes="a,b,c,d")
  assert "v2" in msg


def test_broken_state_dict_lists_every_problem(v1_file):
  _, sd = v1_file
  bad = dict(sd)
  del bad["rpn.head.cls_logits.weight"]
  bad["extra.weight"] = np.zeros(3, np.float32)
  bad["backbone.fpn.layer_blocks.0.0.weight"] = np.zeros((1, 1, 1, 1),
                                                         np.float32)
  with pytest.raises(wt.WeightImportError) as e:
    tvf.model_from_state_dict(bad)
  text = str(e.value)
  for k in ("rpn.head.cls_logits.weight", "extra.weight",
            "backbone.fpn.layer_blocks.0.0.weight"):
    assert k in text


def test_coco91_slots_map_to_dataset_classes():
  names = list(class_names.TORCHVISION_COCO_CATEGORIES)
  dataset = [class_names.BACKGROUND] + list(class_names.COCO_CLASSES)
  cmap = eval_lib.class_map_by_name(names, dataset)
  assert cmap.shape == (91,) and cmap[0] == 0
  assert (cmap == -1).sum() == names.count("N/A") == 10
  # Slot 1 person -> class 1; slot 13 stop sign -> class 12 (slot 12 N/A).
  assert cmap[1] == 1 and cmap[12] == -1 and cmap[13] == 12
  assert cmap[90] == 80 and sorted(cmap[cmap > 0]) == list(range(1, 81))
  preds = dict(classes=np.array([[1, 12, 90, 0]]),
               valid=np.array([[True, True, True, False]]))
  out = eval_lib.remap_classes(preds, cmap)
  np.testing.assert_array_equal(out["classes"], [[1, 0, 80, 0]])
  np.testing.assert_array_equal(out["valid"], [[True, False, True, False]])
  assert eval_lib.class_map_by_name(dataset, dataset) is None
  with pytest.raises(ValueError, match="do not name"):
    eval_lib.class_map_by_name(names[:50], dataset)


def test_init_from_torchvision_pth_fine_tunes(v1_file):
  path, sd = v1_file
  config = voc0712_r50_fpn.get_config()
  config.init_from = path
  model = detector.build_detector(config, 21)
  before = np.asarray(model.box_predictor.cls_score.kernel[...]).copy()
  msg = wt.initialize_model(model, config)
  assert "torchvision Faster R-CNN FPN v1" in msg
  np.testing.assert_array_equal(
      np.asarray(model.rpn.cls_logits.kernel[...]),
      sd["rpn.head.cls_logits.weight"].transpose(2, 3, 1, 0))
  # 21 classes, not 91: the predictor keeps its initialisation.
  np.testing.assert_array_equal(
      np.asarray(model.box_predictor.cls_score.kernel[...]), before)
  c4 = coco_r50_fpn.common.base_config("resnet50")
  c4.init_from = path
  with pytest.raises(wt.ConfigMismatchError, match="model.arch"):
    wt.initialize_model(detector.build_detector(c4, 21), c4)
  assert os.path.exists(path)
