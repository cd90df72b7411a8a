"""Tests of frcnn_jax/modeling/backbones.py (shapes, freezing, dtypes, abstract builds).

Numerical equality with PyTorch networks is in test_weights_backbone.py.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from frcnn_jax.modeling import backbones as bb


def small_resnet(*, norm="frozen_bn", fixed_blocks=1, stride_in_1x1=False,
                 block="bottleneck", seed=0, dtype=jnp.float32,
                 stage_blocks=(1, 2, 1, 1)):
  return bb.ResNet(block=block, stage_blocks=stage_blocks, widths=(4, 8, 8, 8),
                   stride_in_1x1=stride_in_1x1, norm=norm,
                   fixed_blocks=fixed_blocks, gn_groups=4, dtype=dtype,
                   rngs=nnx.Rngs(seed))


def trunk_shape(model, shape):
  """Output shape of model.trunk, traced abstractly (nothing runs)."""
  return jax.eval_shape(lambda m, x: m.trunk(x), model,
                        jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def tiny(**overrides):
  cfg = bb.default_backbone_config("tiny_resnet")
  cfg.update(overrides)
  return bb.build_backbone(cfg, rngs=nnx.Rngs(0))


def randomize_frozen_stats(model, seed=0):
  """Non-trivial frozen BatchNorm arrays (var > 0)."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(model, bb.FrozenStat)):
    shape = var.shape
    if path[-1] == "var":
      var[...] = jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
    elif path[-1] == "scale":
      var[...] = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
    else:
      var[...] = jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32)
  return model


# ----------------------------------------------------------------------------
# Output sizes: PyTorch's formulas written out independently
# ----------------------------------------------------------------------------


def torch_conv_out(n, k, s, p):
  return math.floor((n + 2 * p - k) / s) + 1


def torch_pool_out(n, k, s, p, ceil_mode):
  f = math.ceil if ceil_mode else math.floor
  out = f((n + 2 * p - k) / s) + 1
  if ceil_mode and (out - 1) * s >= n + p:
    out -= 1
  return out


def expected_resnet_trunk(n, caffe):
  n = torch_conv_out(n, 7, 2, 3)
  n = torch_pool_out(n, 3, 2, 0, True) if caffe else torch_pool_out(n, 3, 2, 1, False)
  for _ in range(2):  # layer2, layer3: 3x3 pad 1 or 1x1 pad 0, stride 2
    assert torch_conv_out(n, 3, 2, 1) == torch_conv_out(n, 1, 2, 0)
    n = torch_conv_out(n, 3, 2, 1)
  return n


SIZES = [(37, 61), (64, 64), (33, 50), (45, 17), (97, 130)]


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_resnet_trunk_sizes_match_pytorch(stride_in_1x1):
  for block in ("basic", "bottleneck"):
    m = small_resnet(block=block, stride_in_1x1=stride_in_1x1)
    for h, w in SIZES:
      want = (expected_resnet_trunk(h, stride_in_1x1),
              expected_resnet_trunk(w, stride_in_1x1))
      assert trunk_shape(m, (1, h, w, 3)) == (1, *want, m.trunk_channels), (block, h, w)
      assert bb.trunk_output_size(m, h, w) == want


def test_pool_styles_give_different_sizes():
  # H = 97: conv1 49 (odd) -> caffe pool 24, torchvision pool 25 -> ... 6 vs 7.
  assert (expected_resnet_trunk(97, True), expected_resnet_trunk(97, False)) == (6, 7)
  m = small_resnet(stride_in_1x1=True)
  y = jax.jit(lambda m, x: m.trunk(x))(m, jnp.zeros((1, 97, 40, 3)))
  assert y.shape[1] == 6
  assert trunk_shape(small_resnet(stride_in_1x1=False), (1, 97, 40, 3))[1] == 7


