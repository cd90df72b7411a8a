"""Train-loader throughput (images/s) on the synthetic shapes set.

  python bench/data.py                      # 600/1000 canvases, 0 and 2 workers
  python bench/data.py --workers=0,1,2,4 --batch=4 --steps=30

Measures the grain train loader (decode PNG, flip, crop, resize to the
600x1000 canvases, pad) with 0 (in-process threads) and N worker processes,
after a warm-up (worker start-up is reported separately). Peer, in the same
run: the same per-image work in a plain Python loop (no grain), and, when
torch is importable, ``torch.utils.data.DataLoader`` with the same number of
workers over the same function. Each figure is the median of --repeats
timed windows of --steps batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from frcnn_jax.data import build_train_loader  # noqa: E402
from frcnn_jax.data import default_data_config  # noqa: E402


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


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', default='/tmp/frcnn_jax_bench_shapes')
  p.add_argument('--workers', default='0,2')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--scale', type=int, default=600)
  p.add_argument('--max_size', type=int, default=1000)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--no_torch', action='store_true')
  args = p.parse_args()

  cfg = default_data_config()
  cfg.root = args.root
  cfg.scale, cfg.max_size = args.scale, args.max_size
  cfg.num_threads = args.threads
  up16 = lambda x: -(-x // 16) * 16  # noqa: E731
  cfg.buckets = ((up16(args.scale), up16(args.max_size)),
                 (up16(args.max_size), up16(args.scale)))
  t = time.perf_counter()
  from frcnn_jax.data import build_source  # pylint: disable=g-import-not-at-top
  build_source(cfg, cfg.train_split)
  gen = time.perf_counter() - t

  rows = []
  plain, _ = _plain(cfg, args)
  rows.append(('plain loop (no grain), 1 thread', plain, 0.0))
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

  print(f'\n$ python bench/data.py {" ".join(sys.argv[1:])}')
  print(f'synthetic shapes at {cfg.root} (ready in {gen:.1f} s); canvases '
        f'{cfg.buckets}; batch {args.batch}; median of {args.repeats} x '
        f'{args.steps} batches; {os.cpu_count()} CPUs (shared: noisy)\n')
  print(f'| {"loader":<38} | {"images/s":>9} | {"vs plain":>8} | '
        f'{"1st batch s":>11} |')
  print(f'|{"-" * 40}|{"-" * 11}|{"-" * 10}|{"-" * 13}|')
  for name, r, s in rows:
    print(f'| {name:<38} | {r:9.1f} | {r / plain:7.2f}x | {s:11.2f} |')


if __name__ == '__main__':
  main()
