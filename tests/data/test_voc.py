"""Pascal VOC reader: 1-based -> 0-based, difficult, splits, bad input."""

import contextlib
import io
import os

import numpy as np
import pytest

from frcnn_jax.data import default_data_config
from frcnn_jax.data import loader
from frcnn_jax.data import records as S
from frcnn_jax.data import voc
from frcnn_jax.data.testing import voc_xml, write_voc


def cfg(root, **kw):
  c = default_data_config()
  c.name = 'voc'
  c.root = str(root)
  c.train_split = '2007_trainval'
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture
def devkit(tmp_path):
  write_voc(str(tmp_path), '2007', 'trainval', [
      ('000005', (30, 40), [('chair', (1, 2, 10, 20), 0),
                            ('person', (5, 5, 40, 30), 1)]),
      ('000007', (30, 40), [('car', (3, 3, 3, 3), 0)]),
  ])
  write_voc(str(tmp_path), '2012', 'trainval', [
      ('2008_000008', (20, 20), [('dog', (2, 2, 19, 19), 0)]),
  ])
  return tmp_path


def test_conversion_classes_ids(devkit):
  src = voc.build_voc_source(cfg(devkit), '2007_trainval')
  assert src.num_classes == 21 and src.class_names[15] == 'person'
  r5, r7 = src.records
  assert (r5.image_id, r5.height, r5.width) == (5, 30, 40)
  assert r5.path.endswith(os.path.join('VOC2007', 'JPEGImages', '000005.jpg'))
  np.testing.assert_array_equal(r5.boxes, [[0, 1, 9, 19], [4, 4, 39, 29]])
  assert r5.boxes.dtype == np.float32
  assert r5.classes.tolist() == [9, 15]
  assert r5.difficult.tolist() == [False, True]
  np.testing.assert_array_equal(r7.boxes, [[2, 2, 2, 2]])  # 1 px box kept
  assert src.load_image(r5).shape == (30, 40, 3)


def test_union_of_years(devkit):
  src = voc.build_voc_source(cfg(devkit), '2007_trainval+2012_trainval')
  assert [r.image_id for r in src.records] == [5, 7, 2008000008]


def test_difficult_left_out_of_training_and_ignored_by_cocoeval(devkit):
  src = voc.build_voc_source(cfg(devkit), '2007_trainval')
  st = S.DropStats()
  recs = loader.training_records(src, cfg(devkit), st)
  assert recs[0].classes.tolist() == [9] and st['box_difficult'] == 1
  recs = loader.training_records(src, cfg(devkit, use_difficult=True),
                                 S.DropStats())
  assert recs[0].classes.tolist() == [9, 15]
  gt = src.coco_gt()
  crowd = {a['category_id']: a['iscrowd'] for a in gt.dataset['annotations']}
  assert crowd == {9: 0, 15: 1, 7: 0}
  a = [x for x in gt.dataset['annotations'] if x['category_id'] == 9][0]
  assert a['bbox'] == [0.0, 1.0, 10.0, 19.0]  # xmin-1, ymin-1, w, h
  # A detection on the difficult box neither helps nor hurts.
  from pycocotools.cocoeval import COCOeval
  dets = [{'image_id': 5, 'category_id': 9, 'bbox': a['bbox'], 'score': 1},
          {'image_id': 7, 'category_id': 7, 'bbox': [2, 2, 1, 1], 'score': 1},
          {'image_id': 5, 'category_id': 15, 'bbox': [4, 4, 36, 26],
           'score': 1}]
  with contextlib.redirect_stdout(io.StringIO()):
    e = COCOeval(gt, gt.loadRes(dets), 'bbox')
    e.evaluate(), e.accumulate(), e.summarize()
  assert e.stats[1] == pytest.approx(1.0)  # AP50


