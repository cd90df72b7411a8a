"""Loaders: batch format, epochs, hosts, checkpointable state, eval order."""

import json

import numpy as np
import pytest

from frcnn_jax.data import build_eval_loader
from frcnn_jax.data import build_source
from frcnn_jax.data import build_train_loader
from frcnn_jax.data import DataError
from frcnn_jax.data import loader as L
from frcnn_jax.data.testing import tiny_data_config, write_coco


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  c = tiny_data_config(str(tmp_path_factory.mktemp('shapes')))
  build_source(c, 'train')  # generate once
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_format(cfg):
  it = build_train_loader(cfg, seed=0, global_batch_size=3)
  assert it.num_classes == 4 and it.class_names[0] == '__background__'
  for b in _take(it, 4):
    assert set(b) == set(L.BATCH_KEYS)
    n, h, w, _ = b['image'].shape
    assert n == 3 and (h, w) in cfg.buckets and b['image'].dtype == np.uint8
    assert b['im_info'].dtype == np.float32 and b['im_info'].shape == (3, 3)
    assert b['gt_boxes'].shape == (3, 6, 4) and b['gt_boxes'].dtype == np.float32
    assert b['gt_classes'].dtype == np.int32 and b['gt_valid'].dtype == bool
    assert b['image_id'].dtype == np.int32
    for i in range(n):
      oh, ow, s = b['im_info'][i]
      assert oh <= h and ow <= w and s > 0
      assert min(oh, ow) == 64 or max(oh, ow) == 128  # scale / max_size
      assert (b['image'][i, int(oh):] == 0).all()
      assert (b['image'][i, :, int(ow):] == 0).all()
      v = b['gt_valid'][i]
      g = b['gt_boxes'][i]
      assert v.any()  # skip_empty
      assert (g[v, 0] >= 0).all() and (g[v, 2] <= ow - 1).all()
      assert (g[v, 2] > g[v, 0]).all() and (g[v, 3] > g[v, 1]).all()
      assert (b['gt_classes'][i][v] >= 1).all()
      assert (g[~v] == 0).all() and (b['gt_classes'][i][~v] == 0).all()
  it.close()


def test_epochs_cover_every_image_and_reshuffle(cfg):
  it = build_train_loader(cfg, seed=1, global_batch_size=4)
  spe = it.steps_per_epoch
  counts = it.bucket_counts
  assert spe == sum(-(-c // 4) for c in counts) and sum(counts) == 24
  assert min(counts) > 0  # the tiny set uses both buckets
  all_ids = {r.image_id for r in it.source.records}
  plans = [it.global_batch_plan(s) for s in range(2 * spe)]
  for e in range(2):
    ids = np.concatenate([p[1] for p in plans[e * spe:(e + 1) * spe]])
    assert set(ids.tolist()) == all_ids
    assert len(ids) - len(all_ids) < 4 * len(counts)  # only bucket fill-ups
  assert [p[1].tolist() for p in plans[:spe]] != [
      p[1].tolist() for p in plans[spe:]]
  for b, plan in zip(_take(it, spe + 1), plans):
    assert b['image_id'].tolist() == plan[1].tolist()
    assert b['image'].shape[1:3] == tuple(cfg.buckets[plan[0]])
  it.close()


def test_seed_determinism(cfg):
  a = build_train_loader(cfg, seed=5, global_batch_size=2)
  b = build_train_loader(cfg, seed=5, global_batch_size=2)
  c = build_train_loader(cfg, seed=6, global_batch_size=2)
  ba, bb, bc = _take(a, 3), _take(b, 3), _take(c, 3)
  for x, y in zip(ba, bb):
    _same(x, y)
  assert [x['image_id'].tolist() for x in ba] != [
      x['image_id'].tolist() for x in bc]


def test_hosts_split_each_global_batch(cfg):
  full = _take(build_train_loader(cfg, seed=2, global_batch_size=4), 5)
  parts = [_take(build_train_loader(cfg, seed=2, global_batch_size=4,
                                    process_index=p, process_count=2), 5)
           for p in range(2)]
  for step in range(5):
    for k in L.BATCH_KEYS:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][k], parts[1][step][k]]),
          full[step][k])
  with pytest.raises(ValueError, match='multiple of process_count'):
    build_train_loader(cfg, seed=0, global_batch_size=3, process_count=2)


def test_resume_gives_the_next_batch(cfg):
  ref = build_train_loader(cfg, seed=3, global_batch_size=2)
  want = _take(ref, 16)  # crosses an epoch boundary (12 or 13 steps/epoch)
  a = build_train_loader(cfg, seed=3, global_batch_size=2)
  _take(a, 9)
  state = json.loads(json.dumps(a.get_state()))
  assert state['step'] == 9
  b = build_train_loader(cfg, seed=3, global_batch_size=2)
  b.set_state(state)
  for x, y in zip(_take(b, 7), want[9:]):
    _same(x, y)
  # Restoring an iterator that already ran rewinds it.
  a.set_state({'step': 2, **{k: v for k, v in state.items() if k != 'step'}})
  _same(next(a), want[2])
  with pytest.raises(ValueError, match='seed'):
    build_train_loader(cfg, seed=4, global_batch_size=2).set_state(state)


def test_resume_with_worker_processes(cfg):
  """Workers (spawn) give the batches of the in-process loader, and a state
  taken from a worker loader resumes exactly, also in-process."""
  ref = _take(build_train_loader(cfg, seed=7, global_batch_size=2), 6)
  wcfg = tiny_data_config(cfg.root, num_workers=2)
  with build_train_loader(wcfg, seed=7, global_batch_size=2) as a:
    got = _take(a, 3)
    state = a.get_state()
  with build_train_loader(wcfg, seed=7, global_batch_size=2) as b:
    b.set_state(state)
    got += _take(b, 3)
  for x, y in zip(got, ref):
    _same(x, y)


