"""Timing helpers shared by the benchmarks."""

import time

import numpy as np


def median_s(fn, repeats: int, warmup: bool = True) -> float:
  """Median wall time of ``fn()`` in seconds over ``repeats`` calls.

  With ``warmup``, one untimed call first (compilation, caches). ``fn`` must
  block until its work is done (``jax.block_until_ready``).
  """
  if warmup:
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def median_ms(fn, repeats: int, warmup: bool = True) -> float:
  return 1e3 * median_s(fn, repeats, warmup)
