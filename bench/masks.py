"""What canvas invariance costs: the detector with and without its masks.

  python -m bench.masks [--model r101] [--height 600 --width 1000]
                       [--canvas-height 608 --canvas-width 1200] [--repeats 5]

``model.canvas_masks`` zeroes every activation outside each image's extent
before the layers that read neighbours (3x3 convolutions, max pools) and
pools RoIs from the image's own feature map: detections then do not depend
on the canvas or the batch (tests/modeling/test_canvas.py). This measures
the R101-C4 (or R50-C4, tiny) train step and inference with and without the
masks, same weights, same inputs, in one process, timed in alternation so
that the machine's load affects both alike, and prints the table with the
ratio (the issue's budget: at most 5 % on CPU; on GPU/TPU the selects fuse
into the convolution epilogues).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

import numpy as np

from bench import step as step_bench
from bench import timing


def _programs(model_name, h, w, ch, cw, batch, masks):
  # pylint: disable=import-outside-toplevel
  import jax
  from flax import nnx
  from frcnn_jax import eval_lib
  from frcnn_jax import optimizer as optimizer_lib
  from frcnn_jax import parallel
  from frcnn_jax import train_lib
  from frcnn_jax.modeling import detector
  # pylint: enable=import-outside-toplevel
  c = step_bench.seed_config(model_name, ch, cw, batch)
  net = detector.build_detector(c, 21)
  if not masks:
    net = detector.FasterRCNN(
        dataclasses.replace(net.settings, canvas_masks=False), c.backbone,
        rngs=nnx.Rngs(c.seed))
  step_bench.zero_init_residual(net.backbone)
  image, boxes, classes = step_bench.make_inputs(ch, cw, batch)
  image[:, h:] = 0
  image[:, :, w:] = 0
  m = c.data.max_num_box
  gt = np.zeros((batch, m, 4), np.float32)
  gt[:, :boxes.shape[1]] = np.minimum(boxes, [w - 1, h - 1, w - 1, h - 1])
  cls = np.zeros((batch, m), np.int32)
  cls[:, :classes.shape[1]] = classes
  valid = np.zeros((batch, m), bool)
  valid[:, :boxes.shape[1]] = True
  im_info = np.tile(np.array([[h, w, 1.0]], np.float32), (batch, 1))
  mesh = parallel.create_mesh()
  tx, sched = optimizer_lib.make_optimizer(c.optimizer, 1000)
  graphdef, state = train_lib.create_train_state(net, tx, 0)
  state = jax.device_put(state, parallel.replicated(mesh))
  b = parallel.global_batch(dict(image=image, im_info=im_info, gt_boxes=gt,
                                 gt_classes=cls, gt_valid=valid), mesh)
  ids = parallel.global_batch({"i": np.arange(batch, dtype=np.int32)},
                              mesh)["i"]
  t = time.perf_counter()
  train = train_lib.jit_train_step(
      train_lib.make_train_step(graphdef, tx, sched), mesh).lower(
          state, b).compile()
  t_train = time.perf_counter() - t
  t = time.perf_counter()
  predict = eval_lib.make_predict_fn(graphdef, mesh).lower(
      state.params, state.rest, b["image"], b["im_info"], ids).compile()
  t_infer = time.perf_counter() - t
  holder = {"state": state}

  def run_train():
    holder["state"], metrics = train(holder["state"], b)
    jax.block_until_ready(metrics)

  def run_infer():
    s = holder["state"]
    jax.block_until_ready(predict(s.params, s.rest, b["image"],
                                  b["im_info"], ids))

  return dict(train=run_train, infer=run_infer, train_compile_s=t_train,
              infer_compile_s=t_infer)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="r101", choices=sorted(step_bench.MODELS))
  p.add_argument("--height", type=int, default=600)
  p.add_argument("--width", type=int, default=1000)
  p.add_argument("--canvas-height", type=int, default=608)
  p.add_argument("--canvas-width", type=int, default=1200)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  progs = {m: _programs(args.model, args.height, args.width,
                        args.canvas_height, args.canvas_width, args.batch, m)
           for m in (True, False)}
  times = {(m, k): [] for m in (True, False) for k in ("train", "infer")}
  for k in ("train", "infer"):
    for m in (True, False):
      progs[m][k]()                      # warm up
    for _ in range(args.repeats):
      for m in (True, False):            # alternate: load hits both alike
        times[(m, k)].append(timing.median_s(progs[m][k], 1, warmup=False))
  med = {key: float(np.median(v)) for key, v in times.items()}
  print("$ python -m bench.masks " + " ".join(shlex.quote(a) for a in (
      argv if argv is not None else sys.argv[1:])))
  print(f"{args.model}-C4, image {args.height}x{args.width} on canvas "
        f"{args.canvas_height}x{args.canvas_width}, batch {args.batch}, "
        f"median of {args.repeats} alternating runs")
  print("| | masks on | masks off | on / off |")
  print("|---|---|---|---|")
  for k, unit in (("train", "train step s"), ("infer", "inference s")):
    on, off = med[(True, k)], med[(False, k)]
    print(f"| {unit} | {on:.3f} | {off:.3f} | {on / off:.3f} |")
  for k in ("train", "infer"):
    on, off = progs[True][f"{k}_compile_s"], progs[False][f"{k}_compile_s"]
    print(f"| {k} compile s | {on:.1f} | {off:.1f} | {on / off:.2f} |")


if __name__ == "__main__":
  main()
