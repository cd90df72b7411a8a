"""Benchmark: ops.nms.nms / batched_nms vs a numpy nms_cpu and torchvision.

Run from the repository root:

  python -m bench.ops_nms [--repeats 9] [--seed 0]

Cases (realistic RPN-like boxes: jittered clusters around a few objects
plus scattered boxes, random scores, on a 600x1000 image):
  - NMS 6000 -> 300 @ 0.7 (the seed's test-time RPN), 12000 -> 2000 @ 0.7
    (training-time RPN), and the same without a cap (max_output = N: the
    whole greedy NMS, no early stop; ``--no-full`` skips these);
  - per-class detection NMS, 80 classes x 300 boxes -> 100 @ 0.3.
Ours is jitted (compile excluded), timed with block_until_ready. The numpy
peer is a transcription of the seed's ``nms_cpu`` run to completion and then
sliced (as the seed does). torchvision (when importable) returns all kept
indices: it is timed fully, then sliced. torchvision uses the exclusive
``w = x2 - x1`` convention, so its kept set can differ slightly; the
``match`` column compares ours with the numpy reference only.

``run(args)`` returns the table rows (dicts) so bench/ops.py can gather
them; printing is in ``format_table`` / ``__main__``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import jax
import numpy as np

from bench import timing

from ops import nms as nms_lib


def realistic_boxes(n: int, seed: int = 0, height: int = 600,
                    width: int = 1000, n_objects: int = 20):
  """RPN-like proposals: 70% jittered around objects, 30% scattered."""
  rng = np.random.default_rng(seed)
  cx = rng.uniform(0, width, n_objects)
  cy = rng.uniform(0, height, n_objects)
  w = rng.uniform(30, 400, n_objects)
  h = rng.uniform(30, 300, n_objects)
  n_clustered = int(n * 0.7)
  k = rng.integers(0, n_objects, n_clustered)
  jit = rng.normal(0, 0.15, (n_clustered, 4))
  m = n - n_clustered
  cxs = np.concatenate([cx[k] + jit[:, 0] * w[k], rng.uniform(0, width, m)])
  cys = np.concatenate([cy[k] + jit[:, 1] * h[k], rng.uniform(0, height, m)])
  ws = np.concatenate([w[k] * np.exp(jit[:, 2]), rng.uniform(10, 300, m)])
  hs = np.concatenate([h[k] * np.exp(jit[:, 3]), rng.uniform(10, 300, m)])
  b = np.stack([cxs - ws / 2, cys - hs / 2, cxs + ws / 2, cys + hs / 2], 1)
  b[:, 0::2] = b[:, 0::2].clip(0, width - 1)
  b[:, 1::2] = b[:, 1::2].clip(0, height - 1)
  perm = rng.permutation(n)
  return b[perm].astype(np.float32), rng.random(n).astype(np.float32)


def detection_inputs(k: int, n: int, seed: int = 0):
  """Per-class boxes [k, n, 4] around proposals and softmax scores [k, n]."""
  rng = np.random.default_rng(seed + 1)
  proposals, _ = realistic_boxes(n, seed)
  boxes = proposals[None] + rng.normal(0, 4, (k, n, 4))
  logits = rng.normal(0, 2, (n, k + 1))
  logits[np.arange(n), rng.integers(0, k + 1, n)] += 5
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return (boxes.astype(np.float32),
          np.ascontiguousarray(probs[:, 1:].T).astype(np.float32))


def nms_cpu(boxes: np.ndarray, scores: np.ndarray, thresh: float):
  """The seed's nms_cpu (numpy, float32), stable order for ties."""
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(i)
    xx1 = np.maximum(x1[i], x1[order[1:]])
    yy1 = np.maximum(y1[i], y1[order[1:]])
    xx2 = np.minimum(x2[i], x2[order[1:]])
    yy2 = np.minimum(y2[i], y2[order[1:]])
    w = np.maximum(0.0, xx2 - xx1 + 1)
    h = np.maximum(0.0, yy2 - yy1 + 1)
    inter = w * h
    ovr = inter / (areas[i] + areas[order[1:]] - inter)
    order = order[1:][ovr <= thresh]
  return np.array(keep, np.int64)


def numpy_batched(boxes, scores, thresh, max_det, score_thresh=0.0):
  """The seed's test_net per-class loop + max_per_image, in numpy."""
  dets = []
  for j in range(scores.shape[0]):
    inds = np.flatnonzero(scores[j] > score_thresh)
    keep = inds[nms_cpu(boxes[j][inds], scores[j][inds], thresh)]
    dets.append(np.stack([scores[j][keep], np.full(len(keep), j), keep], 1))
  dets = np.concatenate(dets)
  return dets[np.argsort(-dets[:, 0], kind="stable")[:max_det]]


