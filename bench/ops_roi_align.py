"""Benchmark: RoIAlign / RoIPool (ops/roi_align.py) vs numpy and torchvision.

  python -m bench.ops_roi_align [--rois 128,512] [--repeats 5] [--no-torch]

Setting of issue 2: a 1024-channel 38x63 feature map (a 600x1000 image at
stride 16), 7x7 output, spatial_scale 1/16, sampling_ratio 0 (the seed's) and
2, with proposal-like RoIs: log-uniform sizes 16..600 px, aspect 0.5..2,
inside the 600x1000 image. Reports medians (ms) of `--repeats` runs after a
warm-up (compile excluded; compile time is printed separately) for our jitted
op, a vectorised numpy reference (forward only, timed on `--ref-rois` RoIs and
scaled linearly to R) and torchvision.ops (when importable; its CPU kernels are
single-threaded loops), with ratios ours / peer measured in the same run.
`run(args)` returns the rows so bench/ops.py can assemble one table.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time

import numpy as np

from bench import timing

IMG_H, IMG_W = 600, 1000


def proposal_rois(n: int, seed: int = 0) -> np.ndarray:
  """[n,4] float32 proposal-like boxes inside a 600x1000 image."""
  rng = np.random.default_rng(seed)
  s = np.exp(rng.uniform(np.log(16), np.log(600), n))
  ar = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
  w = np.minimum(s * np.sqrt(ar), IMG_W)
  h = np.minimum(s / np.sqrt(ar), IMG_H)
  x1 = rng.uniform(0, IMG_W - w)
  y1 = rng.uniform(0, IMG_H - h)
  b = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1)
  b[:, 0::2] = np.clip(b[:, 0::2], 0, IMG_W - 1)
  b[:, 1::2] = np.clip(b[:, 1::2], 0, IMG_H - 1)
  return b.astype(np.float32)


# ---------------------------------------------------------------------------
# numpy peers (vectorised per RoI; torchvision's rules)
# ---------------------------------------------------------------------------

def np_roi_align(feat, rois, out, scale, sr, aligned=False):
  h, w, c = feat.shape
  res = np.zeros((len(rois), out, out, c), np.float32)
  off = 0.5 if aligned else 0.0
  for r, (x1, y1, x2, y2) in enumerate(rois.astype(np.float32)):
    sx, sy = x1 * np.float32(scale) - off, y1 * np.float32(scale) - off
    rw, rh = x2 * np.float32(scale) - off - sx, y2 * np.float32(scale) - off - sy
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out, rw / out
    gh = sr if sr > 0 else int(math.ceil(bh))
    gw = sr if sr > 0 else int(math.ceil(bw))
    if gh <= 0 or gw <= 0:
      continue
    ys = (sy + np.arange(out)[:, None] * bh + (np.arange(gh)[None] + .5) * bh / gh).ravel()
    xs = (sx + np.arange(out)[:, None] * bw + (np.arange(gw)[None] + .5) * bw / gw).ravel()

    def taps(p, size):
      ok = (p >= -1) & (p <= size)
      p = np.clip(p, 0, size - 1)
      lo = np.floor(p).astype(int)
      last = lo >= size - 1
      lo = np.where(last, size - 1, lo)
      hi = np.where(last, size - 1, lo + 1)
      fr = np.where(last, 0.0, p - lo)
      return lo, hi, (1 - fr) * ok, fr * ok

    ylo, yhi, wyl, wyh = taps(ys, h)
    xlo, xhi, wxl, wxh = taps(xs, w)
    v = (wyl[:, None, None] * (wxl[None, :, None] * feat[ylo][:, xlo] +
                               wxh[None, :, None] * feat[ylo][:, xhi]) +
         wyh[:, None, None] * (wxl[None, :, None] * feat[yhi][:, xlo] +
                               wxh[None, :, None] * feat[yhi][:, xhi]))
    res[r] = v.reshape(out, gh, out, gw, c).mean((1, 3))
  return res


def np_roi_pool(feat, rois, out, scale):
  h, w, c = feat.shape
  res = np.zeros((len(rois), out, out, c), np.float32)
  rnd = lambda v: int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)
  for r, roi in enumerate(rois.astype(np.float32)):
    x1, y1, x2, y2 = [rnd(float(v * np.float32(scale))) for v in roi]
    bh, bw = max(y2 - y1 + 1, 1) / out, max(x2 - x1 + 1, 1) / out
    for i in range(out):
      hs = min(max(int(math.floor(i * bh)) + y1, 0), h)
      he = min(max(int(math.ceil((i + 1) * bh)) + y1, 0), h)
      for j in range(out):
        ws = min(max(int(math.floor(j * bw)) + x1, 0), w)
        we = min(max(int(math.ceil((j + 1) * bw)) + x1, 0), w)
        if he > hs and we > ws:
          res[r, i, j] = feat[hs:he, ws:we].max((0, 1))
  return res


# ---------------------------------------------------------------------------


def _ratio(a, b):
  return a / b if (a is not None and b) else None


def run(args) -> list[dict]:
  """Runs the benchmark; returns one dict per table row."""
  import jax
  import jax.numpy as jnp
  from ops.roi_align import roi_align, roi_pool

  try:
    if args.no_torch:
      raise ImportError
    import torch
    import torchvision
  except ImportError:
    torch = torchvision = None

  h, w, c, out, scale = args.height, args.width, args.channels, 7, 1 / 16
  rng = np.random.default_rng(0)
  feat_np = rng.normal(size=(h, w, c)).astype(np.float32)
  feat = jnp.asarray(feat_np)
  if torch is not None:
    tfeat = torch.from_numpy(feat_np).permute(2, 0, 1)[None].contiguous()
  rows = []
  for n in args.rois:
    rois_np = proposal_rois(n)
    rois = jnp.asarray(rois_np)
    cot_np = rng.normal(size=(n, out, out, c)).astype(np.float32)
    cot = jnp.asarray(cot_np)
    if torch is not None:
      trois = torch.cat([torch.zeros(n, 1), torch.from_numpy(rois_np)], 1)
      tcot = torch.from_numpy(cot_np).permute(0, 3, 1, 2).contiguous()
    n_ref = min(n, args.ref_rois)
    ops = [("roi_align", sr) for sr in args.sampling_ratios] + [("roi_pool", None)]
    for op, sr in ops:
      if op == "roi_align":
        f = lambda x, r, sr=sr: roi_align(x, r, out, scale, sr, False)
        ref = lambda k, sr=sr: np_roi_align(feat_np, rois_np[:k], out, scale, sr)
        tv = (lambda x, sr=sr: torchvision.ops.roi_align(x, trois, out, scale, sr, False)
              ) if torch is not None else None
      else:
        f = lambda x, r: roi_pool(x, r, out, scale)
        ref = lambda k: np_roi_pool(feat_np, rois_np[:k], out, scale)
        tv = (lambda x: torchvision.ops.roi_pool(x, trois, out, scale)
              ) if torch is not None else None
      fwd = jax.jit(f)
      fwdbwd = jax.jit(jax.value_and_grad(lambda x, r: jnp.vdot(f(x, r), cot)))
      t0 = time.perf_counter()
      jax.block_until_ready(fwd(feat, rois))
      compile_fwd = time.perf_counter() - t0
      t0 = time.perf_counter()
      jax.block_until_ready(fwdbwd(feat, rois))
      compile_bwd = time.perf_counter() - t0
      ours_f = timing.median_ms(
          lambda: jax.block_until_ready(fwd(feat, rois)), args.repeats,
          warmup=False)
      ours_fb = timing.median_ms(
          lambda: jax.block_until_ready(fwdbwd(feat, rois)), args.repeats,
          warmup=False)
      ref_f = None
      if n_ref > 0:
        ref_f = timing.median_ms(lambda: ref(n_ref), max(1, args.repeats // 2),
                                 warmup=False) * n / n_ref
      tv_f = tv_fb = None
      if tv is not None:
        tv_f = timing.median_ms(lambda: tv(tfeat), args.repeats, warmup=False)

        def tv_step():
          x = tfeat.detach().requires_grad_(True)
          y = tv(x)
          y.backward(tcot)
          return x.grad
        tv_fb = timing.median_ms(tv_step, args.repeats, warmup=False)
        if args.check:
          want = tv(tfeat).permute(0, 2, 3, 1).numpy()
          err = float(np.abs(np.asarray(fwd(feat, rois)) - want).max())
          print(f"# {op} sr={sr} R={n}: max |ours - torchvision| = {err:.2e}",
                file=sys.stderr)
      rows.append(dict(
          op=op, sampling_ratio="-" if sr is None else sr, rois=n,
          ours_fwd_ms=ours_f, numpy_fwd_ms=ref_f, torchvision_fwd_ms=tv_f,
          fwd_vs_numpy=_ratio(ours_f, ref_f), fwd_vs_torchvision=_ratio(ours_f, tv_f),
          ours_fwdbwd_ms=ours_fb, torchvision_fwdbwd_ms=tv_fb,
          fwdbwd_vs_torchvision=_ratio(ours_fb, tv_fb),
          compile_s=compile_fwd + compile_bwd))
  return rows


def format_table(rows: list[dict]) -> str:
  cols = [("op", "op"), ("sampling_ratio", "sr"), ("rois", "R"),
          ("ours_fwd_ms", "ours fwd"), ("numpy_fwd_ms", "numpy fwd"),
          ("torchvision_fwd_ms", "tv fwd"), ("fwd_vs_numpy", "/numpy"),
          ("fwd_vs_torchvision", "/tv"), ("ours_fwdbwd_ms", "ours f+b"),
          ("torchvision_fwdbwd_ms", "tv f+b"), ("fwdbwd_vs_torchvision", "/tv f+b"),
          ("compile_s", "compile s")]

  def fmt(k, v):
    if v is None:
      return "-"
    if isinstance(v, float):
      return f"{v:.2f}" if (k.startswith("fwd") or k.startswith("compile")) else f"{v:.1f}"
    return str(v)

  lines = ["| " + " | ".join(t for _, t in cols) + " |",
           "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rois", type=lambda s: [int(v) for v in s.split(",")],
                 default=[128, 512])
  p.add_argument("--sampling-ratios", type=lambda s: [int(v) for v in s.split(",")],
                 default=[0, 2])
  p.add_argument("--height", type=int, default=38)
  p.add_argument("--width", type=int, default=63)
  p.add_argument("--channels", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--ref-rois", type=int, default=16,
                 help="RoIs timed for the numpy reference (scaled to R)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--check", action="store_true",
                 help="print max |ours - torchvision| to stderr")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  import jax
  rows = run(args)
  argv = sys.argv[1:] if argv is None else list(argv)
  cmd = [sys.executable, "-m", "bench.ops_roi_align"] + argv
  print("$ " + " ".join(shlex.quote(a) for a in cmd))
  print(f"# jax {jax.__version__}, {jax.devices()[0].platform}, medians of "
        f"{args.repeats} runs (ms); numpy timed on {args.ref_rois} RoIs, scaled; "
        f"ratio = ours / peer")
  print(format_table(rows))


if __name__ == "__main__":
  if __package__ in (None, ""):   # run as a file: make the repo importable
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  main()
