"""Benchmark: the Pallas NMS kernel (ops.pallas_nms) vs ops.nms.nms (jnp).

Run from the repository root (standalone):

  python -m bench.pallas_nms [--repeats 9] [--seed 0] [--block-rows 2048]
      [--cases 6000:300:0.7,12000:2000:0.7,12000:12000:0.7]

Both run on jax's default device, jitted, compile time measured separately
and excluded from the run time (median of ``--repeats`` runs, timed with
block_until_ready). On GPU/TPU the kernel is compiled (Triton / Mosaic); on
CPU Pallas can only *interpret* the kernel, so the CPU numbers say nothing
about kernel speed on an accelerator (the column ``pallas mode`` says which
one ran). Inputs are the RPN-like boxes of bench/ops_nms.py (jittered
clusters plus scattered boxes on a 600x1000 image, random scores).
``match`` compares the kept indices with the seed's ``nms_cpu`` (numpy)
and with ops.nms.nms; ``mask ms`` times the kernel alone on the first mask
block (``block_rows`` rows against all sorted columns), ``blocks`` is
the number of mask blocks the greedy pass needed / exists. ``compile s``
includes the first run.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing

from bench.ops_nms import nms_cpu, realistic_boxes
from ops import nms as nms_lib
from ops import pallas_nms


def _compile_s(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _kept(out) -> np.ndarray:
  idx, valid = (np.asarray(o) for o in out)
  return idx[valid]


def _blocks_needed(boxes, scores, keep, n, block_rows) -> str:
  """Mask blocks the early stop needed (from the last kept sorted position)."""
  p = -(-n // pallas_nms.ALIGN) * pallas_nms.ALIGN
  total = -(-p // block_rows)
  order = np.argsort(-scores, kind="stable")
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n)
  last = int(rank[keep].max()) if len(keep) else 0
  return f"{last // block_rows + 1}/{total}"


def run(args) -> list[dict]:
  """Runs all cases; returns one row (dict) per case."""
  platform = jax.default_backend()
  mode = "compiled" if platform in ("gpu", "tpu") else "interpret"
  rows = []
  for case in args.cases.split(","):
    n_s, out_s, thr_s = case.split(":")
    n, max_out, thr = int(n_s), int(out_s), float(thr_s)
    boxes, scores = realistic_boxes(n, args.seed)
    jb, js = jax.device_put(boxes), jax.device_put(scores)
    jthr = jnp.float32(thr)
    ref_fn = jax.jit(functools.partial(nms_lib.nms, max_output=max_out))
    pal_fn = jax.jit(functools.partial(
        pallas_nms.nms, max_output=max_out, block_rows=args.block_rows))
    ours = lambda: jax.block_until_ready(pal_fn(jb, js, jthr))  # pylint: disable=cell-var-from-loop
    peer = lambda: jax.block_until_ready(ref_fn(jb, js, jthr))  # pylint: disable=cell-var-from-loop
    row = {"case": f"{n}->{max_out if max_out < n else 'all'} @{thr}",
           "pallas_compile_s": _compile_s(ours),
           "jnp_compile_s": _compile_s(peer)}
    row["pallas_ms"] = timing.median_ms(ours, args.repeats, warmup=False)
    row["jnp_ms"] = timing.median_ms(peer, args.repeats, warmup=False)
    row["pallas/jnp"] = row["pallas_ms"] / row["jnp_ms"]
    got, want = _kept(ours()), _kept(peer())
    ref = nms_cpu(boxes, scores, np.float32(thr))[:max_out]
    row["match"] = (f"numpy {np.array_equal(got, ref)}, "
                    f"jnp {np.array_equal(got, want)}")
    row["kept"] = len(got)
    row["blocks"] = _blocks_needed(boxes, scores, got, n, args.block_rows)

    # The kernel alone on the first block (sorted boxes, as in nms).
    p = -(-n // pallas_nms.ALIGN) * pallas_nms.ALIGN
    sorted_b = np.zeros((p, 4), np.float32)
    sorted_b[:n] = boxes[np.argsort(-scores, kind="stable")]
    rb = min(args.block_rows, p)
    rows_b = jax.device_put(np.ascontiguousarray(sorted_b[:rb].T))
    cols_b = jax.device_put(sorted_b)
    mask_fn = jax.jit(pallas_nms.suppression_mask,
                      static_argnames=("interpret", "platform"))
    kern = lambda: jax.block_until_ready(  # pylint: disable=cell-var-from-loop
        mask_fn(rows_b, cols_b, jthr, interpret=mode == "interpret"))  # pylint: disable=cell-var-from-loop
    kern()
    row["mask_ms"] = timing.median_ms(kern, args.repeats, warmup=False)
    row["mask_mb"] = rb * p / 8 / 2**20
    rows.append(row)
  for r in rows:
    r["mode"] = mode
  return rows


def format_table(rows: list[dict]) -> str:
  """Markdown table of ``run`` rows."""
  lines = [
      "| case | jnp ms | pallas ms | pallas/jnp | pallas mode | mask ms "
      "(1st block) | mask MiB/block | blocks | compile s pallas / jnp | "
      "kept | match |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['case']} | {r['jnp_ms']:.2f} | {r['pallas_ms']:.2f} | "
        f"{r['pallas/jnp']:.2f} | {r['mode']} | {r['mask_ms']:.2f} | "
        f"{r['mask_mb']:.1f} | {r['blocks']} | {r['pallas_compile_s']:.1f} / "
        f"{r['jnp_compile_s']:.1f} | {r['kept']} | {r['match']} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=9,
                      help="timed runs per case (median reported)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--block-rows", type=int,
                      default=pallas_nms.BLOCK_ROWS,
                      help="rows per mask block (multiple of 256)")
  parser.add_argument("--cases",
                      default="6000:300:0.7,12000:2000:0.7,12000:12000:0.7",
                      help="comma-separated N:max_output:threshold")
  args = parser.parse_args(argv)
  rows = run(args)
  print("command: " + shlex.join([sys.executable, "-m", "bench.pallas_nms"]
                                 + (sys.argv[1:] if argv is None else argv)))
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})")
  print(format_table(rows))


if __name__ == "__main__":
  main()
