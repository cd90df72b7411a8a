"""faster-rcnn.pytorch detector import, config checks and init_from.

A module tree with faster-rcnn.pytorch's parameter names and shapes (a
reduced-width caffe-style ResNet base/top, RPN_Conv / RPN_cls_score /
RPN_bbox_pred with the seed's reshape-softmax, RCNN_cls_score /
RCNN_bbox_pred) is built here in plain torch with random weights and
non-trivial BatchNorm statistics, saved as a `faster_rcnn_1_1_1.pth`-style
dict, converted, and compared with our detector on the same inputs. The
reduced widths come from patching `backbones.RESNET_WIDTHS` /
`RESNET_STAGE_BLOCKS` (the builders read them at call time), so the real
`resnet101` code path is exercised at a size a CPU test can afford.
"""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from frcnn_jax import checkpoints
from frcnn_jax import eval_lib
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import train_lib
from frcnn_jax.modeling import backbones as bb
from frcnn_jax.modeling import detector
from frcnn_jax.modeling import roi_heads
from frcnn_jax import weights as wt
from frcnn_jax.weights import __main__ as weights_cli

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from tests.weights.test_backbone import TorchResNet, nhwc, randomize, rel_err  # noqa: E402

RTOL = 1e-4
REAL_BLOCKS = dict(bb.RESNET_STAGE_BLOCKS)
REAL_WIDTHS = bb.RESNET_WIDTHS
# Small stand-ins for the three depths (distinct, so depth detection works).
SMALL_BLOCKS = {"resnet50": (1, 1, 1, 1), "resnet101": (1, 2, 1, 2),
                "resnet152": (1, 2, 2, 1)}
WIDTHS = (8, 16, 24, 32)          # trunk 96 channels, head 128
RPN_CHANNELS = 16
CLASSES = "cat,dog,bird,fish"     # K = 5 with background
PIXEL_MEANS = np.array([102.9801, 115.9465, 122.7717], np.float32)  # BGR


@pytest.fixture(scope="module", autouse=True)
def small_resnets():
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(bb, "RESNET_WIDTHS", WIDTHS)
    mp.setattr(bb, "RESNET_STAGE_BLOCKS", SMALL_BLOCKS)
    yield


# ----------------------------------------------------------------------------
# faster-rcnn.pytorch's detector tree (names and shapes), in plain torch
# ----------------------------------------------------------------------------


class TorchRPN(nn.Module):
  """The seed's _RPN (parameters and forward up to the proposal layer)."""

  def __init__(self, din, channels, num_anchors):
    super().__init__()
    self.nc_score_out = 2 * num_anchors
    self.RPN_Conv = nn.Conv2d(din, channels, 3, 1, 1, bias=True)
    self.RPN_cls_score = nn.Conv2d(channels, self.nc_score_out, 1, 1, 0)
    self.RPN_bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1, 1, 0)

  @staticmethod
  def reshape(x, d):
    s = x.size()
    return x.view(s[0], int(d), int(float(s[1] * s[2]) / float(d)), s[3])

  def forward(self, base_feat):
    conv = F.relu(self.RPN_Conv(base_feat))
    score = self.RPN_cls_score(conv)
    prob = self.reshape(F.softmax(self.reshape(score, 2), 1),
                        self.nc_score_out)
    return prob, self.RPN_bbox_pred(conv)


class TorchFasterRCNN(nn.Module):
  """faster-rcnn.pytorch's resnet detector: RCNN_base/top/rpn/cls/bbox."""

  def __init__(self, n_classes, class_agnostic=False, layers=(1, 2, 1, 2),
               num_anchors=9):
    super().__init__()
    r = TorchResNet(layers, WIDTHS, caffe=True)
    self.RCNN_base = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool,
                                   r.layer1, r.layer2, r.layer3)
    self.RCNN_top = nn.Sequential(r.layer4)
    self.RCNN_rpn = TorchRPN(WIDTHS[2] * 4, RPN_CHANNELS, num_anchors)
    d = WIDTHS[3] * 4
    self.RCNN_cls_score = nn.Linear(d, n_classes)
    self.RCNN_bbox_pred = nn.Linear(d, 4 if class_agnostic else 4 * n_classes)

  def head(self, pooled_nchw):
    fc7 = self.RCNN_top(pooled_nchw).mean(3).mean(2)  # _head_to_tail
    return self.RCNN_cls_score(fc7), self.RCNN_bbox_pred(fc7)


