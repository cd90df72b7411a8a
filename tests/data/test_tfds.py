"""TFDS reader on a tiny array_record dataset prepared here (no TensorFlow,
no network): normalized boxes -> inclusive pixels, crowd, difficult, ids."""

import io

import numpy as np
import pytest
from etils import epath
from PIL import Image

tfds = pytest.importorskip('tensorflow_datasets')

from frcnn_jax.data import datasets  # noqa: E402
from frcnn_jax.data import default_data_config  # noqa: E402
from frcnn_jax.data import loader  # noqa: E402
from frcnn_jax.data import records as S  # noqa: E402
from frcnn_jax.data import tfds as tfds_reader  # noqa: E402

# (h, w, [(ymin, xmin, ymax, xmax) normalized, label, crowd, difficult])
EXAMPLES = [
    (40, 60, [((0.25, 0.5, 0.75, 1.0), 0, False, False),
              ((0.0, 0.0, 1.0, 1.0), 1, True, False)]),
    (50, 20, [((0.1, 0.1, 0.5, 0.5), 1, False, True)]),
    (30, 30, []),
    (30, 30, [((0.5, 0.5, 0.5, 0.9), 0, False, False)]),  # zero height
]


def _png(h, w):
  b = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), 77, np.uint8)).save(b, 'PNG')
  b.seek(0)
  return b


class TinyDet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO/VOC-like features; images given as encoded bytes (no TF needed)."""
  VERSION = tfds.core.Version('1.0.0')
  # TFDS finds a builder's files from its module; in a test package
  # (tests.data) that lookup needs the importlib_resources backport.
  code_path = epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'image/filename': tfds.features.Text(),
        'image/id': np.int64,
        'objects': tfds.features.Sequence({
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(names=['cat', 'dog']),
            'is_crowd': np.bool_,
            'is_difficult': np.bool_,
        })}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i, (h, w, objs) in enumerate(EXAMPLES):
      yield i, {
          'image': _png(h, w), 'image/filename': f'{i}.png',
          'image/id': 1000 + i,
          'objects': {
              'bbox': np.array([o[0] for o in objs], np.float32).reshape(-1, 4),
              'label': [o[1] for o in objs],
              'is_crowd': [o[2] for o in objs],
              'is_difficult': [o[3] for o in objs]}}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  b = TinyDet(data_dir=d, file_format='array_record')
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return d


def _cfg(data_dir):
  c = default_data_config()
  c.name = 'tfds'
  c.tfds_name = 'tiny_det'
  c.tfds_data_dir = data_dir
  c.train_split = 'train'
  c.scale, c.max_size = 64, 128
  c.buckets = ((64, 128), (128, 64))
  return c


def test_records_boxes_and_classes(data_dir):
  src = datasets.build_source(_cfg(data_dir), 'train')
  assert src.class_names == ['__background__', 'cat', 'dog']
  # TFDS shuffles examples when preparing: look records up by image/id.
  by_id = {r.image_id: r for r in src.records}
  assert sorted(by_id) == [1000, 1001, 1002, 1003]
  r0, r1, r2, r3 = (by_id[i] for i in sorted(by_id))
  assert (r0.height, r0.width) == (40, 60)
  # x1 = xmin * W, x2 = xmax * W - 1: the COCO reader's box for
  # [x, y, w, h] = [30, 10, 30, 20].
  np.testing.assert_allclose(r0.boxes, [[30, 10, 59, 29]], atol=1e-4)
  assert r0.classes.tolist() == [1]                  # crowd kept out
  np.testing.assert_allclose(r1.boxes, [[2, 5, 9, 24]], atol=1e-4)
  assert r1.difficult.tolist() == [True]
  assert len(r2.boxes) == 0 and len(r3.boxes) == 0
  assert src.stats['box_crowd'] == 1 and src.stats['box_zero_area'] == 1
  assert src.load_image(r1).shape == (50, 20, 3)
  reasons = sorted(d.reason for v in src.dropped.values() for d in v)
  assert reasons == ['box_crowd', 'box_zero_area']
  assert [d.reason for d in src.dropped[1000]] == ['box_crowd']


def test_coco_gt_has_crowd_and_difficult(data_dir):
  src = datasets.build_source(_cfg(data_dir), 'train')
  d = src.coco_gt().dataset
  by_img = {}
  for a in d['annotations']:
    by_img.setdefault(a['image_id'], []).append((a['bbox'], a['iscrowd']))
  assert by_img[1000][0][1] == 0 and by_img[1000][1][1] == 1
  np.testing.assert_allclose(by_img[1000][0][0], [30, 10, 30, 20], atol=1e-4)
  assert by_img[1001][0][1] == 1  # difficult -> iscrowd
  assert {im['id'] for im in d['images']} == {1000, 1001, 1002, 1003}


def test_voc_style_one_based_coordinates(data_dir):
  src = tfds_reader.read_tfds('tiny_det', 'train', data_dir, one_based=True)
  # xmin / W held VOC's 1-based xmin: 0.5 * 60 = 30 -> x1 = 29, rounded.
  r0 = [r for r in src.records if r.image_id == 1000][0]
  np.testing.assert_array_equal(r0.boxes, [[29, 9, 59, 29]])


def test_train_and_eval_loaders_on_tfds(data_dir):
  c = _cfg(data_dir)
  L = loader.build_train_loader(c, seed=0, global_batch_size=1)
  b = next(L)
  assert b['image'].shape[1:] in ((64, 128, 3), (128, 64, 3))
  E = loader.build_eval_loader(c, 'train', batch_size=2)
  ids = sorted(i for b in E for i in b['image_id'].tolist() if i >= 0)
  assert ids == [1000, 1001, 1002, 1003]


def test_missing_dataset_is_a_clear_error(tmp_path):
  c = _cfg(str(tmp_path))
  with pytest.raises(S.DataError, match='tiny_det.*cannot open|no split'):
    datasets.build_source(c, 'train')
