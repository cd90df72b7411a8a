"""Command line: ``python -m frcnn_jax.weights inspect|convert``.

    python -m frcnn_jax.weights inspect --from=some.pth
    python -m frcnn_jax.weights convert --from=resnet101_caffe.pth \\
        --kind=caffe_resnet101 --out=/path/r101_caffe
    python -m frcnn_jax.weights convert --from=faster_rcnn_1_7_10021.pth \\
        --kind=faster_rcnn_pytorch_res101 --classes=voc --out=/path/frcnn_r101
    python -m frcnn_jax.weights convert \
        --from=fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \
        --kind=torchvision_fasterrcnn_resnet50_fpn --out=/path/tv_r50_fpn

The one place of the weights package that reads ``configs/`` (to say which
config and overrides evaluate a converted detector).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from configs import coco_common
from configs import pascal_voc
from frcnn_jax import checkpoints
from frcnn_jax.weights import torch_io
from frcnn_jax.weights.compat import config_mismatches
from frcnn_jax.weights.compat import override_flag
from frcnn_jax.weights.convert import convert_file
from frcnn_jax.weights.identify import guess_kind
from frcnn_jax.weights.identify import guess_network
from frcnn_jax.weights.kinds import ALL_KINDS
from frcnn_jax.weights.kinds import DETECTOR_KINDS
from frcnn_jax.weights.kinds import TORCHVISION_DETECTOR_KINDS

_SHORT = {"resnet50": "res50", "resnet101": "res101", "resnet152": "res152",
          "vgg16": "vgg16"}


def evaluate_command(out: str, classes: str) -> str | None:
  """The eval.py command (config + overrides) for a converted detector."""
  ckpt = checkpoints.checkpoint_location(out)
  steps = checkpoints.checkpoint_steps(ckpt)
  if not steps:
    return None
  meta = checkpoints.read_step_meta(ckpt, steps[-1])
  tv = TORCHVISION_DETECTOR_KINDS.get(meta.get("kind", ""))
  if tv is not None:
    path = ("configs/coco_r50_fpn_v2.py" if tv.variant == "v2" else
            "configs/coco_r50_fpn.py")
    line = f"  evaluate: python eval.py --config={path} --workdir={out}"
    if meta.get("num_classes") != 91:
      line += " (with your dataset's data.* settings)"
    return line
  kind = DETECTOR_KINDS.get(meta.get("kind", ""))
  if kind is None:
    return None
  coco = classes.strip().lower() == "coco"
  cfg = (coco_common.coco_config(kind.backbone) if coco else
         pascal_voc.voc_config(kind.backbone, years="2007"))
  path = f"configs/{'coco' if coco else 'voc07'}_{_SHORT[kind.backbone]}.py"
  bad = config_mismatches(cfg, meta.get("implied_config", {}))
  return (f"  evaluate: python eval.py --config={path} --workdir={out}" +
          "".join(f" {override_flag(k, w)}" for k, _, w in bad))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m frcnn_jax.weights",
      description="Convert pretrained PyTorch weights for frcnn_jax.")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert a .pth file")
  conv.add_argument("--from", dest="src", required=True, help=".pth file")
  conv.add_argument("--kind", default="", choices=("",) + ALL_KINDS,
                    help="kind of weights ('' = read from the keys when they "
                    "identify it)")
  conv.add_argument("--out", required=True, help="output directory")
  conv.add_argument("--classes", default="",
                    help="detectors: voc | coco | name1,name2,... (background "
                    "first or implied); torchvision detectors: coco91 (the "
                    "default for 91 slots) or a list in slot order")
  insp = sub.add_parser("inspect", help="describe a .pth file")
  insp.add_argument("--from", dest="src", required=True, help=".pth file")
  args = parser.parse_args(argv)
  if args.command == "convert":
    print(convert_file(args.src, args.kind, args.out, args.classes))
    if os.path.isdir(os.path.join(args.out, checkpoints.CHECKPOINTS)):
      line = evaluate_command(args.out, args.classes)
      if line:
        print(line)
  else:
    sd, extras = torch_io.read_torch_checkpoint(args.src)
    kind, cands = guess_kind(sd)
    print(f"{args.src}: {len(sd)} arrays; looks like {guess_network(sd)}")
    print(f"  kind: {kind or 'ambiguous, one of ' + str(cands or list(ALL_KINDS))}")
    if extras:
      print(f"  entries: {extras}")
  return 0


def run():
  """The console script ``frcnn-weights``."""
  sys.exit(main())


if __name__ == "__main__":
  run()
