"""Ours vs torchvision's FasterRCNN with the same network: the verdict table.

  python -m bench.compare [--models r101] [--height 600 --width 1000]
                          [--batch 1] [--repeats 3] [--no-isolate]
  python -m bench.compare --models r50_fpn     # 800 x 1333, batch 1 and 2
  python -m bench.compare --models r50_fpn --interleave 6   # + side by side

``r50_fpn`` is torchvision's own ``fasterrcnn_resnet50_fpn`` (built as for
training from ImageNet weights: FrozenBatchNorm2d, trainable_layers=3,
random weights with zero_init_residual) against ours with
``configs/coco_r50_fpn.py`` at the same size (its defaults: 800 x 1333,
batches 1 and 2; issue 16's targets: train step <= 1.0x, inference >=
1.2x torchvision's images/s). The detection-ops table is for the C4 sizes
and is left out when only FPN models are measured.

Needs torch, torchvision and psutil (`pip install torch==2.14.1
torchvision==0.29.1 psutil`, see bench/README.md). Two parts, measured in the same
run on the same machine:

1. The detector (bench/step.py does the measuring): our jitted train step and
   inference against `torchvision.models.detection.FasterRCNN` built with the
   same ResNet C4 network, anchors, RoI counts, RoIAlign and image size, both
   with random weights (zero_init_residual on both sides). Columns: train
   step s, inference images/s, peak memory (RSS growth of the process while
   the step runs), compile s, and ours / torchvision.
2. The detection ops at the detector's sizes: RPN NMS (12000 -> 2000 in
   training, 6000 -> 300 in test), per-class NMS of the detections, RoIAlign
   (128 RoIs forward + backward as in training, 300 forward as in test) on a
   1024 x 38 x 63 feature map; ours vs torchvision.ops.

Targets (issue 7): train step <= 1.0x torchvision's time, inference >= 1.4x
its images/s, detection ops <= 0.5x its time; the last column says whether
each is met. By default each detector measurement runs in a child process
(`--isolate`), training and inference each in a process of their own: in one
process the peak RSS of a later measurement hides in memory an earlier one
freed. `--no-isolate` runs everything in this process (timings agree; the
memory columns then understate).

`--interleave ROUNDS` adds, per model and batch, a ratio row from both train
steps taken alternately, each framework in a process of its own
(`step.interleaved_train`): the shared VM's speed drifts by ~10% within
minutes, more than the difference being measured when the two are close;
steps taken side by side see the same drift.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from bench import ops_nms
from bench import ops_roi_align
from bench import step

TRAIN_TARGET = 1.0      # ours / torchvision train-step time, at most
INFER_TARGET = 1.4      # ours / torchvision images/s, at least (C4, issue 7)
INFER_TARGETS = {"r50_fpn": 1.2}   # issue 16
OPS_TARGET = 0.5        # ours / torchvision op time, at most


def _verdict(ok: bool | None) -> str:
  return "-" if ok is None else ("met" if ok else "NOT met")


def detector_rows(args) -> list[dict]:
  """One row per (model, framework, batch) and a ratio row per model; with
  ``--interleave``, one more ratio row from the side-by-side train steps."""
  rows = []
  for batch in args.batch:
    rows += _detector_rows(args, batch)
    if args.interleave:
      rows += [_interleaved_row(args, m, batch) for m in args.models]
  return rows


def _interleaved_row(args, model: str, batch: int) -> dict:
  kwargs = dict(model=model, h=args.height, w=args.width, batch=batch,
                rounds=args.interleave)
  r = step.interleaved_train(**kwargs)
  return {"framework": f"ours / torchvision, side by side "
                       f"({args.interleave} rounds)",
          "model": model, "batch": batch, "train_step_s": r["ratio"],
          "detail": (f"medians {r['ours_step_s']:.2f} / "
                     f"{r['torchvision_step_s']:.2f} s; ratios "
                     + " ".join(f"{x:.2f}" for x in r["ratios"]))}


def _detector_rows(args, batch: int) -> list[dict]:
  step_args = argparse.Namespace(
      models=args.models, height=args.height, width=args.width,
      batch=batch, repeats=args.repeats, train=True, infer=True,
      torch=True, isolate=args.isolate, dtype="float32", profile=False)
  if not args.isolate:
    return step.run(step_args)
  # Inference in fresh processes that never ran a train step: its peak memory
  # would otherwise hide in what the train step freed.
  rows = step.run(argparse.Namespace(**dict(vars(step_args), infer=False)))
  infer_rows = step.run(argparse.Namespace(**dict(vars(step_args),
                                                  train=False)))
  for r, i in zip(rows, infer_rows):
    r.update((k, v) for k, v in i.items() if k.startswith("infer_"))
  return rows


COLUMNS = [("framework", "framework", "s"), ("model", "model", "s"),
           ("batch", "B", "s"),
           ("train_step_s", "train step s", ".2f"),
           ("infer_images_per_s", "infer img/s", ".3f"),
           ("train_rss_mib", "train peak MiB", ".0f"),
           ("infer_rss_mib", "infer peak MiB", ".0f"),
           ("train_compile_s", "compile train s", ".1f"),
           ("infer_compile_s", "compile infer s", ".1f"),
           ("target", "target", "s")]


def format_detector(rows: list[dict]) -> str:
  """`step.format_table` with the verdict on each ratio row."""
  marked = []
  for r in rows:
    if r["framework"].startswith("ours /"):
      train, infer = r.get("train_step_s"), r.get("infer_images_per_s")
      goal = INFER_TARGETS.get(r["model"], INFER_TARGET)
      target = (f"train <= {TRAIN_TARGET}x: "
                f"{_verdict(None if train is None else train <= TRAIN_TARGET)}")
      if infer is not None:
        target += f"; infer >= {goal}x: {_verdict(infer >= goal)}"
      if r.get("detail"):
        target += f" ({r['detail']})"
      r = dict(r, target=target)
    marked.append(r)
  return step.format_table(marked, COLUMNS)


def ops_rows(repeats: int) -> list[dict]:
  """Detection ops at the detector's sizes: (op, ours ms, torchvision ms)."""
  rows = []
  nms_args = argparse.Namespace(repeats=repeats, seed=0, full=False)
  for r in ops_nms.run(nms_args):
    rows.append(dict(op=r["case"], ours_ms=r["ours_ms"],
                     torchvision_ms=r["torchvision_ms"]))
  for n, fwdbwd in ((128, True), (300, False)):
    roi_args = ops_roi_align.parse_args(
        [f"--rois={n}", "--sampling-ratios=0", f"--repeats={repeats}",
         "--ref-rois=0"])
    for r in ops_roi_align.run(roi_args):
      if r["op"] != "roi_align":
        continue
      what = "fwd+bwd (train)" if fwdbwd else "fwd (test)"
      key = "fwdbwd" if fwdbwd else "fwd"
      rows.append(dict(op=f"roi_align sr=0 {n} RoIs {what}",
                       ours_ms=r[f"ours_{key}_ms"],
                       torchvision_ms=r[f"torchvision_{key}_ms"]))
  for r in rows:
    tv = r["torchvision_ms"]
    r["ratio"] = None if not tv else r["ours_ms"] / tv
  return rows


