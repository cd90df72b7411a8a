"""Train step and inference of the detectors on a GPU / TPU, one table.

  python -m bench.accelerator                 # the default grid, < 8 minutes
  python -m bench.accelerator --models r50 --batches 8,16 --dtypes bfloat16 \
      --nms pallas,jnp                         # a grid of your own (product)
  python -m bench.accelerator --smoke         # tiny sizes, any backend (CI)

For each configuration (model R50-C4 / R101-C4 with the COCO settings: 81
classes, 12 anchors, 12000 -> 2000 proposals in training, 6000 -> 300 in
test; or R50-FPN, ``configs/coco_r50_fpn.py``: torchvision's
``fasterrcnn_resnet50_fpn`` with 91 class slots, 2000 proposals per level
-> 2000 in training, 1000 -> 1000 in test, the per-level NMS; per-device
batch; compute dtype; RPN NMS = the Pallas kernel or the jnp one) on a
608x1008 canvas (600x1000 images; the FPN models round the canvas up to
multiples of 32: 608x1024, the ``canvas`` column): the compile time of the
jitted train step (``train_lib.jit_train_step``) and of predict
(``eval_lib.make_predict_fn``), XLA's device-memory plan
(``compiled.memory_analysis()``: arguments + outputs + temporaries - aliased),
XLA's FLOP count (``cost_analysis``), the median time of a step / a predict
call (after one warm-up call), images/s and MFU: achieved FLOP/s over the
device's dense peak for the compute dtype (:data:`PEAKS`, printed with the
table; bfloat16 -> the bf16 tensor peak; float32 -> the TF32 tensor peak on
NVIDIA GPUs, whose cuBLAS/cuDNN use TF32 for float32 at XLA's default
precision, and the bf16 peak on TPUs, which run float32 matmuls as bf16
passes at that precision; an unknown device -> the measured rate of a
bf16/f32 matmul). Weights are random (zero-init residual scales, as
bench/step.py, so activations stay finite); nothing is downloaded.

Before the grid, the Pallas NMS kernel is checked on the device against the
jnp NMS (12000 -> 2000 RPN-like boxes, IoU 0.7: same kept indices?) and
both are timed. A configuration that fails (a compile error, out of memory)
is reported in the table and the next one runs; when the Pallas kernel
fails on the device (there, or inside a step), the remaining Pallas
settings are skipped. Compile times include tracing and lowering.

Time budget: compiling one program takes ~20-60 s on a GPU, so the default
grid is ordered by interest and every configuration is skipped (and
listed as skipped) once the estimated time would pass ``--budget_s``
(default 420 s after start, so the whole run stays under 8 minutes on one
H200). Narrow the grid with the flags to measure more repetitions.

Needs jax with a GPU or TPU backend (e.g. ``pip install "jax[cuda12]==0.10.2"``);
without one it says what is missing and exits with status 2 (``--smoke``
runs anywhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from bench import step as step_bench
from bench import timing

# When the current run began (main() resets it: the module may be imported
# long before, e.g. by the tests).
START = time.perf_counter()

MODELS = {"tiny": "tiny_resnet", "r50": "resnet50", "r101": "resnet101",
          "tiny_fpn": "tiny_resnet", "r50_fpn": "resnet50"}
FPN_MODELS = ("tiny_fpn", "r50_fpn")

# Dense peak TFLOP/s per device: (match, bf16, tf32, fp32). First match of
# all the substrings in `device_kind` wins. Vendor data sheets (without
# sparsity). TPUs: bf16 per chip; f32 matmuls run as bf16 passes there.
PEAKS = (
    (("H200", "NVL"), 835.0, 418.0, 60.0),
    (("H200",), 989.4, 494.7, 66.9),
    (("H100", "PCIe"), 756.0, 378.0, 51.2),
    (("H100", "NVL"), 835.0, 418.0, 60.0),
    (("H100",), 989.4, 494.7, 66.9),
    (("A100",), 312.0, 156.0, 19.5),
    (("L4",), 121.0, 60.0, 30.3),
    (("TPU v6",), 918.0, 918.0, 918.0),
    (("TPU v5 lite",), 197.0, 197.0, 197.0),
    (("TPU v5e",), 197.0, 197.0, 197.0),
    (("TPU v5",), 459.0, 459.0, 459.0),
    (("TPU v4",), 275.0, 275.0, 275.0),
)

# The default grid, most informative first: (model, batch/device, dtype, nms).
DEFAULT_GRID = (
    ("r50", 8, "bfloat16", "pallas"),
    ("r50", 8, "bfloat16", "jnp"),
    ("r50_fpn", 8, "bfloat16", "pallas"),
    ("r50", 8, "float32", "pallas"),
    ("r101", 8, "bfloat16", "pallas"),
    ("r50_fpn", 8, "bfloat16", "jnp"),
    ("r50", 16, "bfloat16", "pallas"),
    ("r50", 1, "bfloat16", "pallas"),
    ("r101", 16, "bfloat16", "pallas"),
    ("r101", 8, "float32", "pallas"),
    ("r101", 1, "bfloat16", "pallas"),
    ("r101", 8, "bfloat16", "jnp"),
)
SMOKE_GRID = (
    ("tiny", 1, "float32", "jnp"),
    ("tiny", 2, "bfloat16", "pallas"),
    ("tiny_fpn", 1, "float32", "pallas"),
)


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str]:
  """``(dense peak TFLOP/s, which one)`` for a device and compute dtype;
  ``(None, reason)`` for a device not in :data:`PEAKS`."""
  for match, bf16, tf32, _ in PEAKS:
    if all(m in device_kind for m in match):
      if dtype == "bfloat16":
        return bf16, "bf16 dense"
      if device_kind.startswith("TPU"):
        return bf16, "bf16 dense (f32 matmuls run as bf16 passes)"
      return tf32, "TF32 dense (XLA's default f32 precision)"
  return None, f"{device_kind!r} not in bench.accelerator.PEAKS"


# -- what is there --------------------------------------------------------------

def missing_backend_message() -> str | None:
  """None when jax sees a GPU or TPU; else what is missing, exactly."""
  import jax  # pylint: disable=import-outside-toplevel
  platforms = {d.platform for d in jax.devices()}
  if platforms & {"gpu", "cuda", "rocm", "tpu"}:
    return None
  lines = [f"No GPU or TPU backend: jax {jax.__version__} sees only "
           f"{sorted(platforms)} devices."]
  errors = []
  for name in ("cuda", "rocm", "tpu"):
    try:
      jax.devices(name)
    except RuntimeError as e:
      errors.append(f"  jax.devices({name!r}): {str(e).splitlines()[0]}")
  smi = shutil.which("nvidia-smi")
  if smi:
    try:
      out = subprocess.run([smi, "-L"], capture_output=True, text=True,
                           timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
      out = f"(nvidia-smi failed: {e})"
    lines.append(f"nvidia-smi -L: {out or '(no GPU listed)'}")
    plugin = any(importlib.util.find_spec(m) is not None for m in
                 ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    if not plugin:
      lines.append(
          "The NVIDIA driver is there but jax's CUDA plugin is not "
          "installed. Install it (matching this jax) with:\n"
          f'  pip install "jax[cuda12]=={jax.__version__}"')
    else:
      lines.append("jax's CUDA plugin is installed but did not start a GPU "
                   "backend (driver / CUDA library versions?); see "
                   "JAX_PLATFORMS=cuda python -c 'import jax; "
                   "print(jax.devices())' for the error.")
  else:
    lines.append("No nvidia-smi on PATH: no NVIDIA driver visible here. On a "
                 "TPU VM install jax[tpu]; on a GPU machine install the "
                 "driver, then jax[cuda12].")
  if os.environ.get("JAX_PLATFORMS"):
    lines.append(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r} is set: it "
                 "restricts the backends jax starts.")
  lines += errors
  return "\n".join(lines)


# -- one configuration ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
  model: str
  batch: int  # per device
  dtype: str
  nms: str

  def label(self) -> str:
    return f"{self.model} B{self.batch} {self.dtype} {self.nms}"


def num_classes(model: str) -> int:
  """Class slots, background included: COCO's 81 (C4), torchvision's 91
  (FPN), the synthetic dataset's 4 (tiny)."""
  return 4 if model.startswith("tiny") else (
      91 if model in FPN_MODELS else 81)


