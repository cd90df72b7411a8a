"""grain loaders: fixed-shape training and evaluation batches.

Batch (numpy dict; ``B`` = images on this host, ``M`` = ``max_num_box``,
``H x W`` = the bucket canvas of the batch)::

  image       uint8   [B, H, W, 3]  RGB, NOT normalized; padding pixels 0
                                    (float32 0..255 with data.resize =
                                    'torchvision')
  im_info     float32 [B, 3]        (height, width, scale) of the resized
                                    content, placed top-left on the canvas
  gt_boxes    float32 [B, M, 4]     inclusive-pixel (x1, y1, x2, y2), canvas px
  gt_classes  int32   [B, M]        1..K-1, 0 in padding
  gt_valid    bool    [B, M]
  image_id    int32   [B]           -1 for padding images (eval only)

Training order. Every record's bucket is known up front (sizes come from the
annotations; the crop changes only a window's position). Epoch ``e`` shuffles
the records with ``(seed, e)``, groups them by bucket, cuts each bucket into
global batches (the last one of a bucket filled up with the bucket's first
images of that epoch, so every image is seen every epoch), and shuffles the
batch order. Global step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``; host ``p`` of ``P`` takes the ``p``-th slice of
``global_batch_size // P`` images, so all hosts agree on the bucket of every
step and the global batch does not depend on ``P``. The flip and crop of the
image in slot ``j`` of step ``s`` draw from ``(seed, s, j)``. No global numpy
state is used anywhere.

The iterator state is the global step: ``get_state()`` is a small JSON dict,
``set_state()`` rebuilds the grain pipeline from that step, so a resumed run
sees exactly the batches an uninterrupted run would have seen, whatever the
number of worker processes or hosts of either run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from frcnn_jax.data import datasets
from frcnn_jax.data import images as images_lib
from frcnn_jax.data import records as records_lib
from frcnn_jax.data import transforms
from frcnn_jax.data.records import DataError
from frcnn_jax.data.records import DropStats
from frcnn_jax.data.records import Record

log = logging.getLogger(__name__)

BATCH_KEYS = ('image', 'im_info', 'gt_boxes', 'gt_classes', 'gt_valid',
              'image_id')
_STATE_VERSION = 1


class RecordTable:
  """Records as a few flat arrays: cheap to pickle into worker processes."""

  def __init__(self, records: Sequence[Record]):
    n = len(records)
    self.image_ids = np.array([r.image_id for r in records], np.int64)
    self.heights = np.array([r.height for r in records], np.int64)
    self.widths = np.array([r.width for r in records], np.int64)
    counts = np.array([len(r.boxes) for r in records], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.boxes = (np.concatenate([r.boxes for r in records]).astype(np.float32)
                  if n else np.zeros((0, 4), np.float32)).reshape(-1, 4)
    self.classes = (np.concatenate([r.classes for r in records]).astype(
        np.int32) if n else np.zeros((0,), np.int32))
    self.paths = [r.path for r in records]
    self.indices = [r.index for r in records]

  def __len__(self) -> int:
    return len(self.image_ids)

  def record(self, i: int) -> Record:
    a, b = self.offsets[i], self.offsets[i + 1]
    return Record(image_id=int(self.image_ids[i]), path=self.paths[i],
                  index=self.indices[i], height=int(self.heights[i]),
                  width=int(self.widths[i]), boxes=self.boxes[a:b],
                  classes=self.classes[a:b],
                  difficult=np.zeros(b - a, bool))


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


class _BatchMaker:
  """Loads and transforms the images of one batch (runs in grain workers)."""

  def __init__(self, table: RecordTable, reader: images_lib.ImageReader,
               params: transforms.TransformParams, seed: int | None):
    self.table = table
    self.reader = reader
    self.params = params
    self.seed = seed

  def __call__(self, spec: tuple[int, int, np.ndarray, np.ndarray]) -> dict:
    step, bucket, idx, slots = spec
    canvas = self.params.buckets[bucket]
    rows = []
    for i, slot in zip(idx.tolist(), slots.tolist()):
      if i < 0:  # Eval padding image.
        rows.append(self._dummy(canvas))
        continue
      rec = self.table.record(i)
      image = self.reader(rec)
      rng = (None if self.seed is None else
             np.random.default_rng([self.seed, step, slot, 0x0F1A]))
      ex = transforms.make_example(image, rec.boxes, rec.classes, self.params,
                                   canvas, rng=rng)
      ex['image_id'] = np.int32(rec.image_id)
      rows.append(ex)
    return _stack(rows)

  def _dummy(self, canvas):
    m = self.params.max_num_box
    return {'image': np.zeros(canvas + (3,), self.params.image_dtype),
            'im_info': np.array([canvas[0], canvas[1], 1.0], np.float32),
            'gt_boxes': np.zeros((m, 4), np.float32),
            'gt_classes': np.zeros((m,), np.int32),
            'gt_valid': np.zeros((m,), bool), 'image_id': np.int32(-1)}


class _TrainSteps:
  """Random-access 'data source' of batch specs, one per global step."""

  def __init__(self, buckets_of: np.ndarray, num_buckets: int, seed: int,
               global_batch_size: int, process_index: int, process_count: int,
               start_step: int):
    self.buckets_of = buckets_of
    self.num_buckets = num_buckets
    self.seed = seed
    self.global_batch_size = global_batch_size
    self.local = global_batch_size // process_count
    self.process_index = process_index
    self.start_step = start_step
    counts = np.bincount(buckets_of, minlength=num_buckets)
    self.steps_per_epoch = int(sum(-(-c // global_batch_size) for c in counts))
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return sys.maxsize - self.start_step

  def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``([steps_per_epoch, G] record indices, [steps_per_epoch] bucket)``."""
    if epoch not in self._cache:
      g = self.global_batch_size
      rng = np.random.default_rng([self.seed, epoch, 0x5E7])
      perm = rng.permutation(len(self.buckets_of))
      batches, bucket_ids = [], []
      for b in range(self.num_buckets):
        members = perm[self.buckets_of[perm] == b]
        if members.size == 0:
          continue
        nb = -(-members.size // g)
        batches.append(np.resize(members, nb * g).reshape(nb, g))
        bucket_ids.append(np.full(nb, b))
      batches = np.concatenate(batches)
      bucket_ids = np.concatenate(bucket_ids)
      order = rng.permutation(len(batches))
      if len(self._cache) > 2:
        self._cache.clear()
      self._cache[epoch] = (batches[order], bucket_ids[order])
    return self._cache[epoch]

  def global_batch(self, step: int) -> tuple[int, np.ndarray]:
    """(bucket, [G] record indices) of global step ``step``."""
    epoch, k = divmod(step, self.steps_per_epoch)
    batches, bucket_ids = self.epoch_plan(epoch)
    return int(bucket_ids[k]), batches[k]

  def __getitem__(self, i: int):
    step = self.start_step + int(i)
    bucket, idx = self.global_batch(step)
    lo = self.process_index * self.local
    slots = np.arange(lo, lo + self.local)
    return step, bucket, idx[lo:lo + self.local], slots


def _read_options(data_config) -> grain.ReadOptions:
  threads = int(data_config.get('num_threads', 2))
  return grain.ReadOptions(num_threads=max(threads, 1),
                           prefetch_buffer_size=max(2 * threads, 2))


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside ``absl.app.run``
  (tests, notebooks) nothing parsed them, so mark the defaults as parsed."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _pipeline(steps, maker: _BatchMaker, data_config):
  ds = grain.MapDataset.source(steps).map(maker)
  ds = ds.to_iter_dataset(_read_options(data_config))
  workers = int(data_config.get('num_workers', 0))
  if workers > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=2))
  return ds