def test_vgg_trunk_sizes():
  m = bb.VGG16(widths=(2, 4, 4, 8, 8), fc_dim=8, rngs=nnx.Rngs(0))
  for h, w in SIZES:
    want = (h // 2 // 2 // 2 // 2, w // 2 // 2 // 2 // 2)
    assert trunk_shape(m, (1, h, w, 3)) == (1, *want, 8)
    assert bb.trunk_output_size(m, h, w) == want


def reference_max_pool(x, k, s, p, ceil_mode):
  """Loops over output cells, window clipped to the input (= -inf padding)."""
  b, h, w, c = x.shape
  oh, ow = torch_pool_out(h, k, s, p, ceil_mode), torch_pool_out(w, k, s, p, ceil_mode)
  out = np.empty((b, oh, ow, c), x.dtype)
  for i in range(oh):
    for j in range(ow):
      r0, c0 = i * s - p, j * s - p
      win = x[:, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
      out[:, i, j] = win.max(axis=(1, 2))
  return out


@pytest.mark.parametrize("ceil_mode,padding", [(True, 0), (False, 1)])
def test_max_pool_matches_reference(ceil_mode, padding):
  rng = np.random.default_rng(0)
  for h, w in [(5, 5), (6, 7), (8, 9), (11, 4)]:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32) - 5.0  # negatives
    got = bb.max_pool(jnp.asarray(x), 3, 2, padding, ceil_mode)
    np.testing.assert_array_equal(np.asarray(got),
                                  reference_max_pool(x, 3, 2, padding, ceil_mode))


def head_shape(model, shape):
  return jax.eval_shape(lambda m, x: m.head(x), model,
                        jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def test_head_shapes():
  m = small_resnet()
  assert head_shape(m, (5, 7, 7, m.trunk_channels)) == (5, m.head_channels)
  assert head_shape(m, (3, 14, 14, m.trunk_channels)) == (3, 32)
  assert (m.trunk_channels, m.head_channels, m.stride) == (32, 32, 16)
  t = tiny()
  assert (t.trunk_channels, t.head_channels, t.stride) == (64, 128, 16)
  assert head_shape(t, (4, 7, 7, 64)) == (4, 128)
  v = bb.VGG16(widths=(2, 4, 4, 8, 8), fc_dim=16, rngs=nnx.Rngs(0))
  assert head_shape(v, (3, 7, 7, 8)) == (3, 16)
  with pytest.raises(ValueError, match="expects"):
    head_shape(v, (3, 6, 6, 8))


# ----------------------------------------------------------------------------
# Frozen BatchNorm
# ----------------------------------------------------------------------------


def test_frozen_batchnorm_formula_and_no_gradient():
  bn = bb.FrozenBatchNorm(6)
  randomize_frozen_stats(bn, seed=1)
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 6)).astype(np.float32)
  g, b, mu, var = (np.asarray(getattr(bn, n)[...]) for n in ("scale", "bias", "mean", "var"))
  want = (x - mu) / np.sqrt(var + 1e-5) * g + b
  np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)
  # Not a Param; the gradient w.r.t. its arrays is zero.
  assert not nnx.state(bn, nnx.Param)
  graphdef, stats = nnx.split(bn)
  grads = jax.jit(jax.grad(
      lambda s: jnp.sum(nnx.merge(graphdef, s)(jnp.asarray(x)) ** 2)))(stats)
  for leaf in jax.tree.leaves(grads):
    assert not np.any(np.asarray(leaf))


def test_frozen_bn_never_changes_in_an_optimizer_step():
  m = randomize_frozen_stats(small_resnet(fixed_blocks=0), seed=2)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, bb.FrozenStat)))
  params_before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  trainable = nnx.All(nnx.Param, nnx.Not(m.frozen_filter()))
  opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=trainable)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 40, 40, 3)), jnp.float32)

  def loss_fn(model):
    feats = model.trunk(x)
    return jnp.mean(feats ** 2) + jnp.mean(model.head(feats[:, :2, :2]) ** 2)

  @nnx.jit
  def step(model, opt):
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    opt.update(model, grads)

  step(m, opt)
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, bb.FrozenStat)))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  params_after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  # conv1 (always frozen) unchanged, layer4 updated.
  np.testing.assert_array_equal(params_before["conv1"]["kernel"],
                                params_after["conv1"]["kernel"])
  assert np.any(params_before["layer4"][0]["conv3"]["kernel"]
                != params_after["layer4"][0]["conv3"]["kernel"])