def save_frcnn(det, path, pooling_mode="align", class_agnostic=False):
  opt = torch.optim.SGD(det.parameters(), lr=0.01, momentum=0.9)
  torch.save({"session": 1, "epoch": 1, "model": det.state_dict(),
              "optimizer": opt.state_dict(), "pooling_mode": pooling_mode,
              "class_agnostic": class_agnostic}, path)
  return str(path)


def small_config(backbone="resnet101", num_anchor_scales=3):
  c = common.base_config(backbone)
  c.rpn.conv_channels = RPN_CHANNELS
  c.anchors.scales = (2, 4, 8, 16)[:num_anchor_scales]
  c.test.rpn_pre_nms_top_n = 60
  c.test.rpn_post_nms_top_n = 12
  c.test.max_detections = 8
  return c


def flat(model):
  return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def assert_same_weights(a, b, skip=()):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for p in fa:
    if tuple(p[:2]) in skip:
      continue
    np.testing.assert_array_equal(fa[p], fb[p], err_msg=str(p))


@pytest.fixture(scope="module")
def tdet():
  torch.manual_seed(0)
  return randomize(TorchFasterRCNN(5), seed=21)


@pytest.fixture(scope="module")
def pth(tdet, tmp_path_factory):
  return save_frcnn(tdet, tmp_path_factory.mktemp("frcnn") /
                    "faster_rcnn_1_1_1.pth")


@pytest.fixture(scope="module")
def converted(pth, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("conv") / "r101_voc")
  assert weights_cli.main(["convert", f"--from={pth}", "--kind=faster_rcnn_pytorch_res101",
                  f"--classes={CLASSES}", f"--out={out}"]) == 0
  return out


@pytest.fixture(scope="module")
def ours(tdet):
  """Our detector (K=5) loaded straight from the torch state dict."""
  model = detector.build_detector(small_config(), 5)
  assert wt.load_detector_state_dict(model, tdet.state_dict()) == []
  return model


# ----------------------------------------------------------------------------
# Numerical equality with the torch tree
# ----------------------------------------------------------------------------


