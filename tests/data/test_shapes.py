"""Synthetic shapes: a real COCO-format dataset, deterministic, idempotent."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from frcnn_jax.data import build_source
from frcnn_jax.data import DataError
from frcnn_jax.data import default_data_config
from frcnn_jax.data import shapes
from frcnn_jax.data import transforms as T
from frcnn_jax.data.testing import tiny_data_config


def _files(root):
  out = {}
  for d, _, fs in os.walk(root):
    for f in fs:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = open(p, 'rb').read()
  return out


def test_deterministic_and_idempotent(tmp_path):
  c = tiny_data_config(str(tmp_path / 'a'))
  shapes.ensure_shapes_dataset(c.root, c.shapes, seed=3)
  shapes.ensure_shapes_dataset(str(tmp_path / 'b'), c.shapes, seed=3)
  a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
  assert a == b and len(a) == 24 + 7 + 3
  stamp = os.path.getmtime(tmp_path / 'a' / 'shapes.json')
  shapes.ensure_shapes_dataset(c.root, c.shapes, seed=3)  # no-op
  assert os.path.getmtime(tmp_path / 'a' / 'shapes.json') == stamp
  # Another seed or config: regenerated in place.
  shapes.ensure_shapes_dataset(c.root, c.shapes, seed=4)
  assert _files(tmp_path / 'a') != a
  c.shapes.num_val = 2
  shapes.ensure_shapes_dataset(c.root, c.shapes, seed=4)
  assert len(os.listdir(tmp_path / 'a' / 'val')) == 2
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]


def test_refuses_foreign_folder(tmp_path):
  (tmp_path / 'mine.txt').write_text('keep me')
  c = tiny_data_config(str(tmp_path))
  with pytest.raises(DataError, match='refusing'):
    shapes.ensure_shapes_dataset(c.root, c.shapes, seed=0)
  assert (tmp_path / 'mine.txt').read_text() == 'keep me'


def test_coco_format_and_boxes_on_visible_pixels(tmp_path):
  c = tiny_data_config(str(tmp_path))
  shapes.ensure_shapes_dataset(c.root, c.shapes, seed=0)
  d = json.load(open(tmp_path / 'annotations' / 'instances_train.json'))
  assert [x['name'] for x in d['categories']] == ['circle', 'square',
                                                  'triangle']
  assert len(d['images']) == 24 and d['annotations']
  for split, idx in (('train', 0), ('val', 1)):
    d = json.load(open(tmp_path / 'annotations' / f'instances_{split}.json'))
    for k, im in enumerate(d['images'][:5]):
      pix = np.asarray(Image.open(tmp_path / split / im['file_name']))
      assert pix.shape == (im['height'], im['width'], 3)
      # Regenerate the masks: the json boxes are the visible-pixel boxes.
      again, objects = shapes.make_image(
          shapes._plain(dict(shapes.default_shapes_config(),
                             **c.shapes.to_dict())), 0, idx, k)
      np.testing.assert_array_equal(again, pix)
      anns = [a for a in d['annotations'] if a['image_id'] == im['id']]
      assert len(anns) == len(objects)
      for a, (cls, m) in zip(anns, objects):
        ys, xs = np.nonzero(m)
        assert a['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                             ys.max() - ys.min() + 1]
        assert a['category_id'] == cls + 1 and a['area'] == m.sum()


def test_defaults_use_several_buckets_and_object_sizes(tmp_path):
  """Default generator settings (fewer images): portrait and landscape
  images, objects from ~16 px, several per image, some occluded."""
  cfg = shapes.default_shapes_config()
  p = T.TransformParams.from_config(default_data_config())
  sizes, ratios, counts, used = [], [], [], set()
  for i in range(40):
    img, objects = shapes.make_image(cfg, 0, 0, i)
    h, w = img.shape[:2]
    assert cfg['min_image_size'] <= max(h, w) <= cfg['max_image_size']
    ratios.append(w / h)
    used.add(T.choose_bucket(*T.planned_size(h, w, p, False)[:2], p.buckets))
    counts.append(len(objects))
    for _, m in objects:
      ys, xs = np.nonzero(m)
      sizes.append(max(np.ptp(xs), np.ptp(ys)) + 1)
  assert min(ratios) < 0.8 and max(ratios) > 1.25
  assert min(sizes) < 24 and max(sizes) > 80 and max(counts) >= 3
  assert used == {0, 1}  # both default buckets (608x1008, 1008x608)


def test_same_code_path_as_coco(tmp_path):
  c = tiny_data_config(str(tmp_path))
  src = build_source(c, 'val')  # generates on first use
  assert src.num_classes == 4 and len(src.records) == 7
  assert src.coco_gt().dataset['images'][0]['file_name'].endswith('.png')
  assert src.load_image(src.records[0]).dtype == np.uint8
