"""Benchmarks of ops/: NMS and RoIAlign/RoIPool against NumPy and torchvision.

  python -m bench.ops [--repeats 7]

Runs bench/ops_nms.py and bench/ops_roi_align.py (each also runs alone, with
more options) and prints both tables under this command line. torchvision
columns appear when torch/torchvision import (e.g. in a separate virtualenv
with `pip install torch==2.14.1 torchvision==0.29.1`), measured in the same
process. Medians of --repeats runs after a warm-up (compile) run.
"""

import argparse
import shlex
import sys

import jax

from bench import ops_nms
from bench import ops_roi_align


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  print("$ " + shlex.join([sys.executable, "-m", "bench.ops"]
                          + (sys.argv[1:] if argv is None else list(argv))))
  print(f"# jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s)")
  nms_parser = argparse.ArgumentParser()
  ops_nms.add_args(nms_parser)
  nms_args = nms_parser.parse_args([f"--repeats={args.repeats}"])
  print("\n## NMS (ms)\n")
  print(ops_nms.format_table(ops_nms.run(nms_args)))
  roi_args = ops_roi_align.parse_args([f"--repeats={args.repeats}"])
  print("\n## RoIAlign / RoIPool, 1024 x 38 x 63 features, 7 x 7 (ms)\n")
  print(ops_roi_align.format_table(ops_roi_align.run(roi_args)))


if __name__ == "__main__":
  main()
