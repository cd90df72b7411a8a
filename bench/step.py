"""Train step and inference of whole detectors, ours vs torchvision's FasterRCNN.

  python -m bench.step [--models tiny,r50,r101] [--height 600 --width 1000]
                       [--batch 1] [--repeats 3] [--no-torch] [--profile]
                       [--no-train | --no-infer]

For each model: the compile time of the jitted train step and of inference,
the median train-step time, inference images/s, XLA's FLOP count (cost
analysis), the achieved GFLOP/s and MFU (achieved / this device's measured
dense-matmul rate, `timing.matmul_peak_gflops`), XLA's memory plan (arguments + temporaries)
and the process's peak RSS growth while the step runs. When torchvision imports,
the same numbers for `torchvision.models.detection.FasterRCNN` built with the
same C4 network (ResNet trunk to layer3 with frozen BatchNorm and frozen
conv1/layer1 as the backbone, layer4 + mean pooling as the box head, the same
anchors (3 sizes x 3 ratios), RoI counts (12000 -> 2000 proposals in training,
6000 -> 300 in test, 256 anchors, 128 RoIs per image), RoIAlign 7x7 with
adaptive sampling, the same image size and batch), measured in the same run,
and the ratios. Images are random (uint8 for ours, the same pixels as floats for
torchvision), with 5 random ground-truth boxes each; parameters are randomly
initialised (speed does not depend on them).

Every measurement runs in its own subprocess (`--isolate`, default) so the
peak-RSS numbers of one framework do not hide in memory freed by another;
timings do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench import timing

MODELS = {"tiny": "tiny_resnet", "r50": "resnet50", "r101": "resnet101",
          "r50_fpn": "resnet50"}
FPN_MODELS = ("r50_fpn",)   # torchvision's fasterrcnn_resnet50_fpn (v1)


def canvas_multiple(model: str) -> int:
  """Canvas sides are multiples of 32 for the FPN models (torchvision's
  padding; any ``*_fpn`` name, e.g. bench.accelerator's ``tiny_fpn``), 16
  for the C4 ones."""
  return 32 if model.endswith("_fpn") else 16


def canvas_for(model: str, h: int, w: int) -> tuple[int, int]:
  """The canvas ``model`` runs an ``h`` x ``w`` image on: the sides rounded
  up to :func:`canvas_multiple`."""
  k = canvas_multiple(model)
  return -(-h // k) * k, -(-w // k) * k


class PeakRSS:
  """Samples this process's RSS in a thread; `.peak - .base` in MiB."""

  def __init__(self, interval=0.01):
    import psutil  # pylint: disable=import-outside-toplevel
    self._proc = psutil.Process()
    self.base = self.peak = self._proc.memory_info().rss
    self._stop = threading.Event()
    self._interval = interval
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._proc.memory_info().rss)
      time.sleep(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  @property
  def mib(self):
    return (self.peak - self.base) / 2**20


def make_inputs(h, w, batch, num_gt=5, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
  xy = rng.uniform(0, [w * 0.7, h * 0.7], (batch, num_gt, 2))
  wh = rng.uniform(40, 250, (batch, num_gt, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])],
                         -1).astype(np.float32)
  classes = rng.integers(1, 21, (batch, num_gt)).astype(np.int32)
  return image, boxes, classes


def seed_config(model: str, h: int, w: int, batch: int, dtype="float32"):
  """Our config for a benchmark model at canvas (h, w) (multiples of 16)."""
  from configs import common  # pylint: disable=import-outside-toplevel
  from configs import coco_r50_fpn  # pylint: disable=import-outside-toplevel
  from configs import shapes  # pylint: disable=import-outside-toplevel
  if model in FPN_MODELS:
    c = coco_r50_fpn.get_config()
  else:
    c = shapes.get_config() if model == "tiny" else common.base_config(
        MODELS[model])
  c.data.buckets = ((h, w),)
  c.train.batch_size = batch
  c.model.dtype = dtype
  if model in FPN_MODELS:
    c.optimizer.lr = 0.02 / 16 * batch
  elif model != "tiny":
    c.optimizer.lr = 1e-3 * batch
  return c


