"""The host side of training: loader throughput, COCO-sized files, COCOeval.

  python bench/data.py                    # loader: 0, 1, 2 grain workers
  python bench/data.py --workers=0,1,2,4 --batch=4 --steps=30
  python bench/data.py --images=shapes    # the synthetic shapes set instead
  python bench/data.py --coco-scale       # COCO-sized json: ours vs pycocotools
  python bench/data.py --coco-eval        # COCOeval 5000 images x 100 dets

Loader (default): the grain train loader (decode, flip, crop, resize to the
600x1000 canvases, pad) with 0 (in-process threads) and N worker processes,
after a warm-up (worker start-up is reported separately), on COCO-like
images: ``--num_images`` JPEGs of 640x480 / 480x640 (quality 90, smooth
content plus noise: ~100-200 KB, like COCO's) with 3-12 boxes each, read
as ``data.name='coco'`` with COCO's buckets. Peers, in the same run: the
same per-image work in a plain Python loop on one core (no grain), broken
down into decode / resize / the rest (flip, box transform, pad), which says
how many images per second ONE core sustains; and, when torch is
importable, ``torch.utils.data.DataLoader`` with the same number of workers
over the same function. Each figure is the median of --repeats timed
windows of --steps batches.

``--coco-scale`` and ``--coco-eval``: see ``bench/data_scale.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench import data_scale  # noqa: E402
from frcnn_jax.data import build_train_loader  # noqa: E402
from frcnn_jax.data import default_data_config  # noqa: E402
from frcnn_jax.data import transforms  # noqa: E402

COCO_BUCKETS = ((608, 800), (800, 608), (608, 1008), (1008, 608))


def _rate(next_batch, batch, steps, repeats):
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      next_batch()
    rates.append(batch * steps / (time.perf_counter() - t))
  return statistics.median(rates)


def _grain(cfg, workers, args):
  cfg = cfg.copy_and_resolve_references()
  cfg.num_workers = workers
  t = time.perf_counter()
  it = build_train_loader(cfg, seed=0, global_batch_size=args.batch)
  next(it)
  startup = time.perf_counter() - t
  for _ in range(args.warmup):
    next(it)
  rate = _rate(lambda: next(it), args.batch, args.steps, args.repeats)
  it.close()
  return rate, startup


def _identity(x):
  return x


class _TorchSet:
  """The loader's per-step work as a map-style torch dataset."""

  def __init__(self, it, n):
    self.steps = it._steps(0)  # pylint: disable=protected-access
    self.maker = it._maker  # pylint: disable=protected-access
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.maker(self.steps[i])


def _torch(cfg, workers, args):
  import torch  # pylint: disable=g-import-not-at-top
  it = build_train_loader(cfg, seed=0, global_batch_size=args.batch)
  n = (args.warmup + 1 + args.steps * args.repeats) * 2
  dl = torch.utils.data.DataLoader(
      _TorchSet(it, n), batch_size=None, num_workers=workers,
      collate_fn=_identity, prefetch_factor=2 if workers else None,
      multiprocessing_context='spawn' if workers else None)
  t = time.perf_counter()
  di = iter(dl)
  next(di)
  startup = time.perf_counter() - t
  for _ in range(args.warmup):
    next(di)
  rate = _rate(lambda: next(di), args.batch, args.steps, args.repeats)
  del di
  return rate, startup


def _plain(cfg, args):
  it = build_train_loader(cfg, seed=0, global_batch_size=args.batch)
  steps = it._steps(0)  # pylint: disable=protected-access
  maker = it._maker  # pylint: disable=protected-access
  k = iter(range(10**9))
  return _rate(lambda: maker(steps[next(k)]), args.batch, args.steps,
               args.repeats), 0.0


