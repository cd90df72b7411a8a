"""COCO-sized annotation files: ours vs pycocotools, time and peak memory.

  python bench/data.py --coco-scale [--scale_images 118287
                                     --scale_annotations 860001 --repeats 3]
  python bench/data.py --coco-eval  [--eval_images 5000 --dets 100]

``--coco-scale`` writes (once, cached by its parameters) a synthetic
``instances_train2017.json`` the size of COCO's (118,287 images, 860,001
annotations, the 80 COCO category ids, image entries with COCO's fields,
annotations with a polygon ``segmentation`` of 6-20 points, ~1% crowd
annotations with an uncompressed-RLE segmentation; no image files), then
measures, each in a fresh subprocess so that peak memory is its own:

* ``pycocotools COCO(file)``: the peer;
* ``read_coco(file, verify_images='none')``: our reader (reads and
  validates every field, builds the per-image records);
* ``build_train_loader`` on the same file (``data.name='coco'``,
  ``verify_images='none'``, grain not started): what ``train.py`` pays
  before its first step;
* ``coco_gt``: ``read_coco`` and then the evaluation ground truth
  (``coco_gt()``, a pycocotools ``COCO`` built from the arrays kept by the
  read): what ``eval.py`` pays.

Time is wall and CPU time of the call; memory is the peak RSS growth over
the RSS after the imports (``ru_maxrss`` minus the RSS before the call), so
importing jax does not count against us. Rows are the median of
``--repeats`` runs (interleaved), and the ratios to pycocotools are of the
same run.

``--coco-eval`` times COCOeval ('bbox': evaluate + accumulate + summarize)
on generated ground truth (``--eval_images`` images, ~7 boxes each, 80
classes) and ``--dets`` detections per image (jittered copies of the ground
truth plus random boxes, all classes), with pycocotools and with
faster-coco-eval, prints the largest difference of the 12 numbers and
both times (``metrics.coco_evaluate(evaluator=...)``, config
``test.coco_evaluator``; pycocotools is the default and the reference).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from frcnn_jax.data import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def ensure_coco_like(root: str, num_images: int, num_annotations: int,
                     seed: int = 0) -> str:
  """``root/coco_<n>_<m>_<seed>/annotations/instances_train2017.json``,
  written when missing; returns its path."""
  d = os.path.join(root, f'coco_{num_images}_{num_annotations}_{seed}')
  path = os.path.join(d, 'annotations', 'instances_train2017.json')
  if not os.path.exists(path):
    t = time.perf_counter()
    testing.write_coco_like(path, num_images, num_annotations, seed=seed)
    print(f'wrote {path} ({os.path.getsize(path) / 2**20:.0f} MiB) in '
          f'{time.perf_counter() - t:.0f} s', file=sys.stderr)
  return path


# -- one measurement per subprocess ------------------------------------------

def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def measure_in_process(kind: str, path: str) -> dict:
  """Runs one ``kind`` on ``path`` here; ``{'s', 'peak_mib', 'n'}``.

  ``peak_mib`` is the process's peak RSS growth over the RSS after the
  imports. Meant for a fresh process (``ru_maxrss`` is a lifetime peak).
  """
  # pylint: disable=import-outside-toplevel
  import contextlib
  import io
  if kind == 'pycocotools':
    from pycocotools.coco import COCO

    def run():
      with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(path)
      return len(c.anns)
  elif kind == 'read_coco':
    from frcnn_jax.data import coco

    def run():
      src = coco.read_coco(path, os.path.dirname(path), verify_images='none')
      return sum(len(r.boxes) for r in src.records)
  elif kind == 'coco_gt':
    from frcnn_jax.data import coco

    def run():
      src = coco.read_coco(path, os.path.dirname(path), verify_images='none')
      return len(src.coco_gt().anns)
  elif kind == 'build_train_loader':
    from frcnn_jax.data import build_train_loader
    from frcnn_jax.data import default_data_config
    cfg = default_data_config()
    cfg.name = 'coco'
    cfg.root = os.path.dirname(os.path.dirname(path))
    cfg.train_split = 'train2017'
    cfg.verify_images = 'none'
    cfg.max_num_box = 50
    cfg.buckets = ((608, 800), (800, 608), (608, 1008), (1008, 608))

    def run():
      it = build_train_loader(cfg, seed=0, global_batch_size=16)
      return it.num_records
  else:
    raise ValueError(kind)
  # pylint: enable=import-outside-toplevel
  base = _rss_bytes()
  c0 = time.process_time()
  t = time.perf_counter()
  n = run()
  s = time.perf_counter() - t
  cpu = time.process_time() - c0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {'s': s, 'cpu_s': cpu, 'peak_mib': (peak - base) / 2**20, 'n': n}


def measure(kind: str, path: str) -> dict:
  code = (f'import json, sys; sys.path.insert(0, {REPO!r}); '
          f'from bench import data_scale; print("RESULT " + json.dumps('
          f'data_scale.measure_in_process({kind!r}, {path!r})))')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, env=env, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[7:])
  raise RuntimeError(f'{kind} failed:\n{proc.stderr[-4000:]}')


def coco_scale_rows(path: str, repeats: int, kinds) -> list[dict]:
  """Median time / peak over ``repeats`` interleaved runs of each kind."""
  runs = {k: [] for k in kinds}
  for _ in range(repeats):
    for k in kinds:
      runs[k].append(measure(k, path))
  rows = []
  for k in kinds:
    rows.append({'what': k, 'n': runs[k][0]['n'],
                 **{f: statistics.median(r[f] for r in runs[k])
                    for f in ('s', 'cpu_s', 'peak_mib')}})
  return rows


def format_scale_table(rows: list[dict], peer: str = 'pycocotools') -> str:
  ref = next((r for r in rows if r['what'] == peer), None)
  lines = ['| what | wall s | CPU s | x pycocotools (wall / CPU) | '
           'peak RSS+ MiB | x pycocotools memory |',
           '|---|---|---|---|---|---|']
  for r in rows:
    ratio = (f'{r["s"] / ref["s"]:.2f} / {r["cpu_s"] / ref["cpu_s"]:.2f}'
             if ref else '')
    rm = f'{r["peak_mib"] / ref["peak_mib"]:.2f}' if ref else ''
    lines.append(f'| {r["what"]} | {r["s"]:.1f} | {r["cpu_s"]:.1f} | '
                 f'{ratio} | {r["peak_mib"]:.0f} | {rm} |')
  return '\n'.join(lines)


# -- COCOeval at scale ----------------------------------------------------------

def coco_eval_rows(num_images: int, dets_per_image: int, root: str,
                   evaluators=None) -> tuple[list[dict], float]:
  """Times ``metrics.coco_evaluate`` per evaluator on generated data.

  Returns ``(rows, largest difference of the 12 numbers to pycocotools)``.
  """
  # pylint: disable=import-outside-toplevel
  from frcnn_jax import metrics
  from frcnn_jax.data import coco
  # pylint: enable=import-outside-toplevel
  path = ensure_coco_like(root, num_images, 7 * num_images, seed=1)
  gt = coco.read_coco(path, os.path.dirname(path),
                      verify_images='none').coco_gt()
  dets = testing.coco_like_detections(gt.dataset, dets_per_image, seed=2)
  rows = []
  for ev in evaluators or metrics.COCO_EVALUATORS:
    c0, t = time.process_time(), time.perf_counter()
    m = metrics.coco_evaluate(gt, dets, evaluator=ev)
    rows.append({'evaluator': ev, 's': time.perf_counter() - t,
                 'cpu_s': time.process_time() - c0,
                 **{k: m[k] for k in metrics.COCO_METRIC_NAMES}})
  diff = max(abs(rows[0][k] - r[k]) for r in rows
             for k in metrics.COCO_METRIC_NAMES)
  return rows, diff


def format_eval_table(rows: list[dict]) -> str:
  ref = rows[0]
  lines = ['| evaluator | wall s | CPU s | x pycocotools (wall) | AP | AP50 | '
           'AR100 |', '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["evaluator"]} | {r["s"]:.1f} | {r["cpu_s"]:.1f} | '
                 f'{r["s"] / ref["s"]:.3f} | {r["AP"]:.6f} | '
                 f'{r["AP50"]:.6f} | {r["AR100"]:.6f} |')
  return '\n'.join(lines)
