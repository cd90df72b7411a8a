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


def profile_top(fn, top: int = 12) -> list[tuple[str, float, int]]:
  """Runs ``fn()`` once under the JAX profiler; the XLA ops that took longest.

  Ops are grouped by kind: XLA's names with their numeric suffix removed
  (``transpose_copy_fusion.23`` -> ``transpose_copy_fusion``), so a table
  shows where a step's time goes (convolution library calls, copies, gathers,
  loops) rather than single instructions. Returns ``(kind, ms, count)`` rows,
  longest first. Runtime bookkeeping events (executor, thread pool waits,
  Python frames) are left out. ``fn`` must block until its work is done.
  """
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    try:
      fn()
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
    if not paths:
      return []
    with gzip.open(paths[0]) as f:
      events = json.load(f)["traceEvents"]
  skip = re.compile(r"Thunk|ThreadPool|Await|\.py:|^\$|PjRt|Execute")
  ms = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e or skip.search(e["name"]):
      continue
    kind = re.sub(r"(\.\d+)+$", "", e["name"])
    ms[kind] += e["dur"] / 1e3
    count[kind] += 1
  return [(k, v, count[k]) for k, v in ms.most_common(top)]


def matmul_peak_gflops(n: int = 2048, repeats: int = 5,
                       dtype: str = "float32") -> float:
  """Measured dense-matmul rate of the default JAX device, GFLOP/s.

  Best of ``repeats`` jitted ``[n, n] @ [n, n]`` products (2 n^3 flops): the
  practical compute peak that MFU figures in the benchmarks divide by.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9