def test_eval_every_image_once_in_fixed_order(cfg):
  src = build_source(cfg, 'val')
  e = build_eval_loader(cfg, 'val', batch_size=3)
  batches = list(e)
  assert len(batches) == len(e) == e.num_batches and e.source.name == src.name
  ids = np.concatenate([b['image_id'] for b in batches])
  real = ids[ids >= 0]
  assert sorted(real.tolist()) == sorted(r.image_id for r in src.records)
  assert len(set(real.tolist())) == len(real) == 7
  for b in batches:
    pad = b['image_id'] < 0
    assert (b['image'][pad] == 0).all() and not b['gt_valid'][pad].any()
    assert np.isfinite(b['im_info']).all() and (b['im_info'][:, 2] > 0).all()
  again = list(e)
  for x, y in zip(batches, again):
    _same(x, y)
  # Two hosts: each gets half of every global batch, same number of batches.
  e2 = build_eval_loader(cfg, 'val', batch_size=4)
  halves = [list(build_eval_loader(cfg, 'val', batch_size=4, process_index=p,
                                   process_count=2)) for p in range(2)]
  full = list(e2)
  assert len(halves[0]) == len(halves[1]) == len(full)
  for f, h0, h1 in zip(full, *halves):
    _same(f, {k: np.concatenate([h0[k], h1[k]]) for k in f})


def test_eval_batches_keep_boxes_in_canvas_pixels(cfg):
  src = build_source(cfg, 'val')
  recs = {r.image_id: r for r in src.records}
  for b in build_eval_loader(cfg, 'val', batch_size=2):
    for i, iid in enumerate(b['image_id']):
      if iid < 0:
        continue
      r, s = recs[int(iid)], b['im_info'][i, 2]
      n = min(len(r.boxes), 6)
      assert b['gt_valid'][i].sum() == n
      # Scaled by s (clipping to the rounded canvas moves < 1 original px).
      np.testing.assert_allclose(b['gt_boxes'][i, :n] / s, r.boxes[:n],
                                 atol=1.0)


def _one_image_cfg(tmp_path, h, w, n_boxes=1, **kw):
  anns = [{'id': k + 1, 'image_id': 1, 'category_id': 1,
           'bbox': [1 + k, 1, 3, 3], 'iscrowd': 0} for k in range(n_boxes)]
  write_coco(str(tmp_path), 's', [{'id': 1, 'file_name': 'x.png',
                                   'height': h, 'width': w}], anns)
  c = tiny_data_config(str(tmp_path), name='coco', train_split='s',
                       val_split='s')
  c.buckets = ((64, 128),)
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_image_no_bucket_holds(tmp_path, caplog):
  """Training: an error naming the image. Evaluation (which must see every
  image, at the seed's size, uncropped): a canvas of its own, logged."""
  c = _one_image_cfg(tmp_path, 100, 40)  # portrait: only a landscape bucket
  with pytest.raises(DataError, match=r'x\.png \(image_id 1\): 100x40 '
                     r'resizes to 128x64'):
    build_train_loader(c, seed=0, global_batch_size=1)
  with caplog.at_level('INFO'):
    loader = build_eval_loader(c, 's', batch_size=1)
  assert any('canvas(es) added' in m and '(128, 64)' in m
             for m in caplog.messages)
  b = next(iter(loader))
  assert b['image'].shape == (1, 128, 64, 3)
  np.testing.assert_allclose(b['im_info'][0], [128, 51, 1.28])


def test_crop_makes_extreme_ratio_fit_in_training(tmp_path):
  # Ratio 5 with max_size 256: resized whole it is 51x256, which the
  # 64x128 bucket cannot hold; cropped to 20x40 it becomes 64x128.
  c = _one_image_cfg(tmp_path, 20, 100, max_size=256)
  b = next(build_train_loader(c, seed=0, global_batch_size=1))
  np.testing.assert_allclose(b['im_info'][0], [64, 128, 3.2])
  with pytest.raises(DataError, match='fit no bucket'):
    c.crop_extreme_ratios = False
    build_train_loader(c, seed=0, global_batch_size=1)
  c.crop_extreme_ratios = True
  b = next(iter(build_eval_loader(c, 's', batch_size=1)))  # eval never crops
  assert b['image'].shape == (1, 64, 256, 3)   # a canvas of its own


def test_too_many_boxes_counted_not_silent(tmp_path, caplog):
  c = _one_image_cfg(tmp_path, 40, 60, n_boxes=9)  # max_num_box = 6
  it = build_train_loader(c, seed=0, global_batch_size=1)
  assert it.stats['gt_over_max_num_box_images'] == 1
  assert it.stats['gt_over_max_num_box_boxes'] == 3
  assert 'max_num_box=6' in caplog.text and 'image_id 1' in caplog.text
  assert next(it)['gt_valid'].sum() == 6
  e = build_eval_loader(c, 's', batch_size=1)
  assert e.stats['gt_over_max_num_box_boxes'] == 3


def test_no_training_images_left(tmp_path):
  write_coco(str(tmp_path), 's', [{'id': 1, 'file_name': 'x.png',
                                   'height': 10, 'width': 10}], [])
  c = tiny_data_config(str(tmp_path), name='coco', train_split='s')
  with pytest.raises(DataError, match='no training images'):
    build_train_loader(c, seed=0, global_batch_size=1)
