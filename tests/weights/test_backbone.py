"""Backbone weight import (frcnn_jax/weights.py) checked against PyTorch.

The torch networks are written here with torchvision's / faster-rcnn.pytorch's
module names and layer semantics (reduced widths, random weights, non-trivial
BatchNorm statistics), their state dicts are converted, and trunk and head
outputs are compared on the same inputs. With torchvision importable, the real
torchvision.models.resnet50 is compared as well.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frcnn_jax.modeling import backbones as bb
from frcnn_jax import weights as wt

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL = 1e-4


def rel_err(ours, ref) -> float:
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


# ----------------------------------------------------------------------------
# PyTorch reference networks (torchvision module names)
# ----------------------------------------------------------------------------


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample, stride_in_1x1):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = x if self.downsample is None else self.downsample(x)
    return self.relu(out + res)


class TorchResNet(nn.Module):
  """torchvision's ResNet tree; caffe=True is faster-rcnn.pytorch's variant."""

  def __init__(self, layers, widths, caffe, num_classes=10):
    super().__init__()
    self.inplanes = widths[0]
    self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.relu = nn.ReLU()
    if caffe:
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    else:
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    for i, (n, w) in enumerate(zip(layers, widths)):
      setattr(self, f"layer{i + 1}",
              self._make_layer(w, n, 1 if i == 0 else 2, caffe))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(widths[3] * 4, num_classes)

  def _make_layer(self, planes, blocks, stride, caffe):
    down = None
    if stride != 1 or self.inplanes != planes * 4:
      down = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * 4))
    layers = [TorchBottleneck(self.inplanes, planes, stride, down, caffe)]
    self.inplanes = planes * 4
    layers += [TorchBottleneck(self.inplanes, planes, 1, None, caffe)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def trunk(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer3(self.layer2(self.layer1(x)))

  def head(self, x):
    return self.layer4(x).mean(3).mean(2)


def torchvision_vgg_features(widths):
  """torchvision's vgg16 `features` (config D) at the given stage widths."""
  layers, c = [], 3
  for s, n in enumerate((2, 2, 3, 3, 3)):
    for _ in range(n):
      layers += [nn.Conv2d(c, widths[s], 3, padding=1), nn.ReLU()]
      c = widths[s]
    layers.append(nn.MaxPool2d(2, 2))
  return nn.Sequential(*layers)


class TorchVGG(nn.Module):

  def __init__(self, widths, fc_dim, num_classes=10):
    super().__init__()
    self.features = torchvision_vgg_features(widths)
    self.classifier = nn.Sequential(
        nn.Linear(widths[-1] * 7 * 7, fc_dim), nn.ReLU(), nn.Dropout(),
        nn.Linear(fc_dim, fc_dim), nn.ReLU(), nn.Dropout(),
        nn.Linear(fc_dim, num_classes))

  def trunk(self, x):
    return self.features[:-1](x)  # The seed drops the last max pool.

  def head(self, pooled_nchw):
    return self.classifier[:-1](pooled_nchw.reshape(pooled_nchw.shape[0], -1))


