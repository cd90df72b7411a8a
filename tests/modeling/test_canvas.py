"""Canvas invariance: an image's outputs do not depend on where it is placed.

The seed runs every test image alone, at its own size; we place images on
bucket canvases and batch them. With ``model.canvas_masks`` the detections
of an image on its own small canvas, on a larger canvas, and next to a
larger image in one batch are the same (to float rounding), for every
backbone family (GroupNorm tiny net, frozen-BN ResNets with both stride
placements, VGG16) and every pooling mode. Without the masks they differ:
the tests can fail.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from configs import tiny
from frcnn_jax.modeling import backbones as bb
from frcnn_jax.modeling import detector
from frcnn_jax.modeling import layers

H, W = 150, 213          # the image (odd sizes: every rounding rule matters)
SMALL = (160, 224)       # its own canvas
LARGE = (224, 320)       # a bigger one


@pytest.fixture(scope="module", autouse=True)
def small_resnets():
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(bb, "RESNET_WIDTHS", (8, 16, 24, 32))
    mp.setattr(bb, "RESNET_STAGE_BLOCKS",
               dict(bb.RESNET_STAGE_BLOCKS, resnet50=(1, 2, 1, 1)))
    yield


def _randomize_frozen_stats(model, seed=0):
  """BatchNorm statistics far from identity (the padding then matters)."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, bb.FrozenStat)
  pure = nnx.to_pure_dict(state)

  def fill(path, x):
    name = str(path[-1].key)
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    return jnp.asarray(rng.normal(0.0, 0.5, x.shape), x.dtype)

  pure = jax.tree_util.tree_map_with_path(fill, pure)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def _config(kind: str, pooling: str = "align"):
  if kind == "tiny":
    c = tiny.get_config()
  else:
    c = common.base_config("resnet50")
    c.backbone.stride_in_1x1 = kind == "caffe"
    c.rpn.conv_channels = 16
    c.test.rpn_pre_nms_top_n = 600
    c.test.rpn_post_nms_top_n = 50
  c.roi.pooling_mode = pooling
  return c


def _model(c, masks=True):
  m = detector.build_detector(c, 4)
  if not masks:
    m = detector.FasterRCNN(dataclasses.replace(m.settings,
                                                canvas_masks=False),
                            c.backbone, rngs=nnx.Rngs(c.seed))
  _randomize_frozen_stats(m)
  return m


def _inputs(canvas, image, other=None):
  n = 1 if other is None else 2
  x = np.zeros((n,) + canvas + (3,), np.uint8)
  x[0, :H, :W] = image
  info = [[H, W, 1.0]]
  if other is not None:
    x[1, :other.shape[0], :other.shape[1]] = other
    info.append([other.shape[0], other.shape[1], 1.0])
  return jnp.asarray(x), jnp.asarray(np.array(info, np.float32))


PREDICT = jax.jit(lambda m, x, i: m.predict(x, i))


def _first(out):
  return {k: np.asarray(v[0]) for k, v in out.items()}


def _assert_same_detections(a, b):
  assert a["valid"].sum() == b["valid"].sum() > 0
  np.testing.assert_array_equal(a["classes"], b["classes"])
  np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
  np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,pooling", [
    ("tiny", "align"), ("caffe", "crop"), ("torchvision", "pool")])