# ----------------------------------------------------------------------------
# fixed_blocks / frozen filter
# ----------------------------------------------------------------------------


def all_param_grads(model, x, pooled):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    mm = nnx.merge(graphdef, p, rest)
    return jnp.mean(mm.trunk(x) ** 2) + jnp.mean(mm.head(pooled) ** 2)

  return {tuple(p): np.asarray(v[...]) for p, v in
          nnx.to_flat_state(jax.jit(jax.grad(loss))(params))}


@pytest.mark.parametrize("fixed_blocks", [-1, 0, 1, 2, 3])
def test_fixed_blocks_freeze_exactly_the_seed_layers(fixed_blocks):
  # GroupNorm: the norm layers have Params too, which must follow the blocks.
  m = small_resnet(norm="group", fixed_blocks=fixed_blocks, seed=fixed_blocks + 5,
                   block="basic", stage_blocks=(1, 2, 1, 1))
  rng = np.random.default_rng(fixed_blocks + 1)
  x = jnp.asarray(rng.standard_normal((2, 40, 40, 3)), jnp.float32)
  pooled = jnp.asarray(rng.standard_normal((3, 7, 7, m.trunk_channels)), jnp.float32)
  grads = all_param_grads(m, x, pooled)
  # The seed: conv1/bn1 always, layer1..layer{n} for FIXED_BLOCKS = n.
  names = [] if fixed_blocks < 0 else ["conv1", "bn1"] + [
      f"layer{i}" for i in range(1, fixed_blocks + 1)]
  expected_frozen = {p for p in grads if p[0] in names}
  matched = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(m, m.frozen_filter()))}
  assert matched == expected_frozen
  for p, g in grads.items():
    if p in expected_frozen:
      assert not np.any(g), p
    else:
      assert np.any(g), p
  # The same filter on a model holding the backbone, as the detector does.
  outer = nnx.Dict(backbone=m, rpn=nnx.Dict(conv1=nnx.Linear(2, 2, rngs=nnx.Rngs(0))))
  matched = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(outer, m.frozen_filter()))}
  assert matched == {("backbone",) + p for p in expected_frozen}
  trainable = nnx.All(nnx.Param, nnx.Not(m.frozen_filter()))
  n_trainable = len(nnx.to_flat_state(nnx.state(outer, trainable)))
  assert n_trainable == len(grads) - len(expected_frozen) + 2


def test_vgg_freezes_conv1_and_conv2():
  m = bb.VGG16(widths=(2, 4, 4, 8, 8), fc_dim=8, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 32, 48, 3)), jnp.float32)
  pooled = jnp.asarray(rng.standard_normal((2, 7, 7, 8)), jnp.float32)
  grads = all_param_grads(m, x, pooled)
  frozen = {p for p in grads if p[0] in ("conv1_1", "conv1_2", "conv2_1", "conv2_2")}
  assert len(frozen) == 8
  assert {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(m, m.frozen_filter()))} == frozen
  for p, g in grads.items():
    assert np.any(g) != (p in frozen), p