def _config(s: Setting, height: int, width: int, global_batch: int):
  # pylint: disable=import-outside-toplevel
  from configs import coco_common
  from configs import coco_r50_fpn
  from configs import shapes
  from configs import tiny_fpn
  # pylint: enable=import-outside-toplevel
  c = {"tiny": shapes.get_config, "tiny_fpn": tiny_fpn.get_config,
       "r50_fpn": coco_r50_fpn.get_config}.get(
           s.model, lambda: coco_common.coco_config(MODELS[s.model]))()
  c.model.dtype = s.dtype
  c.model.nms_impl = s.nms
  c.data.buckets = ((height, width),)
  c.train.batch_size = global_batch
  c.optimizer.lr = 1e-3
  return c


def _plan_gib(compiled) -> float | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes +
          mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**30


def measure(s: Setting, *, height: int, width: int, repeats: int,
            do_train: bool = True, do_infer: bool = True) -> dict:
  """Compiles and times one setting on all of jax's devices."""
  # pylint: disable=import-outside-toplevel
  import jax
  from frcnn_jax import eval_lib
  from frcnn_jax import parallel
  from frcnn_jax import train_lib
  # pylint: enable=import-outside-toplevel
  mesh = parallel.create_mesh()
  n_dev = mesh.devices.size
  gb = s.batch * n_dev
  ch, cw = step_bench.canvas_for(s.model, height, width)
  c = _config(s, ch, cw, gb)
  out = {"setting": s, "devices": n_dev, "canvas": f"{ch}x{cw}"}
  graphdef, tx, sched, state, batch = step_bench.train_setup(
      c, num_classes(s.model), mesh, (ch, cw), (height, width), gb)
  if do_train:
    fn = train_lib.jit_train_step(
        train_lib.make_train_step(graphdef, tx, sched), mesh)
    t = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    out["train_compile_s"] = time.perf_counter() - t
    out["train_gflop"] = step_bench._xla_gflop(compiled)  # pylint: disable=protected-access
    out["train_gib"] = _plan_gib(compiled)
    holder = {"state": state}

    def run_step():
      holder["state"], metrics = compiled(holder["state"], batch)
      holder["metrics"] = jax.block_until_ready(metrics)

    out["train_s"] = timing.median_s(run_step, repeats)
    out["finite"] = bool(holder["metrics"]["finite"])
    state = holder.pop("state")
    del compiled, holder
  if do_infer:
    fn = eval_lib.make_predict_fn(graphdef, mesh)
    ids = parallel.global_batch({"i": np.arange(gb, dtype=np.int32)},
                                 mesh)["i"]
    args = (state.params, state.rest, batch["image"], batch["im_info"], ids)
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    out["infer_compile_s"] = time.perf_counter() - t
    out["infer_gflop"] = step_bench._xla_gflop(compiled)  # pylint: disable=protected-access
    out["infer_gib"] = _plan_gib(compiled)
    out["infer_s"] = timing.median_s(
        lambda: jax.block_until_ready(compiled(*args)), repeats)
    del compiled
  del state, batch
  jax.clear_caches()
  gc.collect()
  return out