def zero_init_residual(backbone) -> None:
  """Zero scale on the last norm of every residual block (as torchvision's
  ``zero_init_residual``), so random-weight activations stay bounded and
  both frameworks do the same, finite work."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from frcnn_jax.modeling import backbones  # pylint: disable=import-outside-toplevel
  for _, m in nnx.iter_modules(backbone):
    if isinstance(m, backbones.Bottleneck):
      m.bn3.scale[...] = 0 * m.bn3.scale[...]
    elif isinstance(m, backbones.BasicBlock):
      m.bn2.scale[...] = 0 * m.bn2.scale[...]


def _xla_gflop(compiled) -> float:
  """XLA's cost-analysis FLOP count of a compiled program, in GFLOP."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9


def _torch_gflop(fn) -> float:
  """torch's FlopCounterMode count of one ``fn()`` call, in GFLOP."""
  from torch.utils import flop_counter  # pylint: disable=import-outside-toplevel
  with flop_counter.FlopCounterMode(display=False) as counter:
    fn()
  return counter.get_total_flops() / 1e9


def train_setup(c, num_classes: int, mesh, canvas: tuple[int, int],
                size: tuple[int, int], batch: int):
  """What the step benchmarks start from (bench.step, bench.accelerator):
  the detector of config ``c`` (random weights, zero_init_residual), its
  optimizer and replicated train state, and a global batch of ``batch``
  images of ``size`` on ``canvas`` with padded ground truth.

  Returns:
    ``(graphdef, tx, schedule, state, batch dict)``.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  from frcnn_jax import optimizer as optimizer_lib
  from frcnn_jax import parallel
  from frcnn_jax import train_lib
  from frcnn_jax.modeling import detector
  # pylint: enable=import-outside-toplevel
  image, boxes, classes = make_inputs(*canvas, batch)
  m = c.data.max_num_box
  gt = np.zeros((batch, m, 4), np.float32)
  gt[:, :boxes.shape[1]] = boxes
  cls = np.zeros((batch, m), np.int32)
  cls[:, :classes.shape[1]] = np.minimum(classes, num_classes - 1)
  valid = np.zeros((batch, m), bool)
  valid[:, :boxes.shape[1]] = True
  im_info = np.tile(np.array([[size[0], size[1], 1.0]], np.float32),
                    (batch, 1))
  net = detector.build_detector(c, num_classes)
  zero_init_residual(net.backbone)
  tx, sched = optimizer_lib.make_optimizer(c.optimizer, 1000)
  graphdef, state = train_lib.create_train_state(net, tx, 0)
  del net
  state = jax.device_put(state, parallel.replicated(mesh))
  batch_d = parallel.global_batch(
      dict(image=image, im_info=im_info, gt_boxes=gt, gt_classes=cls,
           gt_valid=valid), mesh)
  return graphdef, tx, sched, state, batch_d


def _ours_setup(model: str, h: int, w: int, batch: int, dtype: str):
  """``(mesh, train_setup's tuple, "HcxWc")``: our detector for ``model`` on
  the canvas ``h`` x ``w`` rounds up to, over every device."""
  from frcnn_jax import parallel  # pylint: disable=import-outside-toplevel
  hp, wp = canvas_for(model, h, w)
  c = seed_config(model, hp, wp, batch, dtype)
  mesh = parallel.create_mesh()
  setup = train_setup(c, 91 if model in FPN_MODELS else 21, mesh, (hp, wp),
                      (h, w), batch)
  return mesh, setup, f"{hp}x{wp}"


def _ours_train_runner(graphdef, tx, sched, state, batch_d, mesh, out: dict):
  """Compiles our train step; ``(run_step, holder)``: ``run_step()`` runs
  one step (blocking), ``holder["state"]`` is the latest state. Writes the
  compile time, XLA's FLOP count and memory plan into ``out``."""
  import jax  # pylint: disable=import-outside-toplevel
  from frcnn_jax import train_lib  # pylint: disable=import-outside-toplevel
  step = train_lib.jit_train_step(
      train_lib.make_train_step(graphdef, tx, sched), mesh)
  t = time.perf_counter()
  compiled = step.lower(state, batch_d).compile()
  out["train_compile_s"] = time.perf_counter() - t
  out["train_gflop"] = _xla_gflop(compiled)
  mem = compiled.memory_analysis()
  if mem is not None:
    out["train_xla_mib"] = (mem.argument_size_in_bytes +
                            mem.temp_size_in_bytes) / 2**20
  holder = {"state": state}

  def run_step():
    holder["state"], metrics = compiled(holder["state"], batch_d)
    jax.block_until_ready(metrics)

  return run_step, holder


def measure_ours(model: str, h: int, w: int, batch: int, repeats: int,
                 do_train: bool = True, do_infer: bool = True,
                 dtype: str = "float32", profile: bool = False) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from frcnn_jax import eval_lib  # pylint: disable=import-outside-toplevel
  from frcnn_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh, (graphdef, tx, sched, state, batch_d), canvas = _ours_setup(
      model, h, w, batch, dtype)
  out = {"framework": "ours (jax)", "model": model, "image": f"{h}x{w}",
         "canvas": canvas, "batch": batch, "dtype": dtype}
  if do_train:
    run_step, holder = _ours_train_runner(graphdef, tx, sched, state, batch_d,
                                          mesh, out)
    with PeakRSS() as rss:
      out["train_step_s"] = timing.median_s(run_step, repeats)
    out["train_rss_mib"] = rss.mib
    out["train_gflops"] = out["train_gflop"] / out["train_step_s"]
    if profile:
      out["train_profile"] = timing.profile_top(run_step)
    state = holder["state"]
  if do_infer:
    predict = eval_lib.make_predict_fn(graphdef, mesh)
    ids = parallel.global_batch({"i": np.arange(batch, dtype=np.int32)},
                                 mesh)["i"]
    t = time.perf_counter()
    compiled_p = predict.lower(state.params, state.rest, batch_d["image"],
                               batch_d["im_info"], ids).compile()
    out["infer_compile_s"] = time.perf_counter() - t
    out["infer_gflop"] = _xla_gflop(compiled_p)

    def run_predict():
      jax.block_until_ready(compiled_p(state.params, state.rest,
                                       batch_d["image"], batch_d["im_info"],
                                       ids))

    with PeakRSS() as rss:
      s = timing.median_s(run_predict, repeats)
    out["infer_rss_mib"] = rss.mib
    out["infer_images_per_s"] = batch / s
    out["infer_gflops"] = out["infer_gflop"] * out["infer_images_per_s"] / batch
    if profile:
      out["infer_profile"] = timing.profile_top(run_predict)
  out["matmul_peak_gflops"] = timing.matmul_peak_gflops(dtype=dtype)
  for k in ("train", "infer"):
    if f"{k}_gflops" in out:
      out[f"{k}_mfu"] = out[f"{k}_gflops"] / out["matmul_peak_gflops"]
  return out


def build_torchvision_fpn(num_classes: int = 91):
  """torchvision's fasterrcnn_resnet50_fpn as it is built for training from
  ImageNet weights (FrozenBatchNorm2d, trainable_layers=3), random weights,
  zero_init_residual (bounded activations, as ours)."""
  # pylint: disable=import-outside-toplevel
  import torchvision
  from torchvision.models.detection import FasterRCNN
  from torchvision.models.detection import backbone_utils
  from torchvision.ops import misc
  # pylint: enable=import-outside-toplevel
  r = torchvision.models.resnet50(weights=None, norm_layer=misc.FrozenBatchNorm2d,
                                  zero_init_residual=True)
  backbone = backbone_utils._resnet_fpn_extractor(r, 3)  # pylint: disable=protected-access
  return FasterRCNN(backbone, num_classes=num_classes)


def build_torchvision(model: str, num_classes: int = 21):
  """torchvision FasterRCNN with the seed's C4 network and settings (or its
  own fasterrcnn_resnet50_fpn for the FPN model)."""
  if model in FPN_MODELS:
    return build_torchvision_fpn()
  # pylint: disable=import-outside-toplevel
  import torch
  import torchvision
  from torchvision.models.detection import FasterRCNN
  from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
  from torchvision.models.detection.rpn import AnchorGenerator
  from torchvision.ops import MultiScaleRoIAlign
  from torchvision.ops import misc
  # pylint: enable=import-outside-toplevel
  # zero_init_residual keeps random-weight activations bounded: without it a
  # random ResNet-101 explodes, every proposal degenerates, torchvision drops
  # them all and its box head does no work at all (an unfair comparison).
  r = getattr(torchvision.models, MODELS[model])(
      weights=None, norm_layer=misc.FrozenBatchNorm2d, zero_init_residual=True)
  trunk = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1,
                              r.layer2, r.layer3)
  trunk.out_channels = 1024
  for p in list(r.conv1.parameters()) + list(r.layer1.parameters()):
    p.requires_grad_(False)   # FIXED_BLOCKS = 1

  class Head(torch.nn.Module):

    def __init__(self, layer4):
      super().__init__()
      self.layer4 = layer4

    def forward(self, x):
      return self.layer4(x).mean((2, 3))

  return FasterRCNN(
      trunk, num_classes=None,
      rpn_anchor_generator=AnchorGenerator(((128, 256, 512),),
                                           ((0.5, 1.0, 2.0),)),
      box_roi_pool=MultiScaleRoIAlign(["0"], 7, sampling_ratio=0),
      box_head=Head(r.layer4),
      box_predictor=FastRCNNPredictor(2048, num_classes),
      rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,
      rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=300,
      rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
      rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
      box_score_thresh=0.0, box_nms_thresh=0.3, box_detections_per_img=100,
      box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
      box_batch_size_per_image=128, box_positive_fraction=0.25)


