"""The built-in synthetic dataset: colored shapes on textured backgrounds.

``ensure_shapes_dataset(root, shapes_config, seed)`` writes a real COCO-format
dataset (once; nothing happens when ``root`` already holds the same one)::

  root/train/000001.png ...            RGB PNG images
  root/val/001001.png ...
  root/annotations/instances_train.json
  root/annotations/instances_val.json
  root/shapes.json                     what generated it (config, seed)

which ``coco.py`` reads like real COCO (``data.name = 'shapes'``, splits
``'train'`` / ``'val'``). Every image is a function of ``(seed, split,
index)`` only.

Each image: a size with the long side in ``[min_image_size,
max_image_size]`` and ``w / h`` log-uniform in ``aspect_ratio_range`` (both
landscape and portrait, so several buckets are used); a textured background
(linear gradient, soft stripes, smooth color noise or a checkerboard) plus
pixel noise; ``min_objects..max_objects`` axis-aligned shapes of the classes
in ``classes`` (``circle``, ``square``, ``triangle``, ``diamond``, ``cross``)
with sizes log-uniform from ``min_object_size`` px to ``max_object_frac`` of
the short side, in colors that stand out from the background under them.
Shapes are drawn in order and may hide at most ``max_occlusion`` of an
earlier shape; the box of a shape is the tight box of its VISIBLE pixels
(as COCO's boxes are), its ``area`` the visible pixel count.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import uuid

import numpy as np
from PIL import Image

from frcnn_jax.data.records import DataError
from ops import boxes as box_ops

GENERATOR_VERSION = 1
SHAPE_CLASSES = ('circle', 'square', 'triangle', 'diamond', 'cross')
SPLITS = ('train', 'val')


def default_shapes_config() -> dict:
  """Defaults (plain dict; ``default_data_config()`` wraps it)."""
  return dict(
      num_train=1000,          # training images
      num_val=200,             # validation images
      min_image_size=160,      # long side of an image, px
      max_image_size=256,
      aspect_ratio_range=(0.5, 2.0),  # w / h, log-uniform
      classes=('circle', 'square', 'triangle'),
      min_objects=1,           # shapes per image
      max_objects=4,
      min_object_size=16,      # shape extent, px (log-uniform) ...
      max_object_frac=0.6,     # ... up to this fraction of the short side
      max_occlusion=0.3,       # most of a shape later shapes may hide
      noise_std=0.0,           # pixel noise std (uint8 levels); > 0 makes
                               # the PNGs ~40x larger and slower to read
      seed=0,                  # dataset seed (independent of config.seed)
  )


def _plain(cfg) -> dict:
  d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
  return json.loads(json.dumps(d))


# ----------------------------------------------------------------------------
# Drawing.


def _background(rng, h, w):
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  c0 = rng.uniform(0, 255, 3).astype(np.float32)
  c1 = rng.uniform(0, 255, 3).astype(np.float32)
  kind = rng.integers(4)
  theta = rng.uniform(0, np.pi)
  proj = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
  if kind == 0:  # linear gradient
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
  elif kind == 1:  # soft stripes
    period = rng.uniform(6, 32)
    t = 0.5 + 0.5 * np.sin(proj * np.float32(2 * np.pi / period))
  elif kind == 2:  # smooth color noise
    g = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)),
                             3)).astype(np.uint8)
    return np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC),
                      np.float32)
  else:  # checkerboard
    q = rng.uniform(8, 40)
    t = ((np.floor(xx / q) + np.floor(yy / q)) % 2).astype(np.float32)
  return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _mask(kind, h, w, x0, y0, s):
  """A shape in the box ``[x0, x0+s) x [y0, y0+s)``: (row slice, col slice,
  boolean mask of that window)."""
  r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y0 + s)), h)
  c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x0 + s)), w)
  v = ((np.arange(r0, r1, dtype=np.float32) - y0 + 0.5) / s)[:, None]
  u = ((np.arange(c0, c1, dtype=np.float32) - x0 + 0.5) / s)[None, :]
  inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
  if kind == 'square':
    m = inside
  elif kind == 'circle':
    m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
  elif kind == 'triangle':  # apex up, base at the bottom
    m = inside & (v >= 2 * np.abs(u - 0.5))
  elif kind == 'diamond':
    m = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
  elif kind == 'cross':
    bar = 0.18
    m = inside & ((np.abs(u - 0.5) <= bar) | (np.abs(v - 0.5) <= bar))
  else:
    raise ValueError(f'unknown shape {kind!r}; choose from {SHAPE_CLASSES}')
  return slice(r0, r1), slice(c0, c1), m


def _color(rng, region_mean):
  best, best_d = None, -1.0
  for _ in range(12):
    c = rng.uniform(0, 255, 3)
    d = float(np.abs(c - region_mean).sum())
    if d > best_d:
      best, best_d = c, d
    if d >= 180:
      break
  return best


def make_image(cfg: dict, seed: int, split_index: int, index: int):
  """One image and its objects: (uint8 [h,w,3], [(class_idx, mask)])."""
  rng = np.random.default_rng([seed, split_index, index, GENERATOR_VERSION])
  long_side = int(rng.integers(cfg['min_image_size'],
                               cfg['max_image_size'] + 1))
  lo, hi = np.log(cfg['aspect_ratio_range'])
  ratio = float(np.exp(rng.uniform(lo, hi)))  # w / h
  if ratio >= 1:
    w, h = long_side, max(int(round(long_side / ratio)), 8)
  else:
    h, w = long_side, max(int(round(long_side * ratio)), 8)
  img = _background(rng, h, w).astype(np.float32)
  owner = np.full((h, w), -1, np.int32)
  full_area = []   # pixels of each placed shape
  visible = []     # of which still visible
  classes = []
  n_obj = int(rng.integers(cfg['min_objects'], cfg['max_objects'] + 1))
  smin = float(cfg['min_object_size'])
  smax = max(smin, cfg['max_object_frac'] * min(h, w))
  for _ in range(n_obj):
    for _attempt in range(20):
      s = float(np.exp(rng.uniform(np.log(smin), np.log(smax))))
      s = min(s, min(h, w))
      x0 = rng.uniform(0, w - s)
      y0 = rng.uniform(0, h - s)
      k = int(rng.integers(len(cfg['classes'])))
      rows, cols, m = _mask(cfg['classes'][k], h, w, x0, y0, s)
      if m.sum() < 16:
        continue
      under = owner[rows, cols][m]
      hidden = np.bincount(under[under >= 0], minlength=len(classes))
      if all(visible[j] - hidden[j] >= (1 - cfg['max_occlusion']) *
             full_area[j] for j in range(len(classes))):
        break
    else:
      continue
    for j in range(len(classes)):
      visible[j] -= int(hidden[j])
    window = img[rows, cols]
    color = _color(rng, window[m].mean(axis=0))
    shade = rng.uniform(-20, 20, 3)  # a faint gradient across the shape
    v = ((np.arange(rows.start, rows.stop) - y0) / s)[:, None] - 0.5
    fill = color + shade * v[:, :, None]
    window[m] = np.broadcast_to(fill, window.shape)[m]
    owner[rows, cols][m] = len(classes)
    full_area.append(int(m.sum()))
    visible.append(int(m.sum()))
    classes.append(k)
  if cfg['noise_std'] > 0:
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
        cfg['noise_std'])
  img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
  objects = [(k, owner == j) for j, k in enumerate(classes)]
  return img, objects


def _write_split(out_dir, cfg, seed, split_index, split, count, first_id):
  img_dir = os.path.join(out_dir, split)
  os.makedirs(img_dir, exist_ok=True)

  def one(i):
    iid = first_id + i
    img, objects = make_image(cfg, seed, split_index, i)
    fname = f'{iid:06d}.png'
    Image.fromarray(img).save(os.path.join(img_dir, fname), compress_level=1)
    anns = []
    for k, m in objects:
      ys, xs = np.nonzero(m)
      if len(xs) == 0:
        continue
      x1, x2, y1, y2 = int(xs.min()), int(xs.max()), int(ys.min()), int(
          ys.max())
      anns.append({'image_id': iid, 'category_id': k + 1,
                   'bbox': [int(v) for v in box_ops.xyxy_to_xywh(
                       [x1, y1, x2, y2])],
                   'area': int(m.sum()), 'iscrowd': 0})
    return ({'id': iid, 'file_name': fname, 'height': int(img.shape[0]),
             'width': int(img.shape[1])}, anns)

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(one, range(count)))
  images, annotations = [], []
  for im, anns in results:
    images.append(im)
    for a in anns:
      a['id'] = len(annotations) + 1
      annotations.append(a)
  cats = [{'id': k + 1, 'name': n, 'supercategory': 'shape'}
          for k, n in enumerate(cfg['classes'])]
  os.makedirs(os.path.join(out_dir, 'annotations'), exist_ok=True)
  with open(os.path.join(out_dir, 'annotations',
                         f'instances_{split}.json'), 'w') as f:
    json.dump({'info': {'description': 'frcnn-jax synthetic shapes',
                        'version': GENERATOR_VERSION},
               'images': images, 'annotations': annotations,
               'categories': cats}, f)


def _validate(cfg: dict) -> None:
  for name in cfg['classes']:
    if name not in SHAPE_CLASSES:
      raise ValueError(f'data.shapes.classes: unknown shape {name!r}; choose '
                       f'from {SHAPE_CLASSES}')
  if not cfg['classes']:
    raise ValueError('data.shapes.classes is empty')
  if not 8 <= cfg['min_image_size'] <= cfg['max_image_size']:
    raise ValueError('data.shapes: need 8 <= min_image_size <= max_image_size')
  lo, hi = cfg['aspect_ratio_range']
  if not 0 < lo <= hi:
    raise ValueError('data.shapes.aspect_ratio_range must be 0 < lo <= hi')
  if not 0 <= cfg['min_objects'] <= cfg['max_objects']:
    raise ValueError('data.shapes: need 0 <= min_objects <= max_objects')
  if cfg['min_object_size'] < 4:
    raise ValueError('data.shapes.min_object_size must be >= 4 px')
  if cfg['num_train'] < 1 or cfg['num_val'] < 1:
    raise ValueError('data.shapes: num_train and num_val must be >= 1')


def _read_meta(root: str):
  try:
    with open(os.path.join(root, 'shapes.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _wanted_meta(shapes_config, seed: int) -> dict:
  cfg = default_shapes_config()
  cfg.update(_plain(shapes_config))
  cfg = _plain(cfg)
  _validate(cfg)
  return {'generator_version': GENERATOR_VERSION, 'seed': int(seed),
          'config': cfg}


def has_shapes_dataset(root: str, shapes_config, seed: int) -> bool:
  """``root`` holds the dataset :func:`ensure_shapes_dataset` would write."""
  return _read_meta(root) == _wanted_meta(shapes_config, seed)


def ensure_shapes_dataset(root: str, shapes_config, seed: int) -> None:
  """Writes the synthetic COCO-format dataset under ``root`` unless present.

  Idempotent and safe when several processes call it at once (each writes a
  temporary folder, the first rename wins). A ``root`` holding another
  configuration of the dataset is replaced; a non-empty ``root`` that is not
  a shapes dataset is never touched (``DataError``).

  Args:
    root: dataset folder.
    shapes_config: ``config.data.shapes`` (see ``default_shapes_config``).
    seed: dataset seed; the images are a function of it and the config.
  """
  want = _wanted_meta(shapes_config, seed)
  cfg = want['config']
  if _read_meta(root) == want:
    return
  if (os.path.isdir(root) and os.listdir(root) and
      _read_meta(root) is None):
    raise DataError(f'{root}: data.root of the shapes dataset is a non-empty '
                    'folder that holds no shapes dataset (no shapes.json); '
                    'refusing to overwrite it')
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  base = os.path.basename(os.path.abspath(root))
  tmp = os.path.join(parent, f'.{base}.tmp-{uuid.uuid4().hex}')
  try:
    first = 1
    for split_index, split in enumerate(SPLITS):
      count = int(cfg[f'num_{split}'])
      _write_split(tmp, cfg, int(seed), split_index, split, count, first)
      first += count
    with open(os.path.join(tmp, 'shapes.json'), 'w') as f:
      json.dump(want, f, indent=1)
    if _read_meta(root) == want:  # Another process finished first.
      return
    old = None
    if os.path.isdir(root) and os.listdir(root):
      old = os.path.join(parent, f'.{base}.old-{uuid.uuid4().hex}')
      os.rename(root, old)
    elif os.path.isdir(root):
      os.rmdir(root)
    try:
      os.rename(tmp, root)
    except OSError:
      if _read_meta(root) != want:
        raise
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