def count_convolutions(model, x):
  """Convolutions in the lowered value_and_grad of sum(trunk(x)); a 1x1
  convolution is a matrix product (``layers.Conv``), counted with them."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p, rest).trunk(x))

  text = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
  return text.count("stablehlo.convolution") + text.count("stablehlo.dot_general")


def test_frozen_stages_cost_no_backward_convolutions():
  x = jnp.zeros((1, 32, 32, 3))
  counts = {fb: count_convolutions(tiny(fixed_blocks=fb), x) for fb in (-1, 1, 3)}
  # Tiny trunk: conv1, layer1 (2 convs), layer2 and layer3 (2 convs + a
  # downsample each) = 9 forward convolutions. Every trainable conv adds two
  # backward ones (input and kernel gradients), except that the first
  # trainable stage needs no input gradient.
  assert counts[3] == 9  # everything frozen: forward only
  assert counts[1] == 9 + 2 * 6 - 2  # layer2 and layer3 trainable
  assert counts[-1] == 9 + 2 * 9 - 1  # all trainable; conv1 needs no dx


# ----------------------------------------------------------------------------
# Abstract builds of the big networks (never run)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,trunk_c,head_c", [
    ("resnet101", 1024, 2048), ("resnet152", 1024, 2048), ("vgg16", 512, 4096)])
def test_eval_shape_of_big_networks(name, trunk_c, head_c):
  cfg = bb.default_backbone_config(name)
  model = nnx.eval_shape(lambda: bb.build_backbone(cfg, dtype=jnp.bfloat16,
                                                   rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  leaves = jax.tree.leaves(state)
  assert leaves and all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)
  images = jax.ShapeDtypeStruct((2, 600, 1000, 3), jnp.float32)
  pooled = jax.ShapeDtypeStruct((256, 7, 7, trunk_c), jnp.bfloat16)
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).trunk(x), state, images)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).head(x), state, pooled)
  hw = (37, 62) if name == "vgg16" else (38, 63)
  assert feats.shape == (2, *hw, trunk_c) and feats.dtype == jnp.bfloat16
  assert out.shape == (256, head_c)
  assert (model.trunk_channels, model.head_channels, model.stride) == (trunk_c, head_c, 16)
  if name == "resnet101":
    n_params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # torchvision's resnet101 has 44,549,160 parameters incl. BN affine and
    # fc (2048 * 1000 + 1000); frozen BN affine (2 per channel) is not Param.
    n_frozen = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, bb.FrozenStat)))
    assert n_params + n_frozen // 2 == 44_549_160 - 2048 * 1000 - 1000
    assert all(v.dtype == jnp.float32 for v in leaves)


# ----------------------------------------------------------------------------
# jit, dtypes, dropout, builder
# ----------------------------------------------------------------------------


def test_tiny_forward_jit_equals_eager():
  m = tiny()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 96, 3)), jnp.float32)
  eager = m.trunk(x)
  jitted = jax.jit(lambda m, x: m.trunk(x))(m, x)
  assert eager.shape == (2, 4, 6, 64)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-5)
  pooled = eager[:, :2, :2]
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda m, p: m.head(p))(m, pooled)),
      np.asarray(m.head(pooled)), rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(eager)))


@pytest.mark.parametrize("norm", ["group", "frozen_bn"])
def test_bfloat16_close_to_float32(norm):
  m32 = small_resnet(norm=norm, block="basic", seed=3)
  m16 = small_resnet(norm=norm, block="basic", seed=3, dtype=jnp.bfloat16)
  if norm == "frozen_bn":
    randomize_frozen_stats(m32, 4)
    randomize_frozen_stats(m16, 4)
  # Same parameters, float32 storage in both.
  for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(nnx.state(m32)),
                                nnx.to_flat_state(nnx.state(m16))):
    assert p1 == p2 and v2.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(v1[...]), np.asarray(v2[...]))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 48, 64, 3)), jnp.float32)
  trunk = jax.jit(lambda m, x: m.trunk(x))
  head = jax.jit(lambda m, x: m.head(x))
  y32, y16 = trunk(m32, x), trunk(m16, x)
  assert y16.dtype == jnp.bfloat16
  err = np.abs(np.asarray(y16, np.float32) - np.asarray(y32))
  assert err.max() / np.abs(np.asarray(y32)).max() < 5e-2
  h32, h16 = head(m32, y32), head(m16, y16)
  assert np.abs(np.asarray(h16, np.float32) - np.asarray(h32)).max() / np.abs(
      np.asarray(h32)).max() < 5e-2


def test_vgg_dropout_is_a_function_of_the_key():
  m = bb.VGG16(widths=(2, 4, 4, 8, 8), fc_dim=64, rngs=nnx.Rngs(0))
  pooled = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 7, 7, 8)), jnp.float32)
  f = jax.jit(lambda m, p, k: m.head(p, train=True, key=k))
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a, b, c = f(m, pooled, k1), f(m, pooled, k1), f(m, pooled, k2)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.any(np.asarray(a) != np.asarray(c))
  np.testing.assert_allclose(np.asarray(m.head(pooled, train=True, key=k1)),
                             np.asarray(a), rtol=1e-6, atol=1e-6)  # eager
  det = jax.jit(lambda m, p: m.head(p))(m, pooled)  # inference: no key needed
  np.testing.assert_array_equal(
      np.asarray(det), np.asarray(jax.jit(lambda m, p, k: m.head(p, key=k))(m, pooled, k1)))
  # Inverted dropout: kept units are scaled by 2 (rate 0.5) before fc7.
  assert np.any(np.asarray(a) != np.asarray(det))
  with pytest.raises(ValueError, match="key"):
    m.head(pooled, train=True)
  # No RNG state inside the module.
  assert not nnx.state(m, nnx.RngState)


def test_init_matches_torchvision_scheme():
  m = bb.ResNet(block="basic", stage_blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                norm="group", rngs=nnx.Rngs(0))
  k = np.asarray(m.layer4[0].conv2.kernel[...])  # 3x3x128x128
  assert abs(k.mean()) < 2e-3
  np.testing.assert_allclose(k.std(), math.sqrt(2.0 / (9 * 128)), rtol=0.03)
  assert np.abs(k).max() > 3.5 * k.std()  # untruncated normal
  np.testing.assert_array_equal(np.asarray(m.layer4[0].bn1.scale[...]), 1.0)
  v = bb.VGG16(widths=(2, 4, 4, 8, 8), fc_dim=256, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(v.fc7.kernel[...]).std(), 0.01, rtol=0.03)
  np.testing.assert_array_equal(np.asarray(v.fc7.bias[...]), 0.0)
  # Different parameters for different layers of the same shape.
  assert np.any(np.asarray(m.layer1[0].conv1.kernel[...]) !=
                np.asarray(m.layer1[0].conv2.kernel[...]))


def test_default_config_and_builder():
  cfg = bb.default_backbone_config()
  assert (cfg.name, cfg.stride_in_1x1, cfg.norm, cfg.fixed_blocks) == (
      "resnet101", True, "frozen_bn", 1)
  assert bb.default_backbone_config("resnet50").stride_in_1x1 is False
  t = bb.default_backbone_config("tiny_resnet")
  assert (t.norm, t.fixed_blocks, tuple(t.tiny_widths)) == ("group", -1, (16, 32, 64, 128))
  with pytest.raises(ValueError, match="resnet34"):
    bb.default_backbone_config("resnet34")
  bad = bb.default_backbone_config("tiny_resnet")
  bad.norm = "batch"
  with pytest.raises(ValueError, match="norm"):
    bb.build_backbone(bad, rngs=nnx.Rngs(0))
  bad = bb.default_backbone_config("tiny_resnet")
  bad.fixed_blocks = 4
  with pytest.raises(ValueError, match="fixed_blocks"):
    bb.build_backbone(bad, rngs=nnx.Rngs(0))
  custom = bb.default_backbone_config("tiny_resnet")
  custom.tiny_widths = (8, 8, 16, 16)
  custom.tiny_blocks = (2, 1, 1, 1)
  m = bb.build_backbone(custom, rngs=nnx.Rngs(0))
  assert len(m.layer1) == 2 and (m.trunk_channels, m.head_channels) == (16, 16)
  assert isinstance(m.bn1, nnx.GroupNorm) and m.bn1.num_groups == 8