def _torchvision_setup(model: str, h: int, w: int, batch: int):
  """``(net, images, train_step)``: torchvision's detector for ``model``
  (no resizing: the images already have the size under test), the same
  images as ours, and a function running one SGD step in train mode."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  net = build_torchvision(model)
  net.transform.min_size = (min(h, w),)
  net.transform.max_size = max(h, w)
  image, boxes, classes = make_inputs(h, w, batch)
  images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0
            for im in image]
  targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(
      c.astype(np.int64))} for b, c in zip(boxes, classes)]
  opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad],
                        lr=1e-3, momentum=0.9, weight_decay=1e-4)

  def train_step():
    net.train()
    losses = net(images, targets)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()

  return net, images, train_step


def measure_torchvision(model: str, h: int, w: int, batch: int,
                        repeats: int, do_train: bool = True,
                        do_infer: bool = True) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  net, images, run_step = _torchvision_setup(model, h, w, batch)
  out = {"framework": "torchvision", "model": model, "image": f"{h}x{w}",
         "canvas": "pad to 32", "batch": batch, "dtype": "float32"}
  if do_train:
    with PeakRSS() as rss:
      out["train_step_s"] = timing.median_s(run_step, repeats)
    out["train_rss_mib"] = rss.mib
    out["train_gflop"] = _torch_gflop(run_step)
    out["train_gflops"] = out["train_gflop"] / out["train_step_s"]
  if not do_infer:
    return out
  net.eval()

  def run_predict():
    with torch.no_grad():
      net(images)

  with PeakRSS() as rss:
    s = timing.median_s(run_predict, repeats)
  out["infer_rss_mib"] = rss.mib
  out["infer_images_per_s"] = batch / s
  out["infer_gflop"] = _torch_gflop(run_predict)
  out["infer_gflops"] = out["infer_gflop"] * out["infer_images_per_s"] / batch
  return out


def train_worker(framework: str, model: str, h: int, w: int,
                 batch: int) -> None:
  """A child of :func:`interleaved_train`: sets up one framework's train
  step, runs it once (compilation, warm-up), prints ``READY``, then for
  every ``step`` line on stdin runs one step and prints ``TIME <seconds>``;
  stops at end of input."""
  if framework == "ours":
    mesh, setup, _ = _ours_setup(model, h, w, batch, "float32")
    run, _ = _ours_train_runner(*setup, mesh, {})
  else:
    _, _, run = _torchvision_setup(model, h, w, batch)
  run()
  print("READY", flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    t = time.perf_counter()
    run()
    print(f"TIME {time.perf_counter() - t!r}", flush=True)


class _Worker:
  """A :func:`train_worker` child process."""

  def __init__(self, framework: str, **kwargs):
    self._err = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        _child(f"step.train_worker({framework!r}, **{kwargs!r})"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._err, text=True)
    self._expect("READY")

  def _expect(self, word: str) -> str:
    for line in self._proc.stdout:
      if line.startswith(word):
        return line[len(word):].strip()
    self._err.seek(0)
    raise RuntimeError(f"train worker died:\n{self._err.read()[-4000:]}")

  def step(self) -> float:
    self._proc.stdin.write("step\n")
    self._proc.stdin.flush()
    return float(self._expect("TIME"))

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait()
    self._err.close()


def interleaved_train(model: str, h: int, w: int, batch: int,
                      rounds: int) -> dict:
  """Our train step and torchvision's, taken alternately.

  Each framework lives in a process of its own (no shared thread pools),
  set up and warmed up once; then ``rounds`` rounds each run one step of
  each, ours first in even rounds and torchvision first in odd ones, while
  the other process waits. A shared VM's speed drifts by ~10% within
  minutes; steps taken side by side see the same drift, so the median of
  the per-round ratios is the comparison to trust when the two are close
  (timings only).

  Returns:
    ``{"ours_s": [...], "torchvision_s": [...], "ratios": [...],
    "ratio": median ratio, "ours_step_s": median, "torchvision_step_s":
    median}``.
  """
  kwargs = dict(model=model, h=h, w=w, batch=batch)
  workers = {}
  try:
    workers["ours"] = _Worker("ours", **kwargs)
    workers["tv"] = _Worker("torchvision", **kwargs)
    times = {"ours": [], "tv": []}
    for r in range(rounds):
      order = ("ours", "tv") if r % 2 == 0 else ("tv", "ours")
      for name in order:
        times[name].append(workers[name].step())
  finally:
    for wk in workers.values():
      wk.close()
  ratios = [a / b for a, b in zip(times["ours"], times["tv"])]
  return {"ours_s": times["ours"], "torchvision_s": times["tv"],
          "ratios": ratios, "ratio": float(np.median(ratios)),
          "ours_step_s": float(np.median(times["ours"])),
          "torchvision_step_s": float(np.median(times["tv"]))}


def _child(call: str) -> list[str]:
  """The command line of a Python child that imports this module (from
  the current directory) as ``step`` and runs ``call``."""
  return [sys.executable, "-c",
          f"import json, sys; sys.path.insert(0, {os.getcwd()!r}); "
          f"from bench import step; {call}"]


def _in_subprocess(kind, kwargs):
  proc = subprocess.run(
      _child(f"print('RESULT ' + json.dumps(step.{kind}(**{kwargs!r})))"),
      capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  raise RuntimeError(f"{kind}{kwargs} failed:\n{proc.stderr[-4000:]}")


def torchvision_available() -> bool:
  try:
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
    return True
  except ImportError:
    return False


def run(args) -> list[dict]:
  rows = []
  for model in args.models:
    kw = dict(model=model, h=args.height, w=args.width, batch=args.batch,
              repeats=args.repeats, do_train=args.train,
              do_infer=args.infer)
    kw_ours = dict(kw, dtype=args.dtype, profile=args.profile)
    ours = (_in_subprocess("measure_ours", kw_ours) if args.isolate
            else measure_ours(**kw_ours))
    rows.append(ours)
    if args.torch and model != "tiny":
      tv = (_in_subprocess("measure_torchvision", kw) if args.isolate
            else measure_torchvision(**kw))
      rows.append(tv)
      ratio = {"framework": "ours / torchvision", "model": model}
      for k in ("train_step_s", "infer_images_per_s", "train_gflop",
                "infer_gflop", "train_rss_mib", "infer_rss_mib"):
        # RSS growth under ~16 MiB is noise (memory reused from warm-up).
        floor = 16.0 if k.endswith("rss_mib") else 0.0
        if ours.get(k) and tv.get(k) and tv[k] > floor:
          ratio[k] = ours[k] / tv[k]
      rows.append(ratio)
  return rows


COLUMNS = [
    ("framework", "framework", "s"), ("model", "model", "s"),
    ("image", "image", "s"), ("batch", "B", "s"), ("dtype", "dtype", "s"),
    ("train_step_s", "train step s", ".2f"),
    ("infer_images_per_s", "infer img/s", ".2f"),
    ("train_compile_s", "compile train s", ".1f"),
    ("infer_compile_s", "compile infer s", ".1f"),
    ("train_gflop", "train GFLOP", ".0f"),
    ("train_gflops", "train GFLOP/s", ".1f"),
    ("infer_gflop", "infer GFLOP", ".0f"),
    ("infer_gflops", "infer GFLOP/s", ".1f"),
    ("matmul_peak_gflops", "matmul peak GFLOP/s", ".0f"),
    ("train_mfu", "train MFU", ".2f"),
    ("infer_mfu", "infer MFU", ".2f"),
    ("train_xla_mib", "XLA plan MiB", ".0f"),
    ("train_rss_mib", "train RSS+ MiB", ".2f"),
    ("infer_rss_mib", "infer RSS+ MiB", ".2f"),
]


def format_table(rows, columns=COLUMNS) -> str:
  """Markdown table of `run` rows; `columns` are (key, title, format)."""
  lines = ["| " + " | ".join(c[1] for c in columns) + " |",
           "|" + "---|" * len(columns)]
  for r in rows:
    cells = []
    is_ratio = r["framework"].startswith("ours /")
    for key, _, fmt in columns:
      v = r.get(key)
      if is_ratio and fmt != "s":
        fmt = ".2f"  # Ratios, whatever the column's unit.
      cells.append("" if v is None else (format(v, fmt) if fmt != "s"
                                         else str(v)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="tiny,r50,r101",
                 type=lambda s: s.split(","),
                 help="comma-separated: tiny, r50, r101 (C4), r50_fpn")
  p.add_argument("--height", type=int, default=600)
  p.add_argument("--width", type=int, default=1000)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32",
                                                        "bfloat16"])
  p.add_argument("--train", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--infer", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction,
                 default=None, help="default: when torchvision imports")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--profile", action="store_true",
                 help="also trace one train step and one inference call of "
                 "ours with the JAX profiler and print the op kinds that "
                 "took longest")
  args = p.parse_args(argv)
  if args.torch is None:
    args.torch = torchvision_available()
  return args


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  import jax  # pylint: disable=import-outside-toplevel
  print("$ " + shlex.join([sys.executable, "-m", "bench.step"] +
                          (sys.argv[1:] if argv is None else list(argv))))
  print(f"# jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({os.cpu_count()} CPUs); medians of {args.repeats} after a warm-up")
  print(format_table(rows))
  for r in rows:
    for key in ("train_profile", "infer_profile"):
      if r.get(key):
        print(f"\n{r['model']} {key.split('_')[0]}: where the time goes "
              f"(one call, JAX profiler)")
        print(format_profile(r[key]))


def format_profile(rows) -> str:
  total = sum(ms for _, ms, _ in rows) or 1.0
  lines = ["| XLA op kind | ms | calls | share of listed |", "|---|---|---|---|"]
  lines += [f"| {k} | {ms:.0f} | {n} | {ms / total:.0%} |" for k, ms, n in rows]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