def add_rates(row: dict, device_kind: str, measured_peak=None) -> dict:
  """images/s, TFLOP/s and MFU (per device) of a measured row."""
  s = row["setting"]
  peak, which = peak_tflops(device_kind, s.dtype)
  if peak is None and measured_peak:
    peak, which = measured_peak(s.dtype), f"measured {s.dtype} matmul"
  row["peak_tflops"], row["peak_kind"] = peak, which
  for k in ("train", "infer"):
    if f"{k}_s" not in row:
      continue
    row[f"{k}_img_s"] = s.batch * row["devices"] / row[f"{k}_s"]
    # XLA's count is of the per-device (SPMD) program.
    row[f"{k}_tflops"] = row[f"{k}_gflop"] / row[f"{k}_s"] / 1e3
    if peak:
      row[f"{k}_mfu"] = row[f"{k}_tflops"] / peak
  return row


COLUMNS = (
    ("model", "model", "s"), ("batch", "B/dev", "s"), ("dtype", "dtype", "s"),
    ("nms", "NMS", "s"), ("canvas", "canvas", "s"),
    ("train_compile_s", "train compile s", ".0f"),
    ("train_s", "train step ms", "ms"),
    ("train_img_s", "train img/s", ".1f"),
    ("train_gib", "train mem GiB", ".1f"),
    ("train_tflops", "train TFLOP/s", ".1f"),
    ("train_mfu", "train MFU", ".3f"),
    ("infer_compile_s", "infer compile s", ".0f"),
    ("infer_s", "infer ms", "ms"),
    ("infer_img_s", "infer img/s", ".1f"),
    ("infer_gib", "infer mem GiB", ".1f"),
    ("infer_tflops", "infer TFLOP/s", ".1f"),
    ("infer_mfu", "infer MFU", ".3f"),
    ("status", "status", "s"),
)