def test_features_rpn_and_rcnn_match_torch(tdet, ours):
  rng = np.random.default_rng(0)
  # 65: the caffe max pool (ceil, no padding) gives 16 rows, torchvision's 17.
  x = rng.standard_normal((2, 3, 65, 83)).astype(np.float32) * 50
  with torch.no_grad():
    t_feat = tdet.RCNN_base(torch.from_numpy(x))
    t_prob, t_box = tdet.RCNN_rpn(t_feat)
  feats = ours.backbone.trunk(jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert feats.shape == (2, 4, 6, WIDTHS[2] * 4)
  assert rel_err(feats, nhwc(t_feat)) < RTOL

  # RPN on identical features: the seed's reshape-softmax probabilities.
  logits, deltas = ours.rpn(jnp.asarray(nhwc(t_feat)))
  a = 9
  p = t_prob.numpy()
  t_bg = p[:, :a].transpose(0, 2, 3, 1).reshape(2, -1)
  t_fg = p[:, a:].transpose(0, 2, 3, 1).reshape(2, -1)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  assert probs.shape == (2, 4 * 6 * a, 2)
  assert rel_err(probs[..., 0], t_bg) < RTOL
  assert rel_err(probs[..., 1], t_fg) < RTOL
  assert rel_err(deltas, t_box.numpy().transpose(0, 2, 3, 1).reshape(2, -1, 4)) < RTOL
  # The fg scores are not all alike (the comparison is not vacuous).
  assert np.std(t_fg) > 1e-3

  # RCNN for the same RoIs: our pooling feeds both heads.
  rois = jnp.asarray(np.array(
      [[[0, 0, 40, 30], [10, 5, 70, 60], [30, 20, 82, 64]],
       [[5, 5, 20, 25], [0, 10, 82, 40], [50, 0, 60, 64]]], np.float32))
  scores, box = ours._box_head(feats, rois, None, train=False)
  pooled = roi_heads.pool_rois(feats, rois, mode="align", output_size=7,
                               spatial_scale=1 / 16, sampling_ratio=0)
  pooled = np.array(pooled).reshape(6, 7, 7, -1).transpose(0, 3, 1, 2).copy()
  with torch.no_grad():
    t_cls, t_bbox = tdet.head(torch.from_numpy(pooled))
  assert rel_err(scores.reshape(6, 5), t_cls.numpy()) < RTOL
  assert rel_err(box.reshape(6, 5, 4), t_bbox.numpy().reshape(6, 5, 4)) < RTOL
  assert rel_err(jax.nn.softmax(scores.reshape(6, 5), -1),
                 F.softmax(t_cls, 1).numpy()) < RTOL


def test_class_agnostic_and_twelve_anchors():
  tnet = randomize(TorchFasterRCNN(3, class_agnostic=True, num_anchors=12),
                   seed=4)
  info = wt.analyze_detector_state_dict(tnet.state_dict())
  assert (info.backbone, info.num_classes, info.class_agnostic,
          info.num_anchors, info.rpn_channels) == ("resnet101", 3, True, 12,
                                                   RPN_CHANNELS)
  c = small_config(num_anchor_scales=4)
  c.roi.class_agnostic = True
  model = nnx.eval_shape(lambda: detector.build_detector(c, 3))
  spec = wt.detector_torch_spec(model)
  assert spec[("box_predictor", "bbox_pred", "kernel")].torch_shape == (4, 128)
  assert spec[("rpn", "cls_score", "kernel")].torch_shape == (24, RPN_CHANNELS, 1, 1)
  model = detector.build_detector(c, 3)
  wt.load_detector_state_dict(model, tnet.state_dict())
  pooled = np.random.default_rng(1).standard_normal((4, 96, 7, 7)).astype(np.float32)
  with torch.no_grad():
    t_cls, t_box = tnet.head(torch.from_numpy(pooled))
  s, d = model.box_predictor(model.backbone.head(jnp.asarray(pooled.transpose(0, 2, 3, 1))))
  assert d.shape == (4, 1, 4)
  assert rel_err(s, t_cls.numpy()) < RTOL
  assert rel_err(d[:, 0], t_box.numpy()) < RTOL


def fake_arrays(shapes):
  """Zero-stride arrays of the given shapes (no memory)."""
  return {k: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), s,
                                             [0] * len(s))
          for k, s in shapes.items()}


