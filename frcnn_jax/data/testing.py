"""Helpers for tests: tiny configs and hand-written dataset files."""

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