def format_ops(rows: list[dict]) -> str:
  lines = ["| op | ours ms | torchvision ms | ours / torchvision | "
           f"target <= {OPS_TARGET}x |", "|---|---|---|---|---|"]
  for r in rows:
    ratio = r["ratio"]
    lines.append(
        f"| {r['op']} | {r['ours_ms']:.2f} | "
        f"{'-' if r['torchvision_ms'] is None else format(r['torchvision_ms'], '.2f')}"
        f" | {'-' if ratio is None else format(ratio, '.3f')} | "
        f"{_verdict(None if ratio is None else ratio <= OPS_TARGET)} |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="r101", type=lambda s: s.split(","),
                 help="comma-separated: r50, r101 (C4), r50_fpn")
  p.add_argument("--height", type=int, default=None,
                 help="default 600 (C4) or 800 (r50_fpn only)")
  p.add_argument("--width", type=int, default=None,
                 help="default 1000 (C4) or 1333 (r50_fpn only)")
  p.add_argument("--batch", default=None,
                 type=lambda s: [int(b) for b in s.split(",")],
                 help="comma-separated batch sizes; default 1 (C4) or 1,2 "
                 "(r50_fpn only)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--ops-repeats", type=int, default=7)
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                 help="also take both train steps alternately (each in its "
                 "own process) for ROUNDS rounds and report the median of "
                 "the per-round ratios (robust to the machine's drift)")
  p.add_argument("--ops", action=argparse.BooleanOptionalAction,
                 default=None, help="also the detection-ops table (default: "
                 "when a C4 model is measured)")
  args = p.parse_args(argv)
  fpn_only = all(m in step.FPN_MODELS for m in args.models)
  if args.height is None:
    args.height = 800 if fpn_only else 600
  if args.width is None:
    args.width = 1333 if fpn_only else 1000
  if args.batch is None:
    args.batch = [1, 2] if fpn_only else [1]
  if args.ops is None:
    args.ops = not fpn_only
  return args


def main(argv=None):
  args = parse_args(argv)
  if not step.torchvision_available():
    sys.exit("bench.compare needs torch and torchvision in this environment: "
             "see bench/README.md (pip install torch==2.14.1 "
             "torchvision==0.29.1 psutil)")
  bad = [m for m in args.models if m not in ("r50", "r101", "r50_fpn")]
  if bad:
    sys.exit(f"--models: unknown {bad}; choose from r50, r101, r50_fpn")
  det = detector_rows(args)
  ops = ops_rows(args.ops_repeats) if args.ops else []
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from frcnn_jax import compiler_options  # pylint: disable=import-outside-toplevel
  print("$ " + shlex.join([sys.executable, "-m", "bench.compare"] +
                          (sys.argv[1:] if argv is None else list(argv))))
  print(f"# jax {jax.__version__} / torch {torch.__version__} on "
        f"{jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"{args.height}x{args.width}, batch {args.batch}; medians of "
        f"{args.repeats} after a warm-up; detector compiler options "
        f"{compiler_options.detector_options()}")
  what = ("Faster R-CNN R50-FPN, torchvision's fasterrcnn_resnet50_fpn vs "
          "configs/coco_r50_fpn.py" if all(m in step.FPN_MODELS
                                           for m in args.models) else
          "Faster R-CNN C4")
  print(f"\n## Detector ({what}, random weights)\n")
  print(format_detector(det))
  if ops:
    print(f"\n## Detection ops (medians of {args.ops_repeats})\n")
    print(format_ops(ops))


if __name__ == "__main__":
  main()