def _check_hosts(global_batch_size: int, process_index: int,
                 process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} must be in '
                     f'[0, process_count={process_count})')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} must be a '
                     f'positive multiple of process_count {process_count}')


def extra_canvases(records: Sequence[Record],
                   params: transforms.TransformParams) -> list[tuple[int, int]]:
  """Canvases for the evaluation images no bucket holds (``canvas_for``).

  With the seed's rule (no long-side cap) an image of extreme aspect ratio
  resizes beyond every configured bucket; evaluation never crops, so such
  an image gets its own canvas, rounded up to 64 pixels (one compilation
  per new canvas, logged).
  """
  extra = []
  for r in records:
    oh, ow, _ = transforms.planned_size(r.height, r.width, params, False)
    if transforms.choose_bucket(oh, ow, params.buckets + tuple(extra)) < 0:
      extra.append(canvas_for(oh, ow, ()))
  return extra


def assign_buckets(records: Sequence[Record],
                   params: transforms.TransformParams, train: bool,
                   what: str) -> np.ndarray:
  """Bucket index of every record; an image no bucket holds is an error."""
  out = np.zeros(len(records), np.int64)
  bad = []
  plans = {}  # (h, w) -> (oh, ow, bucket): datasets repeat a few sizes.
  for i, r in enumerate(records):
    plan = plans.get((r.height, r.width))
    if plan is None:
      oh, ow, _ = transforms.planned_size(r.height, r.width, params, train)
      plan = plans[r.height, r.width] = (
          oh, ow, transforms.choose_bucket(oh, ow, params.buckets))
    oh, ow, b = plan
    if b < 0:
      bad.append(f'{r.name}: {r.height}x{r.width} resizes to {oh}x{ow}')
    out[i] = b
  if bad:
    shown = '\n  '.join(bad[:10])
    crop = (', after the crop to w/h in [0.5, 2]'
            if train and params.crop_extreme_ratios else '')
    raise DataError(
        f'{what}: {len(bad)} image(s) fit no bucket of data.buckets='
        f'{params.buckets} (scale {params.scale}, max_size '
        f'{params.max_size}{crop}):\n  {shown}\nAdd a bucket that holds '
        'them (portrait and landscape canvases up to max_size hold every '
        'image).')
  return out