def one_core_breakdown(cfg, n: int, passes: int = 3) -> dict:
  """Seconds per image on one core (best of ``passes``): decode, resize,
  and the whole transform (crop, flip, resize, boxes, pad).

  Timed in CPU time of this (single-threaded) loop, so that a shared,
  loaded machine does not count the time it gives to others.
  """
  it = build_train_loader(cfg, seed=0, global_batch_size=1)
  maker = it._maker  # pylint: disable=protected-access
  table, reader, params = maker.table, maker.reader, maker.params
  recs = [table.record(i) for i in range(min(n, len(table)))]
  images = [reader(r) for r in recs]
  plans = []
  for im in images:
    oh, ow, _ = transforms.planned_size(im.shape[0], im.shape[1], params,
                                        False)
    plans.append((oh, ow, params.buckets[transforms.choose_bucket(
        oh, ow, params.buckets)]))

  def best(fn):
    times = []
    for _ in range(passes):
      t = time.process_time()
      fn()
      times.append((time.process_time() - t) / len(recs))
    return min(times)

  rng = np.random.default_rng(0)
  out = {
      'decode': best(lambda: [reader(r) for r in recs]),
      'resize': best(lambda: [transforms.resize_image(im, oh, ow) for im, (
          oh, ow, _) in zip(images, plans)]),
      'transform': best(lambda: [transforms.make_example(
          im, r.boxes, r.classes, params, canvas, rng=rng)
                                 for im, r, (_, _, canvas) in zip(
                                     images, recs, plans)]),
  }
  it.close()
  return out


# -- the COCO-like JPEG set ---------------------------------------------------

def ensure_jpeg_set(root: str, n: int, seed: int = 0) -> None:
  """``root/annotations/instances_train2017.json`` + ``root/train2017/*.jpg``
  (written once): COCO-sized JPEGs with smooth content and noise."""
  # pylint: disable=import-outside-toplevel
  from PIL import Image
  from frcnn_jax.data import testing
  # pylint: enable=import-outside-toplevel
  ann = os.path.join(root, 'annotations', 'instances_train2017.json')
  if os.path.exists(ann):
    return
  rng = np.random.default_rng(seed)
  images, anns = [], []
  os.makedirs(os.path.join(root, 'train2017'), exist_ok=True)
  for i in range(n):
    h, w = (480, 640) if rng.random() < 0.7 else (640, 480)
    low = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC),
                     np.float32)
    img += rng.normal(0, 12, img.shape)
    name = f'{i + 1:012d}.jpg'
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        os.path.join(root, 'train2017', name), quality=90)
    images.append({'id': i + 1, 'file_name': name, 'height': h, 'width': w})
    for _ in range(rng.integers(3, 13)):
      bw, bh = rng.uniform(16, w / 2), rng.uniform(16, h / 2)
      x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
      anns.append({'id': len(anns) + 1, 'image_id': i + 1,
                   'category_id': int(rng.integers(1, 3)),
                   'bbox': [x, y, bw, bh], 'area': bw * bh, 'iscrowd': 0})
  testing.write_coco(root, 'train2017', images, anns, write_images=False)