def format_table(rows: list[dict]) -> str:
  """Markdown table of measured / failed / skipped rows."""
  lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  for r in rows:
    s = r["setting"]
    vals = dict(model=s.model, batch=str(s.batch), dtype=s.dtype, nms=s.nms,
                **r)
    cells = []
    for key, _, fmt in COLUMNS:
      v = vals.get(key)
      if v is None:
        cells.append("")
      elif fmt == "s":
        cells.append(str(v))
      elif fmt == "ms":
        cells.append(f"{1e3 * v:.1f}")
      else:
        cells.append(format(v, fmt))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# -- the Pallas NMS on the device ---------------------------------------------

def _time_nms(fns, args, kept, repeats: int) -> dict:
  """``{name: (kept(result) or None, compile s, median ms or the error)}``
  for each ``(name, fn)`` of ``fns`` jitted and run on ``args``."""
  import jax  # pylint: disable=import-outside-toplevel
  out = {}
  for name, fn in fns:
    f = jax.jit(fn)
    try:
      t = time.perf_counter()
      res = jax.block_until_ready(f(*args))
      compile_s = time.perf_counter() - t
      ms = timing.median_ms(lambda f=f: jax.block_until_ready(f(*args)),
                            repeats, warmup=False)
      out[name] = (kept(res), compile_s, ms)
    except Exception as e:  # pylint: disable=broad-except
      out[name] = (None, 0.0, f"{type(e).__name__}: {str(e).splitlines()[0]}")
  return out


def _same(out: dict) -> bool:
  """The jnp NMS ran and kept what the Pallas one kept."""
  return out["jnp"][0] is not None and all(
      np.array_equal(a, b) for a, b in zip(out["pallas"][0], out["jnp"][0]))