def randomize(module, seed=0):
  """Random weights and non-trivial BatchNorm statistics, then eval()."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
      elif isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                       * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
  return module.eval()


def nhwc(t):
  return np.asarray(t.detach().numpy()).transpose(0, 2, 3, 1)


LAYERS = (1, 2, 1, 2)
WIDTHS = (8, 16, 24, 32)
VGG_WIDTHS = (4, 8, 8, 16, 16)


def small_resnet_pair(stride_in_1x1, layers=LAYERS, seed=0):
  tnet = randomize(TorchResNet(layers, WIDTHS, caffe=stride_in_1x1), seed)
  ours = bb.ResNet(block="bottleneck", stage_blocks=layers, widths=WIDTHS,
                   stride_in_1x1=stride_in_1x1, norm="frozen_bn",
                   fixed_blocks=1, rngs=nnx.Rngs(1))
  return tnet, ours


def state_dict_np(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------
# Numerical equality with torch
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_resnet_matches_torch(stride_in_1x1):
  tnet, ours = small_resnet_pair(stride_in_1x1)
  sd = state_dict_np(tnet)
  assert "fc.weight" in sd and "layer1.0.bn1.num_batches_tracked" in sd
  wt.load_backbone_state_dict(ours, sd)
  rng = np.random.default_rng(0)
  # Odd sizes: 45 -> conv1 23 -> pool 11 (caffe) / 12 (torchvision).
  x = rng.standard_normal((2, 3, 45, 59)).astype(np.float32)
  pooled = rng.standard_normal((3, WIDTHS[2] * 4, 7, 7)).astype(np.float32)
  with torch.no_grad():
    t_trunk = nhwc(tnet.trunk(torch.from_numpy(x)))
    t_head = tnet.head(torch.from_numpy(pooled)).numpy()
  o_trunk = jax.jit(lambda m, v: m.trunk(v))(ours, jnp.asarray(x.transpose(0, 2, 3, 1)))
  o_head = ours.head(jnp.asarray(pooled.transpose(0, 2, 3, 1)))
  assert o_trunk.shape == t_trunk.shape
  assert rel_err(o_trunk, t_trunk) < RTOL
  assert rel_err(o_head, t_head) < RTOL
  # The max pools differ on this height: the test really covers both styles.
  with torch.no_grad():
    stem = tnet.maxpool(tnet.conv1(torch.zeros(1, 3, 45, 59)))
  assert stem.shape[-2:] == ((11, 15) if stride_in_1x1 else (12, 15))


def test_vgg_matches_torch():
  tnet = randomize(TorchVGG(VGG_WIDTHS, fc_dim=32), seed=3)
  ours = bb.VGG16(widths=VGG_WIDTHS, fc_dim=32, rngs=nnx.Rngs(0))
  sd = state_dict_np(tnet)
  assert "classifier.6.weight" in sd
  wt.load_backbone_state_dict(ours, sd)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 3, 53, 70)).astype(np.float32)
  pooled = rng.standard_normal((4, VGG_WIDTHS[-1], 7, 7)).astype(np.float32)
  with torch.no_grad():
    t_trunk = nhwc(tnet.trunk(torch.from_numpy(x)))
    t_head = tnet.head(torch.from_numpy(pooled)).numpy()
  o_trunk = ours.trunk(jnp.asarray(x.transpose(0, 2, 3, 1)))
  o_head = ours.head(jnp.asarray(pooled.transpose(0, 2, 3, 1)), train=False)
  assert o_trunk.shape == t_trunk.shape == (1, 3, 4, VGG_WIDTHS[-1])
  assert rel_err(o_trunk, t_trunk) < RTOL
  assert rel_err(o_head, t_head) < RTOL


def test_faster_rcnn_pytorch_detector_key_style():
  """Keys as in a faster-rcnn.pytorch checkpoint (RCNN_base.* / RCNN_top.*)."""
  tnet, ours = small_resnet_pair(True, seed=5)
  det = nn.Module()
  det.RCNN_base = nn.Sequential(tnet.conv1, tnet.bn1, tnet.relu, tnet.maxpool,
                                tnet.layer1, tnet.layer2, tnet.layer3)
  det.RCNN_top = nn.Sequential(tnet.layer4)
  sd = state_dict_np(det)
  assert "RCNN_top.0.0.downsample.1.running_var" in sd
  wt.load_backbone_state_dict(ours, sd, style="faster_rcnn_pytorch")
  x = np.random.default_rng(2).standard_normal((1, 3, 40, 33)).astype(np.float32)
  with torch.no_grad():
    ref = nhwc(det.RCNN_base(torch.from_numpy(x)))
  assert rel_err(ours.trunk(jnp.asarray(x.transpose(0, 2, 3, 1))), ref) < RTOL

  vnet = randomize(TorchVGG(VGG_WIDTHS, fc_dim=16), seed=6)
  vdet = nn.Module()
  vdet.RCNN_base = vnet.features[:-1]
  vdet.RCNN_top = vnet.classifier[:-1]
  vours = bb.VGG16(widths=VGG_WIDTHS, fc_dim=16, rngs=nnx.Rngs(0))
  wt.load_backbone_state_dict(vours, state_dict_np(vdet), style="faster_rcnn_pytorch")
  pooled = np.random.default_rng(3).standard_normal((2, 16, 7, 7)).astype(np.float32)
  with torch.no_grad():
    ref = vnet.head(torch.from_numpy(pooled)).numpy()
  assert rel_err(vours.head(jnp.asarray(pooled.transpose(0, 2, 3, 1))), ref) < RTOL


def test_pth_file_round_trip(tmp_path):
  """torch.save'd files, plain and wrapped in {'model': ...} / DataParallel."""
  tnet, ours = small_resnet_pair(False, seed=7)
  plain = tmp_path / "plain.pth"
  torch.save(tnet.state_dict(), plain)
  wrapped = tmp_path / "wrapped.pth"
  torch.save({"model": {"module." + k: v for k, v in tnet.state_dict().items()},
              "epoch": 3}, wrapped)
  x = np.random.default_rng(4).standard_normal((1, 3, 35, 35)).astype(np.float32)
  with torch.no_grad():
    ref = nhwc(tnet.trunk(torch.from_numpy(x)))
  for path in (plain, wrapped):
    wt.load_backbone_state_dict(ours, wt.read_state_dict(str(path)))
    assert rel_err(ours.trunk(jnp.asarray(x.transpose(0, 2, 3, 1))), ref) < RTOL