def _torchvision():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    return torch, torchvision
  except ImportError:
    return None, None


def run(args) -> list[dict]:
  """Runs all cases; returns one row (dict) per case."""
  torch, torchvision = _torchvision()
  rows = []
  nms_jit = jax.jit(nms_lib.nms, static_argnums=3)
  cases = [(6000, 300, 0.7), (12000, 2000, 0.7)]
  if args.full:
    cases += [(6000, 6000, 0.7), (12000, 12000, 0.7)]
  for n, max_out, thr in cases:
    boxes, scores = realistic_boxes(n, args.seed)
    jb, js = jax.device_put(boxes), jax.device_put(scores)
    ours = lambda: jax.block_until_ready(nms_jit(jb, js, thr, max_out))  # pylint: disable=cell-var-from-loop
    idx, valid = ours()
    ref = nms_cpu(boxes, scores, np.float32(thr))
    row = {
        "case": f"nms {n}->{max_out if max_out < n else 'all'} @{thr}",
        "ours_ms": timing.median_ms(ours, args.repeats),
        "numpy_ms": timing.median_ms(
            lambda: nms_cpu(boxes, scores, np.float32(thr))[:max_out],  # pylint: disable=cell-var-from-loop
            args.repeats),
        "match": bool(np.array_equal(np.asarray(idx)[np.asarray(valid)],
                                     ref[:max_out])),
        "kept": f"{int(np.asarray(valid).sum())} (all: {len(ref)})",
        "torchvision_ms": None,
    }
    if torch is not None:
      tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
      row["torchvision_ms"] = timing.median_ms(
          lambda: torchvision.ops.nms(tb, ts, thr)[:max_out],  # pylint: disable=cell-var-from-loop
          args.repeats)
    rows.append(row)

  k, n, d, thr = 80, 300, 100, 0.3
  boxes, scores = detection_inputs(k, n, args.seed)
  batched_jit = jax.jit(nms_lib.batched_nms, static_argnums=3)
  jb, js = jax.device_put(boxes), jax.device_put(scores)
  ours = lambda: jax.block_until_ready(batched_jit(jb, js, thr, d, 0.0))
  out = ours()
  ref = numpy_batched(boxes, scores, np.float32(thr), d)
  row = {
      "case": f"batched_nms {k}x{n}->{d} @{thr}",
      "ours_ms": timing.median_ms(ours, args.repeats),
      "numpy_ms": timing.median_ms(
          lambda: numpy_batched(boxes, scores, np.float32(thr), d),
          args.repeats),
      "match": bool(np.array_equal(np.asarray(out[2]), ref[:, 1])
                    and np.array_equal(np.asarray(out[3]), ref[:, 2])),
      "kept": str(int(np.asarray(out[4]).sum())),
      "torchvision_ms": None,
  }
  if torch is not None:
    tb = torch.from_numpy(boxes.reshape(-1, 4))
    ts = torch.from_numpy(scores.reshape(-1))
    labels = torch.arange(k).repeat_interleave(n)
    def tv_batched():
      keep_mask = ts > 0.0
      idx = torch.nonzero(keep_mask).view(-1)
      keep = torchvision.ops.batched_nms(tb[idx], ts[idx], labels[idx], thr)
      return idx[keep[:d]]
    row["torchvision_ms"] = timing.median_ms(tv_batched, args.repeats)
  rows.append(row)

  for row in rows:
    row["ours/numpy"] = row["ours_ms"] / row["numpy_ms"]
    tv = row["torchvision_ms"]
    row["ours/torchvision"] = None if tv is None else row["ours_ms"] / tv
  return rows


def format_table(rows: list[dict]) -> str:
  """Markdown table of ``run`` rows."""
  def f(x, spec):
    return "-" if x is None else format(x, spec)
  lines = [
      "| case | ours ms | numpy ms | torchvision ms | ours/numpy | "
      "ours/torchvision | match numpy | kept |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['case']} | {f(r['ours_ms'], '.2f')} | {f(r['numpy_ms'], '.2f')}"
        f" | {f(r['torchvision_ms'], '.2f')} | {f(r['ours/numpy'], '.3f')}"
        f" | {f(r['ours/torchvision'], '.3f')} | {r['match']} | {r['kept']} |")
  return "\n".join(lines)


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--repeats", type=int, default=9,
                      help="timed runs per case (median reported)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--full", action=argparse.BooleanOptionalAction,
                      default=True,
                      help="also time complete NMS (max_output = N): ours "
                      "cannot stop early there")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_args(parser)
  args = parser.parse_args(argv)
  rows = run(args)
  print("command: " + shlex.join([sys.executable, "-m", "bench.ops_nms"]
                                 + sys.argv[1:]))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print(format_table(rows))


if __name__ == "__main__":
  main()