def nms_check(n: int = 12000, keep: int = 2000, repeats: int = 10) -> str:
  """Pallas NMS vs jnp NMS on this device: same kept boxes? times. Then
  the per-level form (the FPN RPN's ``batched_nms``) on the same boxes."""
  # pylint: disable=import-outside-toplevel
  import jax
  from bench.ops_nms import realistic_boxes
  from ops import nms as nms_lib
  from ops import pallas_nms
  # pylint: enable=import-outside-toplevel
  boxes, scores = (jax.device_put(a) for a in realistic_boxes(n, seed=0))
  out = _time_nms(
      [(name, lambda b, s, fn=fn: fn(b, s, 0.7, keep)) for name, fn in (
          ("pallas", pallas_nms.select_nms("pallas")), ("jnp", nms_lib.nms))],
      (boxes, scores), lambda r: (np.asarray(r[0])[np.asarray(r[1])],),
      repeats)
  if out["pallas"][0] is None:
    return f"Pallas NMS FAILED on this device: {out['pallas'][2]}"
  line = (f"NMS {n} -> {keep} (IoU 0.7, RPN-like boxes): Pallas kernel "
          f"{out['pallas'][2]:.2f} ms (compile {out['pallas'][1]:.1f} s), "
          f"jnp {out['jnp'][2]:.2f} ms; kept indices "
          f"{'IDENTICAL' if _same(out) else 'DIFFER'} "
          f"({len(out['pallas'][0][0])} kept)")
  # The FPN RPN's: the same boxes as 5 levels, torchvision's IoU, levels
  # never suppressing each other (the kernel's labelled variant).
  lv = 5
  per = n // lv
  b5 = boxes[:per * lv].reshape(lv, per, 4)
  s5 = scores[:per * lv].reshape(lv, per)
  res = _time_nms(
      [(name, lambda b, s, fn=fn: fn(b, s, 0.7, keep, -1.0, pixel_offset=0.0))
       for name, fn in (
           ("pallas", pallas_nms.select_nms("pallas", batched=True)),
           ("jnp", nms_lib.batched_nms))],
      (b5, s5), lambda r: (np.asarray(r[2])[np.asarray(r[4])],
                           np.asarray(r[3])[np.asarray(r[4])]), repeats)
  if res["pallas"][0] is None:
    return line + f"; per-level Pallas NMS FAILED: {res['pallas'][2]}"
  return line + (f"; per level ({lv} x {per} -> {keep}, FPN RPN): Pallas "
                 f"{res['pallas'][2]:.2f} ms, jnp {res['jnp'][2]:.2f} ms, "
                 f"{'IDENTICAL' if _same(res) else 'DIFFER'}")


# -- the grid and the budget ----------------------------------------------------

def build_grid(args) -> list[Setting]:
  """The settings to run: the product of the flags given (the others at
  their defaults), else the default (or smoke) grid."""
  if any(v is not None for v in (args.models, args.batches, args.dtypes,
                                 args.nms)):
    grid = itertools.product(
        (args.models or ("tiny" if args.smoke else "r50,r101")).split(","),
        [int(b) for b in (args.batches or "1,8,16").split(",")],
        (args.dtypes or "bfloat16,float32").split(","),
        (args.nms or "pallas,jnp").split(","))
  else:
    grid = SMOKE_GRID if args.smoke else DEFAULT_GRID
  out = [Setting(*g) for g in grid]
  for s in out:
    if (s.model not in MODELS or s.dtype not in ("bfloat16", "float32")
        or s.nms not in ("pallas", "jnp", "auto") or s.batch < 1):
      raise SystemExit(f"bad setting {s}: models {sorted(MODELS)}, dtypes "
                       "bfloat16/float32, nms pallas/jnp/auto, batch >= 1")
  return out


def estimate_s(s: Setting, done: list[dict]) -> float:
  """Seconds a setting will take: the last measured one of its model (else
  any model, else a guess of two ~45 s compiles)."""
  same = [r for r in done if "wall_s" in r and r["setting"].model == s.model]
  any_ = [r for r in done if "wall_s" in r]
  if same:
    return same[-1]["wall_s"]
  if any_:
    return 1.3 * any_[-1]["wall_s"]
  return 90.0