def test_converted_directory_round_trip(tmp_path):
  tnet, ours = small_resnet_pair(True, seed=8)
  wt.load_backbone_state_dict(ours, state_dict_np(tnet))
  cfg = wt.backbone_config_for_kind("caffe_resnet101")
  wt.save_backbone_weights(ours, str(tmp_path / "conv"), kind="caffe_resnet101",
                           backbone_config=cfg)
  fresh = small_resnet_pair(True, seed=9)[1]
  prep = wt.load_pretrained_backbone(fresh, str(tmp_path / "conv"))
  assert prep == wt.CAFFE_PREPROCESSING
  for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(nnx.state(ours)),
                                nnx.to_flat_state(nnx.state(fresh))):
    assert p1 == p2
    np.testing.assert_array_equal(np.asarray(v1[...]), np.asarray(v2[...]))
  # Wrong stride placement for these weights: a clear error.
  other = bb.ResNet(block="bottleneck", stage_blocks=LAYERS, widths=WIDTHS,
                    stride_in_1x1=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stride_in_1x1=True"):
    wt.load_pretrained_backbone(other, str(tmp_path / "conv"))
  # A different depth: missing keys listed.
  deeper = bb.ResNet(block="bottleneck", stage_blocks=(1, 2, 2, 2), widths=WIDTHS,
                     stride_in_1x1=True, rngs=nnx.Rngs(0))
  with pytest.raises(wt.WeightImportError, match=r"layer3\.1\.conv1\.kernel"):
    wt.load_pretrained_backbone(deeper, str(tmp_path / "conv"))


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def test_missing_unexpected_and_mismatched_keys_in_one_message():
  tnet, ours = small_resnet_pair(False)
  sd = state_dict_np(tnet)
  del sd["layer2.0.conv2.weight"]
  sd["bn1.weight"] = np.ones(7, np.float32)
  sd["extra.weight"] = np.ones(3, np.float32)
  with pytest.raises(wt.WeightImportError) as info:
    wt.load_backbone_state_dict(ours, sd)
  err = info.value
  assert err.missing == ["layer2.0.conv2.weight"]
  assert err.unexpected == ["extra.weight"]  # fc.* and num_batches_tracked ignored
  assert err.mismatched == [("bn1.weight", (7,), (WIDTHS[0],))]
  msg = str(err)
  for s in ("layer2.0.conv2.weight", "extra.weight", "bn1.weight: (7,) vs (8,)"):
    assert s in msg


def test_failed_import_leaves_model_unchanged():
  tnet, ours = small_resnet_pair(False)
  before = np.asarray(ours.conv1.kernel[...]).copy()
  sd = state_dict_np(tnet)
  del sd["layer4.1.conv3.weight"]
  with pytest.raises(wt.WeightImportError):
    wt.load_backbone_state_dict(ours, sd)
  np.testing.assert_array_equal(np.asarray(ours.conv1.kernel[...]), before)


def test_wrong_network_errors():
  _, ours = small_resnet_pair(False)
  vgg_sd = state_dict_np(TorchVGG(VGG_WIDTHS, fc_dim=8))
  with pytest.raises(wt.WeightImportError, match="looks like a VGG") as info:
    wt.load_backbone_state_dict(ours, vgg_sd)
  assert "conv1.weight" in info.value.missing
  assert "features.0.weight" in info.value.unexpected
  # A shallower ResNet's weights into a deeper ResNet.
  shallow = state_dict_np(TorchResNet((1, 2, 1, 1), WIDTHS, caffe=False))
  with pytest.raises(wt.WeightImportError, match=r"layer4\.1\.conv1\.weight"):
    wt.load_backbone_state_dict(ours, shallow)
  # A VGG with other widths: shape mismatches listed.
  vours = bb.VGG16(widths=VGG_WIDTHS, fc_dim=8, rngs=nnx.Rngs(0))
  other = state_dict_np(TorchVGG((4, 8, 8, 16, 32), fc_dim=8))
  want = r"features\.28\.weight: \(32, 32, 3, 3\) vs \(16, 16, 3, 3\)"
  with pytest.raises(wt.WeightImportError, match=want):
    wt.load_backbone_state_dict(vours, other)


def test_kind_checks_architecture():
  for name, stride, kind, ok in [
      ("resnet101", True, "caffe_resnet101", True),
      ("resnet101", False, "caffe_resnet101", False),
      ("resnet101", False, "torchvision_resnet101", True),
      ("resnet50", False, "torchvision_resnet101", False),
      ("vgg16", False, "caffe_vgg16", True),
      ("vgg16", False, "torchvision_resnet50", False)]:
    cfg = bb.default_backbone_config(name)
    cfg.stride_in_1x1 = stride
    model = nnx.eval_shape(lambda: bb.build_backbone(cfg, rngs=nnx.Rngs(0)))
    if ok:
      wt.check_backbone_fits_kind(model, kind)
    else:
      with pytest.raises(ValueError, match=kind):
        wt.check_backbone_fits_kind(model, kind)
  cfg = wt.backbone_config_for_kind("torchvision_resnet152")
  assert (cfg.name, cfg.stride_in_1x1, cfg.norm) == ("resnet152", False, "frozen_bn")


def test_full_size_key_names_and_shapes():
  """Every key of full-size torchvision ResNet-50/VGG16 trees is mapped."""
  with torch.device("meta"):
    tree = TorchResNet((3, 4, 6, 3), (64, 128, 256, 512), caffe=False)
  r50 = nnx.eval_shape(lambda: bb.build_backbone(
      wt.backbone_config_for_kind("torchvision_resnet50"), rngs=nnx.Rngs(0)))
  spec = wt.backbone_torch_spec(r50)
  want = {k: tuple(v.shape) for k, v in tree.state_dict().items()
          if not wt.default_ignore(k)}
  assert {s.key: s.torch_shape for s in spec.values()} == want
  with torch.device("meta"):
    vtree = TorchVGG((64, 128, 256, 512, 512), 4096, num_classes=1000)
  v16 = nnx.eval_shape(lambda: bb.build_backbone(
      bb.default_backbone_config("vgg16"), rngs=nnx.Rngs(0)))
  want = {k: tuple(v.shape) for k, v in vtree.state_dict().items()
          if not wt.default_ignore(k)}
  assert {s.key: s.torch_shape for s in wt.backbone_torch_spec(v16).values()} == want


def test_missing_torch_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install -r requirements-torch\.txt"):
    wt.read_state_dict("whatever.pth")


def test_preprocessing_constants():
  img = np.array([[[255.0, 128.0, 0.0]]], np.float32)  # RGB
  tv = np.asarray(wt.TORCHVISION_PREPROCESSING.apply(img))[0, 0]
  np.testing.assert_allclose(
      tv, [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225],
      rtol=1e-6)
  caffe = np.asarray(wt.CAFFE_PREPROCESSING.apply(img))[0, 0]  # BGR - means
  np.testing.assert_allclose(caffe, [0 - 102.9801, 128 - 115.9465, 255 - 122.7717],
                             rtol=1e-6)


# ----------------------------------------------------------------------------
# The real torchvision ResNet-50 (only where torchvision is importable)
# ----------------------------------------------------------------------------


def test_torchvision_resnet50():
  torchvision = pytest.importorskip("torchvision")
  tnet = randomize(torchvision.models.resnet50(weights=None), seed=11)
  ours = bb.build_backbone(wt.backbone_config_for_kind("torchvision_resnet50"),
                           rngs=nnx.Rngs(0))
  wt.load_backbone_state_dict(ours, tnet.state_dict(), kind="torchvision_resnet50")
  x = np.random.default_rng(5).standard_normal((1, 3, 67, 81)).astype(np.float32)
  pooled = np.random.default_rng(6).standard_normal((2, 1024, 7, 7)).astype(np.float32)
  with torch.no_grad():
    t = torch.from_numpy(x)
    t = tnet.maxpool(tnet.relu(tnet.bn1(tnet.conv1(t))))
    t_trunk = nhwc(tnet.layer3(tnet.layer2(tnet.layer1(t))))
    t_head = tnet.layer4(torch.from_numpy(pooled)).mean(3).mean(2).numpy()
  assert rel_err(ours.trunk(jnp.asarray(x.transpose(0, 2, 3, 1))), t_trunk) < RTOL
  assert rel_err(ours.head(jnp.asarray(pooled.transpose(0, 2, 3, 1))), t_head) < RTOL


if __name__ == "__main__":
  sys.exit(pytest.main([os.path.abspath(__file__), "-q"]))