def test_detections_do_not_depend_on_canvas_or_batch(kind, pooling):
  """Alone on its own canvas == on a larger canvas next to a larger image."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (220, 300, 3), dtype=np.uint8)
  m = _model(_config(kind, pooling))
  alone = _first(PREDICT(m, *_inputs(SMALL, image)))
  _assert_same_detections(
      alone, _first(PREDICT(m, *_inputs(LARGE, image, other))))


def test_without_masks_the_canvas_changes_detections():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  m = _model(_config("caffe"), masks=False)
  a = _first(PREDICT(m, *_inputs(SMALL, image)))
  b = _first(PREDICT(m, *_inputs(LARGE, image)))
  assert (np.abs(a["boxes"] - b["boxes"]).max() > 1.0 or
          np.abs(a["scores"] - b["scores"]).max() > 1e-3)


@pytest.mark.parametrize("name", ["caffe", "torchvision", "tiny", "vgg"])
def test_masked_trunk_equals_the_image_alone(name):
  """Inside the extent the features are the unpadded image's; outside, 0;
  the extent is `trunk_output_size` (what anchors and RoIs use)."""
  if name == "vgg":
    net = bb.VGG16(widths=(4, 8, 8, 16, 16), fc_dim=32, rngs=nnx.Rngs(0))
  elif name == "tiny":
    net = detector.build_detector(tiny.get_config(), 3).backbone
  else:
    net = bb.build_backbone(_config(name).backbone, rngs=nnx.Rngs(0))
  _randomize_frozen_stats(net)
  masked_trunk = jax.jit(lambda n, v, e: n.trunk(v, e))
  rng = np.random.default_rng(2)
  # Odd sizes and one of each parity: every rounding rule of the pools and
  # strided convolutions is exercised.
  for h, w in ((67, 93), (64, 81)):
    x = rng.normal(0, 50, (1, h, w, 3)).astype(np.float32)
    alone = np.asarray(net.trunk(jnp.asarray(x)))
    canvas = np.zeros((1, 112, 112, 3), np.float32)
    canvas[:, :h, :w] = x
    extent = jnp.asarray([[h, w]], jnp.int32)
    masked = np.asarray(masked_trunk(net, jnp.asarray(canvas), extent))
    fh, fw = bb.trunk_output_size(net, h, w)
    assert alone.shape[1:3] == (fh, fw)
    dyn = bb.trunk_output_size(net, extent[:, 0], extent[:, 1])
    assert [int(v[0]) for v in dyn] == [fh, fw]
    np.testing.assert_allclose(masked[:, :fh, :fw], alone, rtol=1e-4,
                               atol=1e-4 * np.abs(alone).max())
    assert not masked[:, fh:].any() and not masked[:, :, fw:].any()


def test_training_loss_does_not_depend_on_canvas():
  """With sampling that keeps every candidate, the loss is the same."""
  c = tiny.get_config()
  c.rpn.batch_size = 100000
  c.rpn.post_nms_top_n = 50
  c.roi.batch_size = 64
  c.roi.fg_fraction = 1.0
  m = detector.build_detector(c, 4)
  image = np.random.default_rng(3).integers(0, 256, (60, 90, 3), np.uint8)

  def batch(ch, cw):
    x = np.zeros((1, ch, cw, 3), np.uint8)
    x[0, :60, :90] = image
    g = np.zeros((1, 6, 4), np.float32)
    g[0, :2] = [[10, 10, 40, 50], [50, 5, 80, 30]]
    return dict(image=jnp.asarray(x),
                im_info=jnp.asarray([[60, 90, 1.0]], jnp.float32),
                gt_boxes=jnp.asarray(g),
                gt_classes=jnp.asarray([[1, 2, 0, 0, 0, 0]], jnp.int32),
                gt_valid=jnp.asarray([[True, True] + [False] * 4]))

  loss = jax.jit(lambda m, b: m.loss(b, jax.random.key(0))[1])
  a, b = loss(m, batch(64, 96)), loss(m, batch(96, 128))
  for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"):
    np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5,
                               err_msg=k)
  assert float(a["num_proposals"]) == float(b["num_proposals"]) == 50


def test_extent_arithmetic_matches_pytorch_pools():
  """pool_output_size on arrays == on ints (the masks use the former)."""
  ns = np.arange(1, 70)
  for k, s, p, ceil in ((3, 2, 0, True), (3, 2, 1, False), (2, 2, 0, False)):
    want = [layers.pool_output_size(int(n), k, s, p, ceil) for n in ns]
    got = np.asarray(layers.pool_output_size(jnp.asarray(ns), k, s, p, ceil))
    np.testing.assert_array_equal(got, want)