def loader_config(args):
  cfg = default_data_config()
  cfg.scale, cfg.max_size = args.scale, args.max_size
  cfg.num_threads = args.threads
  if args.images == 'shapes':
    cfg.root = args.root + '_shapes'
    up16 = lambda x: -(-x // 16) * 16  # noqa: E731
    cfg.buckets = ((up16(args.scale), up16(args.max_size)),
                   (up16(args.max_size), up16(args.scale)))
  else:
    cfg.name = 'coco'
    cfg.root = args.root + '_jpeg'
    cfg.train_split = 'train2017'
    cfg.buckets = COCO_BUCKETS
    ensure_jpeg_set(cfg.root, args.num_images)
  return cfg


def run_loader(args):
  cfg = loader_config(args)
  t = time.perf_counter()
  from frcnn_jax.data import build_source  # pylint: disable=g-import-not-at-top
  build_source(cfg, cfg.train_split)
  gen = time.perf_counter() - t

  rows = []
  plain, _ = _plain(cfg, args)
  rows.append(('plain loop (no grain), 1 core', plain, 0.0))
  have_torch = False
  if not args.no_torch:
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      have_torch = True
    except ImportError:
      pass
  for w in [int(x) for x in args.workers.split(',')]:
    r, s = _grain(cfg, w, args)
    rows.append((f'grain, {w} workers, {args.threads} threads', r, s))
    if have_torch:
      r, s = _torch(cfg, w, args)
      rows.append((f'torch DataLoader, {w} workers', r, s))
  core = one_core_breakdown(cfg, args.one_core_images)

  print(f'\n$ python bench/data.py {" ".join(sys.argv[1:])}')
  print(f'{args.images} images at {cfg.root} (source read in {gen:.1f} s); '
        f'canvases {cfg.buckets}; batch {args.batch}; median of '
        f'{args.repeats} x {args.steps} batches; {os.cpu_count()} CPUs '
        '(shared: noisy)\n')
  print(f'| {"loader":<38} | {"images/s":>9} | {"vs plain":>8} | '
        f'{"1st batch s":>11} |')
  print(f'|{"-" * 40}|{"-" * 11}|{"-" * 10}|{"-" * 13}|')
  for name, r, s in rows:
    print(f'| {name:<38} | {r:9.1f} | {r / plain:7.2f}x | {s:11.2f} |')
  total = core['decode'] + core['transform']
  print(f'\none core, per image (CPU time, best of 3 passes over '
        f'{args.one_core_images} images): decode {1e3 * core["decode"]:.1f} '
        f'ms + transform {1e3 * core["transform"]:.1f} ms (of which resize '
        f'{1e3 * core["resize"]:.1f} ms; crop, flip, boxes, pad the rest) = '
        f'{1e3 * total:.1f} ms: {1 / total:.0f} images/s per core')


def run_coco_scale(args):
  path = data_scale.ensure_coco_like(args.scale_root, args.scale_images,
                                     args.scale_annotations)
  kinds = ['pycocotools', 'read_coco', 'build_train_loader', 'coco_gt']
  rows = data_scale.coco_scale_rows(path, args.repeats, kinds)
  print(f'\n$ python bench/data.py {" ".join(sys.argv[1:])}')
  print(f'{path}: {os.path.getsize(path) / 2**20:.0f} MiB, '
        f'{args.scale_images} images, {args.scale_annotations} annotations '
        f'(segmentation polygons, no image files, verify_images=none); each '
        f'row a fresh process, median of {args.repeats}, interleaved; '
        f'{os.cpu_count()} CPUs (shared: wall time is noisy, CPU time less '
        'so)\n')
  print(data_scale.format_scale_table(rows))


def run_coco_eval(args):
  rows, diff = data_scale.coco_eval_rows(args.eval_images, args.dets,
                                         args.scale_root)
  print(f'\n$ python bench/data.py {" ".join(sys.argv[1:])}')
  print(f'COCOeval bbox (metrics.coco_evaluate: loadRes + evaluate + '
        f'accumulate + summarize) on {args.eval_images} generated images '
        f'(~7 boxes each, 80 classes) x {args.dets} detections; '
        f'{os.cpu_count()} CPUs\n')
  print(data_scale.format_eval_table(rows))
  print(f'\nlargest difference of the 12 numbers: {diff:.1e}')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default='/tmp/frcnn_jax_bench')
  p.add_argument('--images', default='coco_like',
                 choices=['coco_like', 'shapes'])
  p.add_argument('--num_images', type=int, default=64)
  p.add_argument('--workers', default='0,1,2')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--scale', type=int, default=600)
  p.add_argument('--max_size', type=int, default=1000)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--one_core_images', type=int, default=32)
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--coco-scale', dest='coco_scale', action='store_true')
  p.add_argument('--scale_root', default='/tmp/frcnn_jax_coco_scale')
  p.add_argument('--scale_images', type=int, default=118287)
  p.add_argument('--scale_annotations', type=int, default=860001)
  p.add_argument('--coco-eval', dest='coco_eval', action='store_true')
  p.add_argument('--eval_images', type=int, default=5000)
  p.add_argument('--dets', type=int, default=100)
  args = p.parse_args()
  if args.coco_scale:
    run_coco_scale(args)
  elif args.coco_eval:
    run_coco_eval(args)
  else:
    run_loader(args)


if __name__ == '__main__':
  main()
