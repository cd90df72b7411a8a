"""Helpers for tests and benchmarks: tiny configs, hand-written dataset files,
COCO-sized synthetic annotation files and detections."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from frcnn_jax.data.datasets import default_data_config


def tiny_data_config(root: str, **overrides):
  """A ``config.data`` on a tiny synthetic set: 24 train / 7 val images of
  48..80 px, 2 buckets at scale 64 / max_size 128; generated in a second."""
  c = default_data_config()
  c.root = root
  c.scale = 64
  c.max_size = 128
  c.buckets = ((64, 128), (128, 64))
  c.max_num_box = 6
  c.num_threads = 1
  c.shapes.num_train = 24
  c.shapes.num_val = 7
  c.shapes.min_image_size = 48
  c.shapes.max_image_size = 80
  c.shapes.min_object_size = 8
  c.shapes.max_objects = 3
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def write_image(path: str, array: np.ndarray | None = None, *,
                size: tuple[int, int] = (20, 30), mode: str = 'RGB',
                fmt: str | None = None, exif: Any = None) -> np.ndarray:
  """Writes an image (random pixels of ``size`` = (h, w) unless ``array``).

  Returns the array written (before any mode conversion).
  """
  if array is None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  img = Image.fromarray(array)
  if mode != img.mode:
    img = img.convert(mode)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  kwargs = {}
  if exif is not None:
    kwargs['exif'] = exif
  img.save(path, format=fmt, **kwargs)
  return array


def write_coco(root: str, split: str, images: Sequence[dict],
               annotations: Sequence[dict],
               categories: Sequence[dict] | None = None, *,
               write_images: bool = True, raw: str | None = None) -> str:
  """Writes ``root/annotations/instances_<split>.json`` (+ images).

  ``images``: dicts with id, file_name, height, width; their image files are
  written (random pixels) when ``write_images``. ``raw`` replaces the json
  text (for malformed-file tests). Returns the json path.
  """
  if categories is None:
    categories = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]
  ann_dir = os.path.join(root, 'annotations')
  os.makedirs(ann_dir, exist_ok=True)
  path = os.path.join(ann_dir, f'instances_{split}.json')
  with open(path, 'w') as f:
    if raw is not None:
      f.write(raw)
    else:
      json.dump({'images': list(images), 'annotations': list(annotations),
                 'categories': list(categories)}, f)
  if write_images:
    for im in images:
      p = os.path.join(root, split, im['file_name'])
      if not os.path.exists(p):
        write_image(p, size=(int(im['height']), int(im['width'])))
  return path


def voc_xml(name: str, size: tuple[int, int] | None,
            objects: Sequence[tuple[str, Sequence[Any], int]]) -> str:
  """VOC annotation xml text; objects: (class, (xmin, ymin, xmax, ymax),
  difficult); size = (h, w) or None (no <size>)."""
  parts = [f'<annotation><filename>{name}.jpg</filename>']
  if size is not None:
    parts.append(f'<size><width>{size[1]}</width><height>{size[0]}</height>'
                 '<depth>3</depth></size>')
  for cls, (x1, y1, x2, y2), diff in objects:
    parts.append(f'<object><name>{cls}</name><difficult>{diff}</difficult>'
                 f'<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>'
                 f'<ymax>{y2}</ymax></bndbox></object>')
  parts.append('</annotation>')
  return ''.join(parts)


def write_voc(devkit: str, year: str, image_set: str,
              items: Sequence[tuple[str, tuple[int, int], Sequence]], *,
              xml_override: dict[str, str] | None = None) -> None:
  """Writes a VOC<year> folder: items are (name, (h, w), objects)."""
  folder = os.path.join(devkit, f'VOC{year}')
  for sub in ('Annotations', 'JPEGImages', os.path.join('ImageSets', 'Main')):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  with open(os.path.join(folder, 'ImageSets', 'Main', f'{image_set}.txt'),
            'w') as f:
    f.write(''.join(f'{n}\n' for n, _, _ in items))
  for name, size, objects in items:
    text = (xml_override or {}).get(name) or voc_xml(name, size, objects)
    with open(os.path.join(folder, 'Annotations', f'{name}.xml'), 'w') as f:
      f.write(text)
    write_image(os.path.join(folder, 'JPEGImages', f'{name}.jpg'), size=size,
                fmt='JPEG')


def write_user_coco(folder: str, *, num_train: int = 12, num_val: int = 4,
                    size: tuple[int, int] = (48, 80), seed: int = 0,
                    classes: Sequence[str] = ('red box', 'blue box')
                    ) -> dict[str, str]:
  """A dataset as a user has it: ``folder/images/*.jpg`` plus
  ``folder/train.json`` and ``folder/val.json`` (COCO format, category ids
  10, 20, ...; no ``area``), not the COCO download layout.

  Each image (``size`` = (h, w), so one canvas bucket) holds one or two
  filled squares, red for the first class and blue for the second, on a
  gray noisy background.

  Returns:
    ``{'train_json', 'val_json', 'images'}`` paths.
  """
  rng = np.random.default_rng(seed)
  img_dir = os.path.join(folder, 'images')
  os.makedirs(img_dir, exist_ok=True)
  colors = [(220, 30, 30), (30, 30, 220), (30, 200, 30)]
  cats = [{'id': 10 * (i + 1), 'name': n} for i, n in enumerate(classes)]
  out = {'images': img_dir}
  next_id = 1
  for split, count in (('train', num_train), ('val', num_val)):
    images, anns = [], []
    for _ in range(count):
      h, w = size
      pixels = rng.integers(90, 150, (h, w, 3)).astype(np.uint8)
      iid = next_id
      next_id += 1
      for _ in range(int(rng.integers(1, 3))):
        c = int(rng.integers(len(classes)))
        side = int(rng.integers(12, min(h, w) // 2))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        pixels[y:y + side, x:x + side] = colors[c % len(colors)]
        anns.append({'id': len(anns) + 1, 'image_id': iid,
                     'category_id': cats[c]['id'],
                     'bbox': [x, y, side, side], 'iscrowd': 0})
      name = f'{split}_{iid:04d}.jpg'
      Image.fromarray(pixels).save(os.path.join(img_dir, name), quality=95)
      images.append({'id': iid, 'file_name': name, 'height': h, 'width': w})
    path = os.path.join(folder, f'{split}.json')
    with open(path, 'w') as f:
      json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
    out[f'{split}_json'] = path
  return out


# The 80 category ids of COCO (1..90 with gaps).
COCO_CAT_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
    43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90)


def _r2(x: float) -> str:
  return f'{x:.2f}'


def write_coco_like(path: str, num_images: int, num_annotations: int, *,
                    seed: int = 0, segmentation: bool = True,
                    chunk: int = 20000) -> None:
  """Writes a COCO-format instances json of the given size (no images).

  Image ids are random distinct ints (as COCO's), sizes up to 640 px (the
  long side 640 for 95% of the images, 70% landscape, as COCO's);
  annotation ``k`` belongs to a random image (some images get none), has a
  box inside its image with sides >= 1 px and, with ``segmentation``, a
  polygon of 6-20 points inside the box (about 1% are crowd annotations
  with an RLE ``{'counts': [...], 'size': [h, w]}``). Written as text in
  chunks, so generating the file needs little memory.
  """
  rng = np.random.default_rng(seed)
  ids = rng.choice(np.arange(1, 600000), num_images, replace=False)
  ids.sort()
  # As COCO's: the long side is 640 for most images (Flickr's size).
  long = np.where(rng.random(num_images) < 0.95, 640,
                  rng.integers(200, 641, num_images))
  short = np.minimum(rng.integers(200, 641, num_images), long)
  wide = rng.random(num_images) < 0.7
  hs = np.where(wide, short, long)
  ws = np.where(wide, long, short)
  tmp = f'{path}.tmp{os.getpid()}'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(tmp, 'w') as f:
    f.write('{"info": {"description": "synthetic COCO-sized file", '
            '"version": "1.0", "year": 2017}, "licenses": [{"url": '
            '"http://creativecommons.org/licenses/by/2.0/", "id": 1, '
            '"name": "Attribution License"}], "images": [')
    for s in range(0, num_images, chunk):
      parts = []
      for i in range(s, min(s + chunk, num_images)):
        parts.append(
            f'{{"license": 1, "file_name": "{ids[i]:012d}.jpg", '
            f'"coco_url": "http://images.cocodataset.org/train2017/'
            f'{ids[i]:012d}.jpg", "height": {hs[i]}, "width": {ws[i]}, '
            f'"date_captured": "2013-11-14 11:18:45", "flickr_url": '
            f'"http://farm4.staticflickr.com/{ids[i]}.jpg", "id": {ids[i]}}}')
      f.write((', ' if s else '') + ', '.join(parts))
    f.write('], "annotations": [')
    img = rng.integers(0, num_images, num_annotations)
    img.sort(kind='stable')
    for s in range(0, num_annotations, chunk):
      e = min(s + chunk, num_annotations)
      n = e - s
      ii = img[s:e]
      h, w = hs[ii].astype(np.float64), ws[ii].astype(np.float64)
      bw = np.maximum(1.0, w * rng.uniform(0.02, 0.8, n))
      bh = np.maximum(1.0, h * rng.uniform(0.02, 0.8, n))
      x = rng.uniform(0, w - bw)
      y = rng.uniform(0, h - bh)
      crowd = rng.random(n) < 0.01
      cats = rng.choice(COCO_CAT_IDS, n)
      npts = rng.integers(6, 21, n)
      parts = []
      for k in range(n):
        if not segmentation:
          seg = ''
        elif crowd[k]:
          counts = rng.integers(1, 400, 12).tolist()
          seg = (f'"segmentation": {{"counts": {counts}, "size": '
                 f'[{int(h[k])}, {int(w[k])}]}}, ')
        else:
          px = x[k] + bw[k] * rng.random(npts[k])
          py = y[k] + bh[k] * rng.random(npts[k])
          pts = ', '.join(f'{a:.2f}, {b:.2f}' for a, b in zip(px, py))
          seg = f'"segmentation": [[{pts}]], '
        parts.append(
            f'{{{seg}"area": {bw[k] * bh[k] * 0.6:.4f}, "iscrowd": '
            f'{int(crowd[k])}, "image_id": {ids[ii[k]]}, "bbox": '
            f'[{_r2(x[k])}, {_r2(y[k])}, {_r2(bw[k])}, {_r2(bh[k])}], '
            f'"category_id": {cats[k]}, "id": {s + k + 1}}}')
      f.write((', ' if s else '') + ', '.join(parts))
    cats = ', '.join(f'{{"supercategory": "thing", "id": {c}, "name": '
                     f'"class_{c}"}}' for c in COCO_CAT_IDS)
    f.write(f'], "categories": [{cats}]}}')
  os.replace(tmp, path)


def coco_like_detections(gt: dict, per_image: int, *, num_classes: int = 80,
                         seed: int = 0) -> list[dict]:
  """``per_image`` COCO results per image of a ground-truth dict.

  About a third are the image's ground-truth boxes jittered by a few pixels
  (some with the wrong category), the rest random boxes of random
  categories (the first ``num_classes`` of the file's); scores uniform.
  Rounded as detection files are (2 decimals, scores 5).
  """
  rng = np.random.default_rng(seed)
  cats = [c['id'] for c in gt['categories']][:num_classes]
  by_image = {}
  for a in gt['annotations']:
    by_image.setdefault(a['image_id'], []).append(a)
  out = []
  for im in gt['images']:
    h, w = im['height'], im['width']
    anns = by_image.get(im['id'], [])
    k = min(len(anns), per_image // 3)
    boxes = np.zeros((per_image, 4))
    cls = rng.choice(cats, per_image)
    if k:
      pick = rng.choice(len(anns), k, replace=len(anns) < k)
      boxes[:k] = [anns[p]['bbox'] for p in pick]
      boxes[:k] += rng.normal(0, 3, (k, 4))
      keep_cls = rng.random(k) < 0.8
      cls[:k] = np.where(keep_cls, [anns[p]['category_id'] for p in pick],
                         cls[:k])
    r = per_image - k
    bw = rng.uniform(4, w * 0.7, r)
    bh = rng.uniform(4, h * 0.7, r)
    boxes[k:] = np.stack([rng.uniform(0, w - bw), rng.uniform(0, h - bh),
                          bw, bh], 1)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    scores = rng.random(per_image)
    for b, c, s in zip(np.round(boxes, 2).tolist(), cls.tolist(),
                       np.round(scores, 5).tolist()):
      out.append({'image_id': im['id'], 'category_id': c, 'bbox': b,
                  'score': s})
  return out