def test_malformed_xml(devkit):
  path = os.path.join(devkit, 'VOC2007', 'Annotations', '000007.xml')
  with open(path, 'w') as f:
    f.write('<annotation><object></annotation')
  with pytest.raises(S.DataError, match=r'000007\.xml: image 000007 \(image_id '
                     r'7\): malformed XML'):
    voc.build_voc_source(cfg(devkit), '2007_trainval')


@pytest.mark.parametrize('text, pattern', [
    ('<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1'
     '</ymin><xmax>5</xmax></bndbox></object></annotation>',
     r"object 0 bndbox: missing field 'ymax'"),
    ('<annotation><object><name>cat</name></object></annotation>',
     r'object 0: missing field "bndbox"'),
    ('<annotation><object><name>cat</name><bndbox><xmin>a</xmin><ymin>1'
     '</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>',
     r"field 'xmin' is not a number"),
])
def test_missing_or_bad_fields(tmp_path, text, pattern):
  write_voc(str(tmp_path), '2007', 'trainval', [('000001', (10, 10), [])],
            xml_override={'000001': text})
  with pytest.raises(S.DataError, match=pattern):
    voc.build_voc_source(cfg(tmp_path), '2007_trainval')


def test_bad_boxes_counted(tmp_path):
  write_voc(str(tmp_path), '2007', 'trainval', [('000001', (30, 40), [
      ('cat', (20, 5, 10, 9), 0),        # x2 < x1
      ('cat', ('nan', 5, 10, 9), 0),     # NaN
      ('unicorn', (1, 1, 5, 5), 0),      # unknown class
      ('cat', (100, 1, 120, 5), 0),      # outside
      ('cat', (0, 0, 45, 10), 0),        # partly outside (0 -> -1): clipped
      ('cat', (2, 2, 6, 6), 0),          # fine
  ])])
  src = voc.build_voc_source(cfg(tmp_path), '2007_trainval')
  st = src.stats
  assert (st['box_inverted'], st['box_non_finite'], st['box_unknown_category'],
          st['box_outside'], st['box_clipped']) == (1, 1, 1, 1, 1)
  np.testing.assert_array_equal(src.records[0].boxes,
                                [[0, 0, 39, 9], [1, 1, 5, 5]])
  assert 'object 0' in st.examples['box_inverted'][0]
  assert '000001.xml' in st.examples['box_inverted'][0]
  got = [(d.reason, d.class_id) for d in src.dropped[1]]
  assert got == [('box_unknown_category', 0), ('box_inverted', 8),
                 ('box_non_finite', 8), ('box_outside', 8)]
  np.testing.assert_array_equal(src.dropped[1][0].box, [0, 0, 4, 4])


def test_missing_size_read_from_image(tmp_path):
  write_voc(str(tmp_path), '2007', 'trainval',
            [('000001', (25, 35), [('cat', (2, 2, 6, 6), 0)])],
            xml_override={'000001': voc_xml('000001', None,
                                            [('cat', (2, 2, 6, 6), 0)])})
  src = voc.build_voc_source(cfg(tmp_path), '2007_trainval')
  assert (src.records[0].height, src.records[0].width) == (25, 35)
  assert src.stats['size_from_image'] == 1


def test_missing_image_set_and_image(tmp_path, devkit):
  with pytest.raises(S.DataError, match='test.txt: VOC image set not found'):
    voc.build_voc_source(cfg(devkit), '2007_test')
  os.remove(os.path.join(devkit, 'VOC2007', 'JPEGImages', '000007.jpg'))
  with pytest.raises(S.ImageLoadError, match=r'000007\.jpg \(image_id 7\)'):
    voc.build_voc_source(cfg(devkit), '2007_trainval')


def test_non_numeric_names_get_sequential_ids(tmp_path):
  write_voc(str(tmp_path), '2007', 'trainval',
            [('b', (10, 10), []), ('a', (10, 10), [])])
  src = voc.build_voc_source(cfg(tmp_path), '2007_trainval')
  assert [r.image_id for r in src.records] == [0, 1]
