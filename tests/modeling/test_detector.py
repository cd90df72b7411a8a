"""The detector end to end: shapes, learning, tracing, devices, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from configs import tiny
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import parallel
from frcnn_jax import train_lib
from frcnn_jax.modeling import detector
from frcnn_jax.data import build_train_loader


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = tiny.get_config()
  c.data.root = str(tmp_path_factory.mktemp("shapes"))
  return c


@pytest.fixture(scope="module")
def batches(cfg):
  loader = build_train_loader(cfg.data, seed=0, global_batch_size=2)
  out = [next(loader) for _ in range(4)]
  loader.close()
  return out


def same_bucket(batches):
  shape = batches[0]["image"].shape
  return [b for b in batches if b["image"].shape == shape]


def test_big_models_by_shape():
  """R101-C4 at 600x1000, batch 2, traced abstractly (nothing runs)."""
  c = common.base_config("resnet101")
  c.test.batch_size = 2
  model = nnx.eval_shape(lambda: detector.build_detector(c, 21))
  batch = dict(image=jax.ShapeDtypeStruct((2, 608, 1008, 3), jnp.uint8),
               im_info=jax.ShapeDtypeStruct((2, 3), jnp.float32),
               gt_boxes=jax.ShapeDtypeStruct((2, 20, 4), jnp.float32),
               gt_classes=jax.ShapeDtypeStruct((2, 20), jnp.int32),
               gt_valid=jax.ShapeDtypeStruct((2, 20), jnp.bool_))
  graphdef, state = nnx.split(model)

  def loss(state, b, key):
    return nnx.merge(graphdef, state).loss(b, key)

  total, aux = jax.eval_shape(loss, state, batch, jax.random.key(0))
  assert total.shape == () and total.dtype == jnp.float32
  assert set(detector.LOSS_NAMES) <= set(aux)

  def predict(state, image, info):
    return nnx.merge(graphdef, state).predict(image, info)

  out = jax.eval_shape(predict, state, batch["image"], batch["im_info"])
  assert out["boxes"].shape == (2, 100, 4)
  assert out["scores"].shape == (2, 100) and out["valid"].dtype == jnp.bool_
  assert out["classes"].dtype == jnp.int32
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).backbone.trunk(x),
                         state, jax.ShapeDtypeStruct((2, 608, 1008, 3),
                                                     jnp.float32))
  assert feats.shape == (2, 38, 63, 1024)


def make_step(cfg, num_classes, count_traces=None):
  model = detector.build_detector(cfg, num_classes)
  tx, sched = optimizer_lib.make_optimizer(cfg.optimizer, 100)
  graphdef, state = train_lib.create_train_state(model, tx, 0)
  step = train_lib.make_train_step(graphdef, tx, sched)
  if count_traces is not None:
    step = chex.assert_max_traces(step, n=count_traces)
  mesh = parallel.create_mesh(1)
  return (train_lib.jit_train_step(step, mesh),
          jax.device_put(state, parallel.replicated(mesh)), mesh)


def test_train_step_traces_once_per_bucket(cfg, batches):
  chex.clear_trace_counter()
  shapes = {b["image"].shape for b in batches}
  step, state, mesh = make_step(cfg, 4, count_traces=len(shapes))
  for b in batches + batches:   # every bucket twice
    state, m = step(state, parallel.global_batch(b, mesh))
  assert np.isfinite(float(m["loss_total"]))
  assert int(state.step) == 2 * len(batches)


def test_jit_matches_eager(cfg, batches):
  model = detector.build_detector(cfg, 4)
  b = batches[0]
  key = jax.random.key(3)
  eager_total, eager = model.loss(b, key)
  jit_total, jitted = nnx.jit(lambda m, x, k: m.loss(x, k))(model, b, key)
  for k in detector.LOSS_NAMES:
    np.testing.assert_allclose(jitted[k], eager[k], rtol=2e-4, atol=1e-6)
  out_e = model.predict(b["image"], b["im_info"])
  out_j = nnx.jit(lambda m, i, s: m.predict(i, s))(model, b["image"],
                                                     b["im_info"])
  np.testing.assert_array_equal(out_j["valid"], out_e["valid"])
  np.testing.assert_allclose(out_j["scores"], out_e["scores"], rtol=1e-4,
                             atol=1e-6)


def test_overfits_two_images(cfg, batches):
  """A real learning test: the losses of one fixed batch fall > 10x."""
  c = cfg.copy_and_resolve_references()
  c.optimizer.lr = 0.02
  c.optimizer.warmup_steps = 20
  c.optimizer.lr_decay_steps = ()
  c.optimizer.lr_decay_epochs = ()
  step, state, mesh = make_step(c, 4)
  b = parallel.global_batch(batches[0], mesh)
  first = None
  for _ in range(300):
    state, m = step(state, b)
    if first is None:
      first = {k: float(v) for k, v in m.items()}
  last = {k: float(v) for k, v in m.items()}
  assert last["loss_total"] < first["loss_total"] / 10, (first, last)
  assert last["loss_cls"] < first["loss_cls"] / 10, (first, last)


def test_bfloat16_compute(cfg, batches):
  c = cfg.copy_and_resolve_references()
  model32 = detector.build_detector(c, 4)
  c.model.dtype = "bfloat16"
  model16 = detector.build_detector(c, 4)
  nnx.update(model16, nnx.state(model32))
  params = nnx.state(model16, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  b = batches[0]
  k = jax.random.key(0)
  l32, _ = nnx.jit(lambda m, x, key: m.loss(x, key))(model32, b, k)
  l16, aux16 = nnx.jit(lambda m, x, key: m.loss(x, key))(model16, b, k)
  assert aux16["loss_total"].dtype == jnp.float32
  np.testing.assert_allclose(float(l16), float(l32), rtol=0.05)


def test_bad_input_gives_finite_losses(cfg, batches):
  model = detector.build_detector(cfg, 4)
  loss = nnx.jit(lambda m, x, k: m.loss(x, k))
  b = dict(batches[0])
  cases = {}
  cases["no_gt"] = dict(b, gt_valid=np.zeros_like(b["gt_valid"]))
  cases["all_padding"] = dict(
      b, image=np.zeros_like(b["image"]),
      im_info=np.tile(np.array([[b["image"].shape[1], b["image"].shape[2],
                                 1.0]], np.float32), (2, 1)),
      gt_valid=np.zeros_like(b["gt_valid"]))
  inverted = b["gt_boxes"].copy()
  inverted[..., 2] = inverted[..., 0] - 5      # x2 < x1, marked valid
  cases["inverted_gt"] = dict(b, gt_boxes=inverted)
  outside = b["gt_boxes"].copy() + 1000.0      # wholly outside the image
  cases["outside_gt"] = dict(b, gt_boxes=outside)
  zero = np.zeros_like(b["gt_boxes"])
  cases["zero_area_gt"] = dict(b, gt_boxes=zero,
                               gt_valid=np.ones_like(b["gt_valid"]))
  for name, batch in cases.items():
    total, aux = loss(model, batch, jax.random.key(1))
    for k in detector.LOSS_NAMES:
      assert np.isfinite(float(aux[k])), (name, k, aux)
  # Proposals that all collapse: the RPN predicts -inf sizes.
  collapsed = detector.build_detector(cfg, 4)
  bias = collapsed.rpn.bbox_pred.bias
  bias.value = bias.value.at[2::4].set(-1e4).at[3::4].set(-1e4)
  total, aux = loss(collapsed, b, jax.random.key(2))
  assert all(np.isfinite(float(aux[k])) for k in detector.LOSS_NAMES), aux
  out = nnx.jit(lambda m, i, s: m.predict(i, s))(collapsed, b["image"],
                                                   b["im_info"])
  assert np.all(np.isfinite(np.asarray(out["boxes"])))