def training_records(source: records_lib.DetectionSource, data_config,
                     stats: DropStats) -> list[Record]:
  """Records as training sees them: difficult boxes (unless use_difficult)
  removed, empty images skipped (``skip_empty``) or kept as negatives."""
  use_difficult = bool(data_config.get('use_difficult', False))
  skip_empty = bool(data_config.get('skip_empty', True))
  out = []
  for r in source.records:
    if not use_difficult and r.difficult.any():
      keep = ~r.difficult
      stats.add('box_difficult', int(r.difficult.sum()), level=logging.DEBUG,
                example=f'{r.name}: difficult boxes left out of training')
      r = dataclasses.replace(r, boxes=r.boxes[keep], classes=r.classes[keep],
                              difficult=r.difficult[keep])
    if len(r.boxes) == 0 and skip_empty:
      stats.add('image_skipped_empty', level=logging.DEBUG,
                example=f'{r.name}: no boxes, skipped (data.skip_empty)')
      continue
    out.append(r)
  return out


def _count_overflow(records: Sequence[Record], max_num_box: int,
                    stats: DropStats) -> None:
  for r in records:
    extra = len(r.boxes) - max_num_box
    if extra > 0:
      stats.add('gt_over_max_num_box_images', example=(
          f'{r.name}: {len(r.boxes)} boxes > data.max_num_box={max_num_box}: '
          f'the last {extra} are dropped'))
      stats.add('gt_over_max_num_box_boxes', extra)