def test_full_size_key_names_and_shapes():
  """Every key of full-size faster-rcnn.pytorch trees maps, both ways."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(bb, "RESNET_WIDTHS", REAL_WIDTHS)
    mp.setattr(bb, "RESNET_STAGE_BLOCKS", REAL_BLOCKS)
    for name, blocks in REAL_BLOCKS.items():
      with torch.device("meta"):
        r = TorchResNet(blocks, (64, 128, 256, 512), caffe=True)
        tree = nn.Module()
        tree.RCNN_base = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool,
                                       r.layer1, r.layer2, r.layer3)
        tree.RCNN_top = nn.Sequential(r.layer4)
        tree.RCNN_rpn = TorchRPN(1024, 512, 9)
        tree.RCNN_cls_score = nn.Linear(2048, 21)
        tree.RCNN_bbox_pred = nn.Linear(2048, 84)
      sd = {k: tuple(v.shape) for k, v in tree.state_dict().items()
            if not k.endswith("num_batches_tracked")}
      info = wt.analyze_detector_state_dict(fake_arrays(sd))
      assert info.backbone == name and info.num_classes == 21
      assert wt.guess_kind(fake_arrays(sd)) == (
          wt.detector_kind_for_backbone(name), [])
      spec = wt.detector_torch_spec(wt.detector_for_checkpoint(info))
      assert {s.key: s.torch_shape for s in spec.values()} == sd
    # VGG16: RCNN_base = features[:-1], RCNN_top = classifier[:-1].
    from tests.weights.test_backbone import TorchVGG  # pylint: disable=g-import-not-at-top
    with torch.device("meta"):
      v = TorchVGG((64, 128, 256, 512, 512), 4096, num_classes=1000)
      tree = nn.Module()
      tree.RCNN_base = v.features[:-1]
      tree.RCNN_top = v.classifier[:-1]
      tree.RCNN_rpn = TorchRPN(512, 512, 12)
      tree.RCNN_cls_score = nn.Linear(4096, 81)
      tree.RCNN_bbox_pred = nn.Linear(4096, 324)
    sd = {k: tuple(t.shape) for k, t in tree.state_dict().items()}
    fake = fake_arrays(sd)
    info = wt.analyze_detector_state_dict(fake)
    assert (info.backbone, info.num_classes, info.num_anchors,
            info.head_channels) == ("vgg16", 81, 12, 4096)
    assert wt.guess_kind(fake) == ("faster_rcnn_pytorch_vgg16", [])
    spec = wt.detector_torch_spec(wt.detector_for_checkpoint(info))
    assert {s.key: s.torch_shape for s in spec.values()} == sd


# ----------------------------------------------------------------------------
# Convert -> eval_lib.load_for_inference -> predict
# ----------------------------------------------------------------------------


def test_convert_then_load_for_inference(tdet, converted):
  meta = checkpoints.Checkpointer(os.path.join(converted, "checkpoints"),
                                read_only=True, async_save=False).read_meta()
  assert meta["class_names"] == ["__background__", "cat", "dog", "bird", "fish"]
  assert meta["kind"] == "faster_rcnn_pytorch_res101"
  assert meta["num_classes"] == 5
  implied = meta["implied_config"]
  assert implied["roi.class_agnostic"] is False
  assert implied["roi.pooling_mode"] == "align"
  assert implied["num_anchors"] == 9 and implied["rpn.conv_channels"] == RPN_CHANNELS
  assert implied["backbone.stride_in_1x1"] is True and implied["model.bgr"] is True
  assert meta["checkpoint"]["epoch"] == 1
  assert not os.path.exists(os.path.join(converted, "checkpoints", "0", "train"))

  config = small_config()
  wt.check_config_against_checkpoint(config, meta)  # agrees: no error
  graphdef, params, rest, step, names = eval_lib.load_for_inference(
      config, converted)
  assert step == 0 and names == meta["class_names"]
  model = nnx.merge(graphdef, params, rest)

  # End to end with the caffe preprocessing: RGB uint8 in, BGR - means out.
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (1, 67, 83, 3), dtype=np.uint8)
  info = np.array([[67, 83, 1.0]], np.float32)
  bgr = img[..., ::-1].astype(np.float32) - PIXEL_MEANS
  with torch.no_grad():
    t_feat = tdet.RCNN_base(torch.from_numpy(bgr.transpose(0, 3, 1, 2).copy()))
  feats = model.backbone.trunk(model.preprocess(jnp.asarray(img), jnp.asarray(info)))
  assert rel_err(feats, nhwc(t_feat)) < RTOL

  out = jax.jit(lambda m, x, i: m.predict(x, i))(model, jnp.asarray(img),
                                                 jnp.asarray(info))
  assert out["boxes"].shape == (1, 8, 4)
  for k in ("boxes", "scores"):
    assert np.all(np.isfinite(np.asarray(out[k])))
  assert np.asarray(out["valid"]).any()
  assert set(np.asarray(out["classes"])[np.asarray(out["valid"])]) <= {1, 2, 3, 4}

  with pytest.raises(ValueError, match="trained for 5 classes"):
    eval_lib.load_for_inference(config, converted, num_classes=21)


def test_config_disagreements_are_named(converted):
  meta = checkpoints.Checkpointer(os.path.join(converted, "checkpoints"),
                                read_only=True, async_save=False).read_meta()
  c = small_config()
  c.roi.class_agnostic = True
  c.roi.pooling_mode = "pool"
  with pytest.raises(wt.ConfigMismatchError) as e:
    wt.check_config_against_checkpoint(c, meta, where="DIR")
  msg = str(e.value)
  assert "roi.class_agnostic: config True, weights False" in msg
  assert "--config.roi.class_agnostic=False" in msg
  assert "--config.roi.pooling_mode=align" in msg
  c = small_config("resnet50")   # torchvision preprocessing, stride on 3x3
  from configs import pascal_voc  # pylint: disable=g-import-not-at-top
  c.model = pascal_voc.voc_config("resnet50").model
  with pytest.raises(wt.ConfigMismatchError) as e:
    wt.check_config_against_checkpoint(c, meta)
  msg = str(e.value)
  for s in ("backbone.name", "--config.backbone.stride_in_1x1=True",
            "--config.model.bgr=True",
            '--config.model.pixel_mean="(102.9801, 115.9465, 122.7717)"'):
    assert s in msg
  # 'crop' (not implemented here) is only a warning.
  meta = dict(meta, checkpoint={"pooling_mode": "crop"})
  wt.check_config_against_checkpoint(small_config(), meta)
  # A training run's meta records its whole config (JSON): the same keys.
  trained = small_config()
  trained.roi.pooling_mode = "pool"
  trained.anchors.scales = (4, 8, 16, 32)
  implied = wt.implied_config_from_meta({"config": trained.to_json_best_effort()})
  assert implied["roi.pooling_mode"] == "pool" and implied["num_anchors"] == 12
  with pytest.raises(wt.ConfigMismatchError, match="num_anchors: config 9, weights 12"):
    wt.check_config_against_checkpoint(
        small_config(), {"config": trained.to_json_best_effort()})
  wt.check_config_against_checkpoint(trained, {"config": trained.to_json_best_effort()})
  wt.check_config_against_checkpoint(small_config(), {})  # nothing recorded


def test_inspect_command(pth, capsys):
  assert weights_cli.main(["inspect", f"--from={pth}"]) == 0
  out = capsys.readouterr().out
  assert "resnet101, 5 classes" in out and "kind: faster_rcnn_pytorch_res101" in out
  assert "'pooling_mode': 'align'" in out


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def test_missing_and_mismatched_keys_listed(tdet):
  sd = {k: v.numpy().copy() for k, v in tdet.state_dict().items()}
  del sd["RCNN_rpn.RPN_Conv.bias"]
  sd["RCNN_top.0.1.bn2.running_var"] = np.ones(7, np.float32)
  sd["RCNN_extra.weight"] = np.ones(2, np.float32)
  model = detector.build_detector(small_config(), 5)
  before = flat(model)
  with pytest.raises(wt.WeightImportError) as e:
    wt.load_detector_state_dict(model, sd)
  err = e.value
  assert err.missing == ["RCNN_rpn.RPN_Conv.bias"]
  assert err.unexpected == ["RCNN_extra.weight"]
  assert err.mismatched == [("RCNN_top.0.1.bn2.running_var", (7,), (32,))]
  assert "ResNet" in str(err) or "resnet101" in str(err)
  after = flat(model)
  for p in before:  # unchanged on failure
    np.testing.assert_array_equal(before[p], after[p])
  # A model for another number of classes: the head shapes are listed.
  other = nnx.eval_shape(lambda: detector.build_detector(small_config(), 21))
  with pytest.raises(wt.WeightImportError, match=r"RCNN_cls_score\.weight: \(5, 128\) vs \(21, 128\)"):
    wt.load_detector_state_dict(other, tdet.state_dict())


def test_wrong_classes_kind_and_architecture(pth, tmp_path):
  with pytest.raises(ValueError, match=r"gives 21 classes.*checkpoint has 5"):
    weights_cli.main(["convert", f"--from={pth}", "--kind=faster_rcnn_pytorch_res101",
             "--classes=voc", f"--out={tmp_path / 'a'}"])
  with pytest.raises(ValueError, match="needs --classes"):
    weights_cli.main(["convert", f"--from={pth}", f"--out={tmp_path / 'a'}"])
  with pytest.raises(ValueError, match="--kind=faster_rcnn_pytorch_res101"):
    weights_cli.main(["convert", f"--from={pth}", "--kind=faster_rcnn_pytorch_res50",
             f"--classes={CLASSES}", f"--out={tmp_path / 'b'}"])
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
  assert len(wt.resolve_class_names("voc", 21)) == 21
  assert wt.resolve_class_names("coco", 81)[1:3] == ["person", "bicycle"]
  from frcnn_jax.data import voc  # pylint: disable=g-import-not-at-top
  assert tuple(wt.VOC_CLASSES[1:]) == voc.VOC_CLASSES
  with pytest.raises(ValueError, match="duplicate"):
    wt.resolve_class_names("a,b,a")
  c = small_config()
  c.backbone.stride_in_1x1 = False
  model = nnx.eval_shape(lambda: detector.build_detector(c, 5))
  with pytest.raises(wt.ConfigMismatchError, match="stride_in_1x1=True"):
    wt.load_detector_state_dict(model, {})
  # Not a detector at all.
  with pytest.raises(wt.WeightImportError, match="not a faster-rcnn.pytorch"):
    wt.analyze_detector_state_dict({"conv1.weight": np.zeros((8, 3, 7, 7))})


# ----------------------------------------------------------------------------
# config.init_from, every accepted source
# ----------------------------------------------------------------------------


def test_init_from_detector_sources(tdet, pth, converted, ours, tmp_path, caplog):
  # A faster-rcnn.pytorch .pth: the kind is read from the keys.
  c = small_config()
  c.init_from = pth
  model = detector.build_detector(c, 5)
  assert "whole detector" in wt.initialize_model(model, c)
  assert_same_weights(model, ours)
  # The converted folder, and a train workdir.
  c.init_from = converted
  model = detector.build_detector(c, 5)
  wt.initialize_model(model, c)
  assert_same_weights(model, ours)
  tx, _ = optimizer_lib.make_optimizer(c.optimizer, 10)
  _, state = train_lib.create_train_state(ours, tx, 0)
  workdir = str(tmp_path / "run")
  ck = checkpoints.Checkpointer(checkpoints.checkpoint_dir(workdir), async_save=False)
  ck.save(7, state, {"class_names": ["__background__", "a", "b", "c", "d"],
                     "config": c.to_json_best_effort(), "data_iter": {}})
  ck.close()
  c.init_from = workdir
  model = detector.build_detector(c, 5)
  assert "step 7" in wt.initialize_model(model, c)
  assert_same_weights(model, ours)
  # Fine-tuning to 3 classes: the class/box layers keep their initialisation.
  fresh = detector.build_detector(c, 3)
  model = detector.build_detector(c, 3)
  for src in (pth, converted, workdir):
    c.init_from = src
    with caplog.at_level(logging.WARNING, logger="frcnn_jax.weights"):
      wt.initialize_model(model, c)
    assert "box_predictor.bbox_pred, box_predictor.cls_score" in caplog.text
    caplog.clear()
    heads = {("box_predictor", "cls_score"), ("box_predictor", "bbox_pred")}
    assert_same_weights(model, ours, skip=heads)
    f, m = flat(fresh), flat(model)
    for p in f:
      if tuple(p[:2]) in heads:
        np.testing.assert_array_equal(f[p], m[p])
  # The architecture must match: a torchvision-style stride is refused.
  c.init_from = converted
  c.backbone.stride_in_1x1 = False
  model = nnx.eval_shape(lambda: detector.build_detector(c, 5))
  with pytest.raises(wt.ConfigMismatchError, match="stride_in_1x1"):
    wt.initialize_model(model, c)
  c.backbone.stride_in_1x1 = True
  c.init_from_kind = "caffe_resnet101"
  with pytest.raises(ValueError, match="for .pth files"):
    wt.initialize_model(model, c)


def test_init_from_backbone_sources(tmp_path):
  tnet = randomize(TorchResNet((1, 2, 1, 2), WIDTHS, caffe=True), seed=9)
  path = str(tmp_path / "resnet101_caffe.pth")
  torch.save(tnet.state_dict(), path)
  ref = bb.build_backbone(wt.backbone_config_for_kind("caffe_resnet101"),
                          rngs=nnx.Rngs(0))
  wt.load_backbone_state_dict(ref, tnet.state_dict(), kind="caffe_resnet101")
  out = str(tmp_path / "r101_caffe")
  assert weights_cli.main(["convert", f"--from={path}", "--kind=caffe_resnet101",
                  f"--out={out}"]) == 0
  c = small_config()
  model = detector.build_detector(c, 5)
  rpn_before = flat(model.rpn)
  for src, kind in ((out, ""), (path, "caffe_resnet101")):
    c.init_from, c.init_from_kind = src, kind
    model = detector.build_detector(c, 5)
    assert "backbone" in wt.initialize_model(model, c)
    assert_same_weights(model.backbone, ref)
  for p, v in flat(model.rpn).items():  # the rest keeps its initialisation
    np.testing.assert_array_equal(v, rpn_before[p])
  # ResNet-101 keys do not tell caffe from torchvision: the kind is asked for.
  c.init_from, c.init_from_kind = path, ""
  with pytest.raises(ValueError, match="caffe_resnet101.*torchvision_resnet101"):
    wt.initialize_model(model, c)
  # The caffe weights with torchvision preprocessing: refused, fix named.
  c.init_from_kind = "caffe_resnet101"
  common.torchvision_preprocessing(c)
  with pytest.raises(wt.ConfigMismatchError, match="--config.model.bgr=True"):
    wt.initialize_model(model, c)
  # ResNet-50 ImageNet keys identify torchvision's file (no kind needed).
  tv = randomize(TorchResNet((1, 1, 1, 1), WIDTHS, caffe=False), seed=10)
  path50 = str(tmp_path / "resnet50.pth")
  torch.save(tv.state_dict(), path50)
  c = small_config("resnet50")
  common.torchvision_preprocessing(c)
  c.init_from = path50
  model = detector.build_detector(c, 5)
  assert "torchvision_resnet50" in wt.initialize_model(model, c)
  x = np.random.default_rng(2).standard_normal((1, 3, 35, 35)).astype(np.float32)
  with torch.no_grad():
    ref50 = nhwc(tv.trunk(torch.from_numpy(x)))
  assert rel_err(model.backbone.trunk(jnp.asarray(x.transpose(0, 2, 3, 1))), ref50) < RTOL
  c.init_from_kind = "no_such_kind"
  with pytest.raises(ValueError, match="unknown"):
    wt.initialize_model(model, c)
  c.init_from, c.init_from_kind = "", "caffe_resnet101"
  with pytest.raises(ValueError, match="needs config.init_from"):
    wt.initialize_model(model, c)
  c.init_from_kind = ""
  assert wt.initialize_model(model, c) is None
