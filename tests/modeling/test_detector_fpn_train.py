"""The FPN detector in train_lib's jitted step: tracing, learning, shapes.

configs/tiny_fpn.py (a tiny ResNet + FPN, two 32-divisible buckets) on the
synthetic shapes: the step traces once per bucket and never again, the
model overfits one batch, and the full-size R50-FPN traces abstractly at
800 x 1344 (train and predict shapes, nothing runs).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import coco_r50_fpn
from configs import tiny_fpn
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import parallel
from frcnn_jax import train_lib
from frcnn_jax.data import build_train_loader
from frcnn_jax.modeling import detector
from frcnn_jax.modeling import detector_fpn
from frcnn_jax.modeling import targets_fpn


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = tiny_fpn.get_config()
  c.data.root = str(tmp_path_factory.mktemp("shapes"))
  return c


@pytest.fixture(scope="module")
def batches(cfg):
  loader = build_train_loader(cfg.data, seed=0, global_batch_size=4)
  out = [next(loader) for _ in range(6)]
  loader.close()
  return out


@pytest.fixture(scope="module")
def trainer(cfg, batches):
  """The jitted step (traces counted: at most one per bucket) and a factory
  of fresh states."""
  chex.clear_trace_counter()
  num_shapes = len({b["image"].shape for b in batches})
  model = detector.build_detector(cfg, 4)
  assert isinstance(model, detector_fpn.FasterRCNNFPN)
  tx, sched = optimizer_lib.make_optimizer(cfg.optimizer, 100)
  graphdef, _ = train_lib.create_train_state(model, tx, 0)
  step = chex.assert_max_traces(train_lib.make_train_step(graphdef, tx, sched),
                                n=num_shapes)
  mesh = parallel.create_mesh(1)

  def fresh_state():
    _, state = train_lib.create_train_state(detector.build_detector(cfg, 4),
                                            tx, 0)
    return jax.device_put(state, parallel.replicated(mesh))

  return train_lib.jit_train_step(step, mesh), fresh_state, mesh, num_shapes


def test_train_step_traces_once_per_bucket(trainer, batches):
  step, fresh_state, mesh, num_shapes = trainer
  assert num_shapes == 2, "the batches should cover both buckets"
  state = fresh_state()
  for b in batches + batches:
    state, m = step(state, parallel.global_batch(b, mesh))
  assert np.isfinite(float(m["loss_total"]))
  assert bool(m["finite"])
  assert int(state.step) == 2 * len(batches)


def test_overfits_one_batch(trainer, batches):
  step, fresh_state, mesh, _ = trainer
  state = fresh_state()
  b = parallel.global_batch(batches[0], mesh)
  first = last = None
  for i in range(60):
    state, m = step(state, b)
    m = jax.device_get(m)
    first = first or m
    last = m
  assert last["loss_total"] < first["loss_total"] / 8, (first, last)
  assert last["loss_cls"] < first["loss_cls"] / 8, (first, last)
  assert last["loss_rpn_cls"] < first["loss_rpn_cls"] / 8, (first, last)
  assert first["num_fg_rois"] > 0 and first["num_rpn_fg"] > 0


def test_big_model_by_shape():
  """R50-FPN v1 at 800 x 1344, batch 2: loss and predict trace abstractly."""
  c = coco_r50_fpn.get_config()
  model = nnx.eval_shape(lambda: detector.build_detector(c, 91))
  graphdef, state = nnx.split(model)
  batch = dict(image=jax.ShapeDtypeStruct((2, 800, 1344, 3), jnp.float32),
               im_info=jax.ShapeDtypeStruct((2, 3), jnp.float32),
               gt_boxes=jax.ShapeDtypeStruct((2, 100, 4), jnp.float32),
               gt_classes=jax.ShapeDtypeStruct((2, 100), jnp.int32),
               gt_valid=jax.ShapeDtypeStruct((2, 100), jnp.bool_))
  total, aux = jax.eval_shape(
      lambda s, b: nnx.merge(graphdef, s).loss(b, jax.random.key(0)),
      state, batch)
  assert total.shape == () and set(detector.LOSS_NAMES) <= set(aux)
  out = jax.eval_shape(
      lambda s, i, n: nnx.merge(graphdef, s).predict(i, n), state,
      batch["image"], batch["im_info"])
  assert out["boxes"].shape == (2, 100, 4)
  assert out["classes"].dtype == jnp.int32
  # torchvision's P6 stride on an 800-row extent is 800 // 13 = 61.
  inf = jax.eval_shape(
      lambda s, i, n: nnx.merge(graphdef, s).inference(i, n), state,
      batch["image"], batch["im_info"])
  assert [l.shape[1:3] for l in inf["levels"]] == [
      (200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]


def test_matcher_rules():
  """torchvision's Matcher, hand-computed: thresholds, low-quality matches
  (ties included), padded gt columns and rows, no gt at all."""
  iou = np.array([[0.8, 0.1],    # >= high: gt 0
                  [0.5, 0.2],    # between thresholds: -2 (not a best of any gt)
                  [0.2, 0.25],   # below, but the best of gt 1: matched 1
                  [0.1, 0.25],   # ties gt 1's best: matched 1
                  [0.9, 0.95]],  # invalid row
                 np.float32)
  rows = np.array([True, True, True, True, False])
  gt = np.array([True, True])
  got = targets_fpn.match(jnp.asarray(iou), rows, gt, high=0.7, low=0.3,
                          allow_low_quality_matches=True)
  np.testing.assert_array_equal(got, [0, -2, 1, 1, -1])
  got = targets_fpn.match(jnp.asarray(iou), rows, gt, high=0.7, low=0.3,
                          allow_low_quality_matches=False)
  np.testing.assert_array_equal(got, [0, -2, -1, -1, -1])
  got = targets_fpn.match(jnp.asarray(iou), rows, np.array([True, False]),
                          high=0.7, low=0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(got, [0, -2, -1, -1, -1])
  got = targets_fpn.match(jnp.asarray(iou), rows, np.array([False, False]),
                          high=0.7, low=0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(got, [-1] * 5)