class TrainLoader:
  """Infinite iterator over this host's part of each global training batch.

  Attributes:
    source: the ``DetectionSource`` of the training split.
    num_classes, class_names: from the source.
    steps_per_epoch: global steps per epoch (every training image once).
    stats: ``DropStats`` of the source plus what training leaves out
      (``box_difficult``, ``image_skipped_empty``, ``gt_over_max_num_box_*``;
      the last is counted before the crop, which may remove boxes first).
    bucket_counts: training images per bucket.
  """

  def __init__(self, data_config, *, seed: int, global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               source: records_lib.DetectionSource | None = None):
    _check_hosts(global_batch_size, process_index, process_count)
    self._config = data_config
    self.params = transforms.TransformParams.from_config(data_config)
    self.source = source or datasets.build_source(
        data_config, data_config.train_split)
    if not self.source.has_annotations:
      raise DataError(
          f'{self.source.name}: the annotation file has no "annotations" '
          'field: it is an image list (like COCO\'s image_info_test-dev2017'
          '.json), which eval.py can run on (it writes detections for '
          'submission) but nothing can be trained on')
    self.stats = DropStats()
    self.stats.update(self.source.stats)
    records = training_records(self.source, data_config, self.stats)
    if not records:
      raise DataError(f'{self.source.name}: no training images left (all '
                      f'empty with data.skip_empty; {self.stats.summary()})')
    _count_overflow(records, self.params.max_num_box, self.stats)
    buckets_of = assign_buckets(records, self.params, True, self.source.name)
    self.bucket_counts = np.bincount(
        buckets_of, minlength=len(self.params.buckets)).tolist()
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.process_index = process_index
    self.process_count = process_count
    self.num_records = len(records)
    self._buckets_of = buckets_of
    self._maker = _BatchMaker(RecordTable(records), self.source.reader,
                              self.params, self.seed)
    self.steps_per_epoch = self._steps(0).steps_per_epoch
    self._step = 0
    self._iter = None
    log.info('train loader %s: %d images, buckets %s -> %s images, %d steps '
             'per epoch of %d images; %s', self.source.name, len(records),
             self.params.buckets, self.bucket_counts, self.steps_per_epoch,
             self.global_batch_size, self.stats.summary())

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def class_names(self) -> list[str]:
    return self.source.class_names

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  @property
  def step(self) -> int:
    """Global step of the next batch."""
    return self._step

  def _steps(self, start: int) -> _TrainSteps:
    return _TrainSteps(self._buckets_of, len(self.params.buckets), self.seed,
                       self.global_batch_size, self.process_index,
                       self.process_count, start)

  def global_batch_plan(self, step: int) -> tuple[int, np.ndarray]:
    """``(bucket, [global_batch_size] image ids)`` of global step ``step``."""
    bucket, idx = self._steps(0).global_batch(step)
    return bucket, self._maker.table.image_ids[idx].astype(np.int32)

  def __iter__(self) -> 'TrainLoader':
    return self

  def __next__(self) -> dict:
    if self._iter is None:
      self._iter = iter(_pipeline(self._steps(self._step), self._maker,
                                  self._config))
    batch = next(self._iter)
    self._step += 1
    return batch

  def skip(self, n: int = 1) -> None:
    """Moves past the next ``n`` global batches without loading them."""
    self.close()
    self._step += int(n)

  def get_state(self) -> dict[str, Any]:
    """JSON-serializable state: the next global step and what it depends on."""
    return {'version': _STATE_VERSION, 'step': self._step, 'seed': self.seed,
            'global_batch_size': self.global_batch_size,
            'num_records': self.num_records,
            'steps_per_epoch': self.steps_per_epoch}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from ``state`` (from ``get_state``, possibly another run).

    Raises:
      ValueError: the state belongs to a different seed, batch size or
        training set, where 'the same next batch' has no meaning.
    """
    for key in ('seed', 'global_batch_size', 'num_records',
                'steps_per_epoch'):
      mine = getattr(self, key)
      if key in state and int(state[key]) != mine:
        raise ValueError(f'loader state was saved with {key}={state[key]}, '
                         f'this loader has {key}={mine}')
    self.close()
    self._step = int(state['step'])

  def close(self) -> None:
    """Stops worker processes (if any); iteration may start again later."""
    it, self._iter = self._iter, None
    if it is not None and hasattr(it, 'close'):
      it.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


class EvalLoader:
  """Every image of a split exactly once, in a fixed order, in fixed shapes.

  Records are grouped by bucket (config order), in dataset order within a
  bucket, and cut into global batches of ``batch_size``; the last batch of a
  bucket is filled with padding images (``image_id = -1``, zero pixels, no
  ground truth, ``im_info = (H, W, 1)`` of the canvas). Host ``p`` of ``P``
  gets slice ``p`` of each global batch (``batch_size // P`` images). Can be
  iterated several times.

  Attributes:
    source: the ``DetectionSource`` (``coco_gt()``, category mapping).
    num_batches: batches per pass (``len(loader)``).
    num_images: real images in the split.
    stats: source stats plus ``gt_over_max_num_box_*``.
  """

  def __init__(self, data_config, split: str, *, batch_size: int,
               process_index: int = 0, process_count: int = 1,
               source: records_lib.DetectionSource | None = None,
               generate: bool = True):
    _check_hosts(batch_size, process_index, process_count)
    self._config = data_config
    self.params = transforms.TransformParams.from_config(data_config)
    self.source = source or datasets.build_source(data_config, split,
                                                  generate=generate)
    records = self.source.records
    extra = extra_canvases(records, self.params)
    if extra:
      log.info('%s: %d canvas(es) added for images no bucket of '
               'data.buckets holds (each compiles once): %s',
               self.source.name, len(extra), extra)
      self.params = dataclasses.replace(
          self.params, buckets=self.params.buckets + tuple(extra))
    self.stats = DropStats()
    self.stats.update(self.source.stats)
    _count_overflow(records, self.params.max_num_box, self.stats)
    buckets_of = assign_buckets(records, self.params, False, self.source.name)
    self.num_images = len(records)
    self.batch_size = batch_size
    local = batch_size // process_count
    specs = []
    for b in range(len(self.params.buckets)):
      members = np.flatnonzero(buckets_of == b)
      for start in range(0, len(members), batch_size):
        chunk = members[start:start + batch_size]
        chunk = np.concatenate(
            [chunk, np.full(batch_size - len(chunk), -1, np.int64)])
        lo = process_index * local
        specs.append((len(specs), b, chunk[lo:lo + local],
                      np.arange(lo, lo + local)))
    self._specs = specs
    self.num_batches = len(specs)
    self._maker = _BatchMaker(RecordTable(records), self.source.reader,
                              self.params, None)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict]:
    it = iter(_pipeline(self._specs, self._maker, self._config))
    try:
      yield from it
    finally:
      if hasattr(it, 'close'):
        it.close()


def build_train_loader(data_config, *, seed: int, global_batch_size: int,
                       process_index: int = 0,
                       process_count: int = 1) -> TrainLoader:
  """The training loader of ``data_config.train_split`` (see ``TrainLoader``).

  Args:
    data_config: ``config.data``.
    seed: the run's seed (``config.seed``): shuffling, flips, crops.
    global_batch_size: images per step over all hosts.
    process_index, process_count: this host and the number of hosts
      (``jax.process_index()``, ``jax.process_count()``).
  """
  return TrainLoader(data_config, seed=seed,
                     global_batch_size=global_batch_size,
                     process_index=process_index, process_count=process_count)


def build_eval_loader(data_config, split: str, *, batch_size: int,
                      process_index: int = 0, process_count: int = 1,
                      generate: bool = True) -> EvalLoader:
  """The evaluation loader of ``split``; ``batch_size`` is GLOBAL (all hosts).

  The returned ``EvalLoader`` is iterable and carries ``.source``. With
  ``generate=False`` a missing synthetic dataset is an error instead of
  being written (``datasets.build_source``).
  """
  return EvalLoader(data_config, split, batch_size=batch_size,
                    process_index=process_index, process_count=process_count,
                    generate=generate)


# -- arbitrary images (demo, the Python API) ------------------------------------

def canvas_for(h: int, w: int, buckets) -> tuple[int, int]:
  """The config's smallest bucket holding ``h x w``, else a 64-px multiple."""
  i = transforms.choose_bucket(h, w, [tuple(b) for b in buckets])
  if i >= 0:
    return tuple(buckets[i])
  return (-(-h // 64) * 64, -(-w // 64) * 64)


def prepare_image(image: np.ndarray, data_config) -> tuple[np.ndarray,
                                                           np.ndarray]:
  """Resize as evaluation does; returns ``(resized, im_info)``."""
  h, w = image.shape[:2]
  method = str(getattr(data_config, 'resize', 'pil'))
  rh, rw, s = transforms.plan_resize(h, w, data_config.scale,
                                     data_config.max_size, method)
  resized = transforms.resize_image(image, rh, rw, method=method, im_scale=s)
  return resized, np.array([rh, rw, s], np.float32)


def image_batches(images: Sequence[tuple[Any, np.ndarray]], data_config,
                  batch_size: int) -> Iterator[tuple[list[Any], dict]]:
  """Fixed-shape batches of arbitrary images, grouped by canvas.

  Args:
    images: ``(key, uint8 [h, w, 3] RGB)`` pairs, any sizes.
    data_config: ``config.data`` (scale, max_size, buckets).
    batch_size: images per batch; the last batch of a canvas is padded.

  Yields:
    ``(keys, batch)``: the keys of the batch's real images (in slot order)
    and ``{'image' uint8 [batch_size, H, W, 3], 'im_info' [batch_size, 3],
    'image_id' int32 [batch_size]}`` with ``image_id`` the slot index, or
    -1 in padding slots. Canvases are the config's buckets, or the smallest
    64-px multiple holding an image no bucket holds (a new shape to
    compile).
  """
  groups = collections.defaultdict(list)
  for key, image in images:
    resized, info = prepare_image(image, data_config)
    groups[canvas_for(resized.shape[0], resized.shape[1],
                      data_config.buckets)].append((key, resized, info))
  for (ch, cw), items in groups.items():
    for i in range(0, len(items), batch_size):
      chunk = items[i:i + batch_size]
      batch = np.zeros((batch_size, ch, cw, 3), chunk[0][1].dtype)
      info = np.tile(np.array([ch, cw, 1.0], np.float32), (batch_size, 1))
      for j, (_, im, inf) in enumerate(chunk):
        batch[j, :im.shape[0], :im.shape[1]] = im
        info[j] = inf
      ids = np.where(np.arange(batch_size) < len(chunk),
                     np.arange(batch_size), -1).astype(np.int32)
      yield [k for k, _, _ in chunk], dict(image=batch, im_info=info,
                                           image_id=ids)
