"""COCO reader: conversion, category mapping, evaluation GT, bad input."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from frcnn_jax.data import coco
from frcnn_jax.data import default_data_config
from frcnn_jax.data import loader
from frcnn_jax.data import records as S
from frcnn_jax.data.testing import coco_like_detections
from frcnn_jax.data.testing import write_coco
from frcnn_jax.data.testing import write_coco_like
from frcnn_jax.data.testing import write_image


def img(iid, h=40, w=60, name=None):
  return {'id': iid, 'file_name': name or f'{iid}.png', 'height': h,
          'width': w}


def ann(aid, iid, bbox, cat=1, crowd=0):
  return {'id': aid, 'image_id': iid, 'category_id': cat, 'bbox': bbox,
          'iscrowd': crowd, 'area': 1.0}


def read(root, split='s', **kw):
  ann_file, img_dir = coco.coco_paths(str(root), split)
  return coco.read_coco(ann_file, img_dir, **kw)


def test_conversion_and_category_mapping(tmp_path):
  cats = [{'id': 90, 'name': 'z'}, {'id': 3, 'name': 'c'},
          {'id': 7, 'name': 'g'}]
  write_coco(tmp_path, 's', [img(5), img(9)],
             [ann(1, 5, [10, 20, 30, 10], cat=7),
              ann(2, 5, [0.5, 1.25, 2, 3], cat=90),
              ann(3, 9, [0, 0, 60, 40], cat=3)], cats)
  src = read(tmp_path)
  assert src.class_names == ['__background__', 'c', 'g', 'z']
  assert src.num_classes == 4
  assert [src.cat_id(k) for k in (1, 2, 3)] == [3, 7, 90]
  assert [src.contiguous_id(c) for c in (3, 7, 90)] == [1, 2, 3]
  r5, r9 = src.records
  assert (r5.image_id, r5.height, r5.width) == (5, 40, 60)
  assert r5.path == os.path.join(str(tmp_path), 's', '5.png')
  np.testing.assert_allclose(r5.boxes, [[10, 20, 39, 29], [0.5, 1.25, 1.5,
                                                           3.25]])
  assert r5.classes.tolist() == [2, 3] and r5.boxes.dtype == np.float32
  np.testing.assert_allclose(r9.boxes, [[0, 0, 59, 39]])  # full image
  assert not src.stats.counts


def test_coco_gt_is_the_file_and_perfect_detections_score_one(tmp_path):
  from pycocotools.cocoeval import COCOeval
  anns = [ann(1, 1, [10, 5, 20, 12]), ann(2, 1, [30.5, 2, 11, 30], cat=2),
          ann(3, 2, [0, 0, 59, 39], crowd=1), ann(4, 2, [5, 5, 40, 30])]
  write_coco(tmp_path, 's', [img(1), img(2)], anns)
  src = read(tmp_path)
  gt = src.coco_gt()
  assert len(gt.dataset['annotations']) == 4  # crowd kept for COCOeval
  assert src.stats['box_crowd'] == 1
  (crowd,) = src.dropped[2]
  assert crowd.reason == 'box_crowd' and crowd.class_id == 1
  np.testing.assert_allclose(crowd.box, [0, 0, 58, 38])
  # Detections = the training boxes written back with w = x2 - x1 + 1.
  dets = []
  for r in src.records:
    for b, c in zip(r.boxes, r.classes):
      dets.append({'image_id': r.image_id, 'category_id': src.cat_id(int(c)),
                   'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0] + 1),
                            float(b[3] - b[1] + 1)], 'score': 0.9})
  e = COCOeval(gt, gt.loadRes(dets), 'bbox')
  import contextlib
  with contextlib.redirect_stdout(io.StringIO()):
    e.evaluate(), e.accumulate(), e.summarize()
  assert e.stats[0] == pytest.approx(1.0)


# --- bad input --------------------------------------------------------------


def test_malformed_json_names_file_and_position(tmp_path):
  path = write_coco(tmp_path, 's', [], [], raw='{"images": [1, 2,,]}')
  with pytest.raises(S.DataError, match=r'instances_s\.json.*line 1 column'):
    read(tmp_path)


def test_missing_annotation_file(tmp_path):
  with pytest.raises(S.DataError, match='not found'):
    read(tmp_path, 'nope')


@pytest.mark.parametrize('bad, pattern', [
    ({'id': 1, 'image_id': 1, 'category_id': 1}, r"annotation id 1, image_id 1\).*missing field 'bbox'"),
    (ann(7, 1, [1, 2, 3]), r"annotation id 7, image_id 1\).*\"bbox\" must have 4"),
    (ann(8, 1, [1, 'x', 3, 4]), r'annotation id 8.*bbox'),
    ({'id': 9, 'image_id': 1, 'bbox': [0, 0, 1, 1]}, r"annotation id 9.*missing field 'category_id'"),
    (ann(10, 1, [0, 0, 1, 1], crowd=5), r'annotation id 10.*iscrowd'),
])
def test_malformed_annotation_fields(tmp_path, bad, pattern):
  write_coco(tmp_path, 's', [img(1)], [bad])
  with pytest.raises(S.DataError, match=pattern):
    read(tmp_path)


@pytest.mark.parametrize('bad_image, pattern', [
    ({'id': 3, 'file_name': 'a.png', 'width': 5}, r"image_id 3\).*missing field 'height'"),
    ({'id': 3, 'file_name': 'a.png', 'width': 5, 'height': 0}, r"image_id 3\).*'height' must be a positive"),
    ({'id': 2**31, 'file_name': 'a.png', 'width': 5, 'height': 5}, r'int32'),
    ({'id': 'x', 'file_name': 'a.png', 'width': 5, 'height': 5}, r"field 'id' has the wrong type"),
])
def test_malformed_image_fields(tmp_path, bad_image, pattern):
  write_coco(tmp_path, 's', [bad_image], [], write_images=False)
  with pytest.raises(S.DataError, match=pattern):
    read(tmp_path, verify_images='none')


def test_duplicate_image_id(tmp_path):
  write_coco(tmp_path, 's', [img(1), img(1, name='b.png')], [])
  with pytest.raises(S.DataError, match='image_id 1.*duplicate'):
    read(tmp_path)


def test_bad_boxes_are_counted_drops(tmp_path, caplog):
  anns = [
      ann(1, 1, [10, 10, -5, 5]),                # x2 < x1 (negative width)
      ann(2, 1, [float('nan'), 1, 2, 2]),        # NaN
      ann(3, 1, [1, 1, float('inf'), 2]),        # inf
      ann(4, 1, [1, 1, None, 2]),                # null -> NaN
      ann(5, 1, [5, 5, 0, 4]),                   # zero width
      ann(6, 1, [5, 5, 0.4, 4]),                 # under one pixel
      ann(7, 1, [100, 100, 5, 5]),               # wholly outside (60x40)
      ann(8, 1, [-5, 30, 20, 20]),               # partly outside: clipped
      ann(9, 1, [3, 4, 5, 6], cat=42),           # unknown category
      ann(10, 77, [3, 4, 5, 6]),                 # unknown image
      ann(11, 1, [3, 4, 5, 6]),                  # fine
  ]
  write_coco(tmp_path, 's', [img(1)], anns)
  src = read(tmp_path)
  st = src.stats
  assert st['box_inverted'] == 1
  assert st['box_non_finite'] == 3
  assert st['box_zero_area'] == 2
  assert st['box_outside'] == 1
  assert st['box_clipped'] == 1
  assert st['box_unknown_category'] == 1
  assert st['annotation_unknown_image'] == 1
  (r,) = src.records
  np.testing.assert_allclose(r.boxes, [[0, 30, 14, 39], [3, 4, 7, 9]])
  assert np.isfinite(r.boxes).all()
  # Messages name the file, the annotation, the image id and the field.
  msg = ' '.join(st.examples['box_inverted'])
  assert 'instances_s.json' in msg and 'annotation id 1' in msg
  assert 'image_id 1' in msg and 'bbox' in msg
  assert 'box_non_finite' in caplog.text
  # Every dropped box of a known image is kept with its reason, as
  # annotated (for the dataset browser); the unknown image's is not.
  got = [(d.reason, d.class_id, d.box.tolist()) for d in src.dropped[1]]
  nan = float('nan')
  want = [('box_inverted', 1, [10, 10, 4, 14]),
          ('box_non_finite', 1, [nan, 1, nan, 2]),
          ('box_non_finite', 1, [1, 1, float('inf'), 2]),
          ('box_non_finite', 1, [1, 1, nan, 2]),
          ('box_zero_area', 1, [5, 5, 4, 8]),
          ('box_zero_area', 1, [5, 5, 4.4, 8]),
          ('box_outside', 1, [100, 100, 104, 104]),
          ('box_unknown_category', 0, [3, 4, 7, 9])]
  assert len(got) == len(want) and set(src.dropped) == {1}
  for (r, c, b), (wr, wc, wb) in zip(got, want):
    assert (r, c) == (wr, wc)
    np.testing.assert_allclose(b, wb)


def test_missing_image_file_is_a_build_error(tmp_path):
  write_coco(tmp_path, 's', [img(1), img(2)], [])
  os.remove(tmp_path / 's' / '2.png')
  with pytest.raises(S.ImageLoadError, match=r'2\.png \(image_id 2\).*not '
                     'found'):
    read(tmp_path)
  read(tmp_path, verify_images='none')  # opting out builds


def test_truncated_and_unreadable_images(tmp_path):
  write_coco(tmp_path, 's', [img(1, name='t.jpg'), img(2, name='u.png')], [])
  buf = io.BytesIO()
  Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(buf, 'JPEG')
  (tmp_path / 's' / 't.jpg').write_bytes(buf.getvalue()[:300])
  (tmp_path / 's' / 'u.png').write_bytes(b'this is not an image')
  src = read(tmp_path)  # 'exists' passes: the files are there
  with pytest.raises(S.ImageLoadError, match=r't\.jpg \(image_id 1\).*cannot '
                     'decode'):
    src.load_image(src.records[0])
  with pytest.raises(S.ImageLoadError, match=r'u\.png \(image_id 2\)'):
    src.load_image(src.records[1])
  with pytest.raises(S.ImageLoadError, match=r'(?s)2 bad image.*t\.jpg.*u\.png'):
    read(tmp_path, verify_images='full')
  with pytest.raises(S.ImageLoadError, match=r'u\.png'):
    read(tmp_path, verify_images='header')


def test_image_size_differs_from_annotation(tmp_path):
  write_coco(tmp_path, 's', [img(1, h=40, w=60)], [])
  write_image(str(tmp_path / 's' / '1.png'), size=(41, 60))
  src = read(tmp_path)
  with pytest.raises(S.ImageLoadError, match=r'image_id 1.*height/width are '
                     r'40x60.*41x60'):
    src.load_image(src.records[0])
  with pytest.raises(S.ImageLoadError, match='41x60'):
    read(tmp_path, verify_images='header')


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'CMYK', 'P', 'LA', 'I;16', '1'])
def test_image_modes_load_as_rgb(tmp_path, mode):
  rgb = np.zeros((8, 10, 3), np.uint8)
  rgb[:, :5] = (200, 30, 60)
  rgb[:, 5:] = (10, 220, 90)
  fmt = 'JPEG' if mode == 'CMYK' else 'PNG'
  name = 'a.jpg' if fmt == 'JPEG' else 'a.png'
  path = str(tmp_path / 's' / name)
  os.makedirs(tmp_path / 's', exist_ok=True)
  if mode == 'I;16':
    gray = np.asarray(Image.fromarray(rgb).convert('L'), np.uint16) * 257
    Image.fromarray(gray).save(path)  # 16-bit grayscale PNG
  else:
    write_image(path, rgb, mode=mode, fmt=fmt)
  write_coco(tmp_path, 's', [img(1, h=8, w=10, name=name)], [])
  src = read(tmp_path)
  out = src.load_image(src.records[0])
  assert out.shape == (8, 10, 3) and out.dtype == np.uint8
  want = np.asarray(Image.open(path).convert('RGB')) if mode != 'I;16' else (
      np.repeat(np.asarray(Image.fromarray(rgb).convert('L'))[..., None], 3,
                2))
  np.testing.assert_allclose(out.astype(int), want.astype(int), atol=1)
  if mode == 'RGBA':  # colors survive (alpha dropped)
    np.testing.assert_allclose(out[0, 0], (200, 30, 60), atol=12)


def _exif_jpeg(path, raw, orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(raw).save(path, 'JPEG', exif=exif.tobytes(), quality=95)


def test_exif_rotated_jpeg_boxes_refer_to_displayed_image(tmp_path):
  """Orientation 6: the stored 40x100 bitmap is shown rotated 90 deg clockwise
  (100 high, 40 wide). Annotations (and json height/width) refer to the
  displayed image; the loader returns the displayed pixels, so the box lies
  on the object."""
  raw = np.full((40, 100, 3), 30, np.uint8)
  raw[5:15, 60:90] = (250, 20, 20)  # stored: rows 5..14, cols 60..89
  os.makedirs(tmp_path / 's')
  _exif_jpeg(str(tmp_path / 's' / 'r.jpg'), raw, 6)
  # Rotating 90 deg clockwise maps stored (row r, col c) to displayed
  # (row c, col H - 1 - r) with H = 40: rows 60..89, cols 25..34.
  write_coco(tmp_path, 's', [img(1, h=100, w=40, name='r.jpg')],
             [ann(1, 1, [25, 60, 10, 30])])
  src = read(tmp_path, verify_images='header')
  out = src.load_image(src.records[0])
  assert out.shape == (100, 40, 3)
  red = (out[..., 0] > 150) & (out[..., 1] < 100)
  ys, xs = np.nonzero(red)
  box = src.records[0].boxes[0]
  np.testing.assert_allclose([xs.min(), ys.min(), xs.max(), ys.max()], box,
                             atol=1)
  # Through the train transform too: the box stays on the red pixels.
  from frcnn_jax.data import transforms as T
  p = T.TransformParams(scale=64, max_size=160, buckets=((160, 64),),
                        max_num_box=2)
  ex = T.make_example(out, src.records[0].boxes, src.records[0].classes, p,
                      (160, 64), rng=np.random.default_rng(0))
  c = ex['image']
  red = (c[..., 0] > 150) & (c[..., 1] < 100)
  ys, xs = np.nonzero(red)
  np.testing.assert_allclose([xs.min(), ys.min(), xs.max(), ys.max()],
                             ex['gt_boxes'][0], atol=2)


def test_exif_rotated_jpeg_annotated_on_stored_pixels(tmp_path):
  """json sizes of the stored bitmap: a clear error with the hint; with
  exif_transpose=False the stored pixels are used."""
  raw = np.full((40, 100, 3), 30, np.uint8)
  os.makedirs(tmp_path / 's')
  _exif_jpeg(str(tmp_path / 's' / 'r.jpg'), raw, 6)
  write_coco(tmp_path, 's', [img(1, h=40, w=100, name='r.jpg')], [])
  src = read(tmp_path)
  with pytest.raises(S.ImageLoadError, match='EXIF orientation 6.*exif_'
                     'transpose=False'):
    src.load_image(src.records[0])
  with pytest.raises(S.ImageLoadError, match='EXIF orientation 6'):
    read(tmp_path, verify_images='header')
  src = read(tmp_path, exif_transpose=False)
  assert src.load_image(src.records[0]).shape == (40, 100, 3)


def _cfg(root, **kw):
  c = default_data_config()
  c.name = 'coco'
  c.root = str(root)
  c.train_split = 's'
  c.scale, c.max_size = 64, 128
  c.buckets = ((64, 128), (128, 64))
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_empty_and_crowd_only_images_kept_or_skipped(tmp_path):
  anns = [ann(1, 1, [1, 1, 5, 5]), ann(2, 3, [1, 1, 5, 5], crowd=1)]
  write_coco(tmp_path, 's', [img(1), img(2), img(3)], anns)
  src = read(tmp_path)
  assert src.stats['image_empty'] == 1 and src.stats['image_crowd_only'] == 1
  st = S.DropStats()
  kept = loader.training_records(src, _cfg(tmp_path, skip_empty=True), st)
  assert [r.image_id for r in kept] == [1] and st['image_skipped_empty'] == 2
  st = S.DropStats()
  kept = loader.training_records(src, _cfg(tmp_path, skip_empty=False), st)
  assert [r.image_id for r in kept] == [1, 2, 3]
  # Kept negatives produce batches with no valid gt, and no NaN.
  L = loader.TrainLoader(_cfg(tmp_path, skip_empty=False), seed=0,
                         global_batch_size=3)
  b = next(L)
  assert sorted(b['image_id'].tolist()) == [1, 2, 3]
  assert np.isfinite(b['gt_boxes']).all()
  assert b['gt_valid'].sum() == 1


def test_joined_splits(tmp_path):
  write_coco(tmp_path, 'a', [img(1)], [ann(1, 1, [1, 1, 5, 5])])
  write_coco(tmp_path, 'b', [img(2)], [ann(1, 2, [2, 2, 5, 5], cat=2)])
  src = coco.build_coco_source(_cfg(tmp_path), 'a+b')
  assert [r.image_id for r in src.records] == [1, 2]
  assert len(src.coco_gt().dataset['annotations']) == 2
  write_coco(tmp_path, 'c', [img(1)], [])
  with pytest.raises(S.DataError, match='image_id 1 is in both'):
    coco.build_coco_source(_cfg(tmp_path), 'a+c')


# --- valid files other tools accept (exported datasets, COCO test-dev) -------


def _evaluate_perfect(src):
  """COCOeval of detections equal to the training boxes (AP must be 1)."""
  import contextlib
  from pycocotools.cocoeval import COCOeval
  gt = src.coco_gt()
  dets = [{'image_id': r.image_id, 'category_id': src.cat_id(int(c)),
           'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0] + 1),
                    float(b[3] - b[1] + 1)], 'score': 0.9}
          for r in src.records for b, c in zip(r.boxes, r.classes)]
  e = COCOeval(gt, gt.loadRes(dets), 'bbox')
  with contextlib.redirect_stdout(io.StringIO()):
    e.evaluate(), e.accumulate(), e.summarize()
  return e.stats


def test_missing_area_and_iscrowd_are_filled_and_counted(tmp_path, caplog):
  anns = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 5, 20, 12]},
          {'id': 2, 'image_id': 1, 'category_id': 2, 'bbox': [30, 2, 11, 30]},
          {'id': 3, 'image_id': 2, 'category_id': 1, 'bbox': [5, 5, 40, 30],
           'area': 7.0, 'iscrowd': 0}]
  write_coco(tmp_path, 's', [img(1), img(2)], anns)
  with caplog.at_level('INFO'):
    src = read(tmp_path)
  assert src.stats['annotation_area_from_box'] == 2
  assert src.stats['annotation_iscrowd_default'] == 2
  assert sum('no field "area"' in m for m in caplog.messages) == 1  # once
  gt = src.coco_gt().dataset['annotations']
  assert [a['area'] for a in gt] == [240.0, 330.0, 7.0]  # given area kept
  assert [a['iscrowd'] for a in gt] == [0, 0, 0]
  assert _evaluate_perfect(src)[0] == pytest.approx(1.0)  # no KeyError


def test_duplicate_and_missing_annotation_ids_are_renumbered(tmp_path,
                                                             caplog):
  anns = [ann(7, 1, [10, 5, 20, 12]), ann(7, 1, [30, 2, 11, 30], cat=2),
          ann(7, 2, [5, 5, 40, 30]), ann(9, 2, [1, 1, 9, 9])]
  del anns[3]['id']
  write_coco(tmp_path, 's', [img(1), img(2)], anns)
  with caplog.at_level('WARNING'):
    src = read(tmp_path)
  assert src.stats['annotation_id_duplicate'] == 2
  assert src.stats['annotation_id_missing'] == 1
  assert any('repeat an id (first: [7])' in m for m in caplog.messages)
  gt = src.coco_gt()
  assert [a['id'] for a in gt.dataset['annotations']] == [1, 2, 3, 4]
  # COCOeval matches by id: with the ids repeated, a perfect detector would
  # not score 1.
  assert _evaluate_perfect(src)[0] == pytest.approx(1.0)
  assert sum(len(r.boxes) for r in src.records) == 4  # training unaffected


def test_json_without_annotations_is_an_image_list(tmp_path, caplog):
  import json
  path = write_coco(tmp_path, 's', [img(1), img(2)], [])
  d = json.load(open(path))
  del d['annotations']                      # as image_info_test-dev2017.json
  json.dump(d, open(path, 'w'))
  with caplog.at_level('WARNING'):
    src = read(tmp_path)
  assert not src.has_annotations and len(src.records) == 2
  assert any('image list' in m for m in caplog.messages)
  with pytest.raises(S.DataError, match='no "annotations" field.*image list'):
    loader.TrainLoader(_cfg(tmp_path), seed=0, global_batch_size=1)
  # Evaluation: detections, no AP, and it says so.
  from frcnn_jax import eval_lib
  preds = {'image_id': np.array([1, 2]),
           'boxes': np.array([[[1, 1, 9, 9]], [[2, 2, 8, 8]]], np.float32),
           'scores': np.array([[0.9], [0.8]], np.float32),
           'classes': np.array([[1], [2]]), 'valid': np.ones((2, 1), bool)}
  m, results = eval_lib.compute_metrics(src, preds, metric='both')
  assert len(results) == 2 and 'coco' not in m and 'voc07' not in m
  assert 'no AP computed' in m['no_ground_truth']
  assert 'no AP computed' in eval_lib.format_metrics(m)
  assert eval_lib.headline(m) == {}
  # An empty annotation list is a dataset without objects, not an image list.
  write_coco(tmp_path, 'e', [img(1)], [])
  assert read(tmp_path, 'e').has_annotations


# --- one read, same ground truth as the file ---------------------------------


def _cocoeval_stats(gt, dets):
  import contextlib
  from pycocotools.cocoeval import COCOeval
  e = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), 'bbox')
  with contextlib.redirect_stdout(io.StringIO()):
    e.evaluate(), e.accumulate(), e.summarize()
  return e.stats


def _coco_like(tmp_path, **kw):
  path = tmp_path / 'annotations' / 'instances_s.json'
  write_coco_like(str(path), 120, 900, seed=1, **kw)
  return path


def test_coco_gt_equals_pycocotools_reading_the_file(tmp_path):
  from pycocotools.coco import COCO
  path = _coco_like(tmp_path)
  import contextlib
  with contextlib.redirect_stdout(io.StringIO()):
    ref = COCO(str(path))
  src = read(tmp_path, verify_images='none')
  gt = src.coco_gt()
  keys = ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')
  assert ([[a[k] for k in keys] for a in gt.dataset['annotations']] ==
          [[a[k] for k in keys] for a in ref.dataset['annotations']])
  assert ([(i['id'], i['height'], i['width'], i['file_name'])
           for i in gt.dataset['images']] ==
          [(i['id'], i['height'], i['width'], i['file_name'])
           for i in ref.dataset['images']])
  assert gt.dataset['categories'] == ref.dataset['categories']
  assert src.stats['box_crowd'] > 0  # Crowd boxes: out of training, in GT.
  dets = coco_like_detections(ref.dataset, 30, seed=2)
  np.testing.assert_array_equal(_cocoeval_stats(gt, dets),
                                _cocoeval_stats(ref, dets))


def test_fast_and_per_entry_paths_agree(tmp_path):
  import json
  path = _coco_like(tmp_path)
  fast = read(tmp_path, verify_images='none')
  d = json.load(open(path))
  # Valid values the vectorised checks leave to the per-entry pass.
  d['images'][3]['height'] = float(d['images'][3]['height'])
  d['annotations'][7]['image_id'] = float(d['annotations'][7]['image_id'])
  d['annotations'][8]['iscrowd'] = False
  json.dump(d, open(path, 'w'))
  slow = read(tmp_path, verify_images='none')
  assert [(r.image_id, r.path, r.height, r.width) for r in slow.records] == [
      (r.image_id, r.path, r.height, r.width) for r in fast.records]
  for a, b in zip(slow.records, fast.records):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)
  assert slow.stats.as_dict() == fast.stats.as_dict()
  assert (slow.coco_gt().dataset['annotations'] ==
          fast.coco_gt().dataset['annotations'])


@pytest.mark.parametrize('entry, pattern', [
    (5, r'annotations\[1\] \(annotation id 1\): expected an object, got int'),
    ({'id': 4, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 2, 2],
      'area': 'big'}, r'annotations\[1\] \(annotation id 4, image_id 1\): '
     r'field "area" must be a number'),
])
def test_bad_entries_are_named(tmp_path, entry, pattern):
  write_coco(tmp_path, 's', [img(1)], [ann(1, 1, [1, 1, 4, 4]), entry])
  with pytest.raises(S.DataError, match=pattern):
    read(tmp_path)