def run(args) -> tuple[list[dict], str, str]:
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  kind = dev.device_kind
  rows: list[dict] = []
  peak_cache = {}

  def measured_peak(dtype):
    if dtype not in peak_cache:
      peak_cache[dtype] = timing.matmul_peak_gflops(
          n=512 if args.smoke else 8192, dtype=dtype) / 1e3
    return peak_cache[dtype]

  nms_line = nms_check(n=2000 if args.smoke else 12000,
                       keep=300 if args.smoke else 2000,
                       repeats=2 if args.smoke else 10)
  print(nms_line, flush=True)
  pallas_broken = nms_line.startswith("Pallas NMS FAILED")
  for s in build_grid(args):
    elapsed = time.perf_counter() - START
    if s.nms == "pallas" and pallas_broken:
      rows.append({"setting": s, "status": "skipped (the Pallas NMS failed "
                   "on this device, see above)"})
      print(f"{s.label()}: skipped (Pallas failed)", flush=True)
      continue
    if elapsed + estimate_s(s, rows) > args.budget_s:
      rows.append({"setting": s, "status": "skipped (time budget)"})
      print(f"{s.label()}: skipped (budget)", flush=True)
      continue
    t = time.perf_counter()
    try:
      row = measure(s, height=args.height, width=args.width,
                    repeats=args.repeats, do_train=args.train,
                    do_infer=args.infer)
      row = add_rates(row, kind, measured_peak)
      row["status"] = "ok" if row.get("finite", True) else "ok (non-finite loss)"
    except Exception as e:  # pylint: disable=broad-except
      msg = str(e).strip().splitlines()
      row = {"setting": s, "status": f"FAILED: {type(e).__name__}: "
             f"{msg[0][:200] if msg else ''}"}
      traceback.print_exc()
      jax.clear_caches()
      gc.collect()
      # A kernel that does not compile here fails every Pallas setting:
      # spend the budget on the others.
      text = str(e).lower()
      if s.nms == "pallas" and any(k in text for k in ("pallas", "triton",
                                                       "mosaic")):
        pallas_broken = True
        nms_line += f"; the Pallas NMS failed inside {s.label()}"
    row["wall_s"] = time.perf_counter() - t
    rows.append(row)
    print(f"{s.label()}: {row['status']} ({row['wall_s']:.0f} s)", flush=True)
  peaks = sorted({f"{r['setting'].dtype}: {r['peak_tflops']:.4g} TFLOP/s "
                  f"({r['peak_kind']})" for r in rows
                  if r.get("peak_tflops")})
  return rows, nms_line, "; ".join(peaks) or "none"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", help="comma list of r50, r101, r50_fpn (tiny, "
                 "tiny_fpn)")
  p.add_argument("--batches", help="per-device batch sizes, e.g. 1,8,16")
  p.add_argument("--dtypes", help="bfloat16,float32")
  p.add_argument("--nms", help="pallas,jnp (model.nms_impl)")
  p.add_argument("--height", type=int, default=None)
  p.add_argument("--width", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--budget_s", type=float, default=None,
                 help="start no configuration that would end after this "
                 "many seconds from start (default 420; smoke: 600)")
  p.add_argument("--train", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--infer", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--smoke", action="store_true",
                 help="tiny network, 128x128, on any backend (CI)")
  args = p.parse_args(argv)
  if args.smoke:
    args.height = args.height or 128
    args.width = args.width or 128
    args.repeats = args.repeats or 2
    args.budget_s = args.budget_s or 600.0
  else:
    args.height = args.height or 608
    args.width = args.width or 1008
    args.repeats = args.repeats or 10
    args.budget_s = args.budget_s or 420.0
  return args


def main(argv=None) -> int:
  global START  # pylint: disable=global-statement
  START = time.perf_counter()
  args = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  if not args.smoke:
    missing = missing_backend_message()
    if missing:
      print(missing, file=sys.stderr)
      return 2
  rows, nms_line, peaks = run(args)
  dev = jax.devices()[0]
  print("\n$ " + shlex.join([sys.executable, "-m", "bench.accelerator"] +
                            (sys.argv[1:] if argv is None else list(argv))))
  print(f"# jax {jax.__version__}, {len(jax.devices())} x {dev.device_kind} "
        f"({dev.platform}), {os.cpu_count()} CPUs; images {args.height}x"
        f"{args.width}; medians of {args.repeats} after 1 warm-up; random "
        f"weights; peaks: {peaks}; total {time.perf_counter() - START:.0f} s")
  print(f"# {nms_line}")
  print(format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
