"""The programs a GPU / TPU would run, lowered here on a CPU host.

The jitted train step (``train_lib.jit_train_step``) and predict
(``eval_lib.make_predict_fn``) of the COCO R50-C4 detector in bfloat16, with
the Pallas RPN NMS (``model.nms_impl='pallas'``), traced ONCE from abstract
inputs (``jax.ShapeDtypeStruct``, ``nnx.eval_shape``: nothing big is
allocated) and lowered with ``lowering_platforms=('cuda',)`` and
``('tpu',)``. Each lowered module must

* hold the Pallas NMS kernel compiled for that platform (a Triton custom
  call on ``cuda``, a Mosaic ``tpu_custom_call`` on ``tpu``), one per mask
  block of the NMS, and no other custom call. A host callback
  (``pure_callback``, ``debug.callback``, ``io_callback``) cannot even be
  lowered for a platform the host lacks, so it fails the lowering itself;
* hold no Pallas kernel in interpret mode (the grid loop that interpret mode
  lowers to, under the kernel's name);
* run its convolutions in bfloat16;
* lower in under 60 s.

The same traced program lowered for ``cpu`` gets the kernel in interpret mode:
the platform is chosen when lowering, not from this host's default backend
(``ops.pallas_nms``). The checks themselves are tested on programs that break
them (a callback, an interpreted kernel, a missing kernel).

Not covered: compilation by XLA:GPU / Triton / Mosaic and execution, which
need the devices (``python -m bench.accelerator``).
"""

from __future__ import annotations

import functools
import re
import time

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import coco_common
from configs import tiny_fpn
from frcnn_jax import eval_lib
from frcnn_jax import optimizer as optimizer_lib
from frcnn_jax import parallel
from frcnn_jax import train_lib
from frcnn_jax.modeling import detector
from ops import pallas_nms

CANVAS = (608, 1008)  # A COCO bucket (configs/coco_common.py).
BATCH = 2  # Images per device: exercises the vmapped per-image stages.
KERNEL_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
MAX_LOWER_S = 60.0


def _config(nms_impl: str = "pallas"):
  c = coco_common.coco_config("resnet50")
  c.model.dtype = "bfloat16"
  c.model.nms_impl = nms_impl
  c.data.buckets = (CANVAS,)
  c.train.batch_size = BATCH
  return c


def abstract_programs(c, num_classes: int = 81, canvas=CANVAS) -> dict:
  """Traced train step and predict of config ``c``, from abstract inputs.

  Returns ``{'train': Traced, 'predict': Traced}`` (``jax.stages.Traced``,
  ready for ``.lower(lowering_platforms=...)``).
  """
  tx, schedule = optimizer_lib.make_optimizer(c.optimizer, 1000)
  model = nnx.eval_shape(lambda: detector.build_detector(c, num_classes))
  graphdef, _, _ = detector.split_model(model)
  state = jax.eval_shape(lambda: train_lib.create_train_state(
      detector.build_detector(c, num_classes), tx, 0)[1])
  b, (h, w), m = BATCH, canvas, c.data.max_num_box
  sds = jax.ShapeDtypeStruct
  batch = dict(image=sds((b, h, w, 3), jnp.uint8),
               im_info=sds((b, 3), jnp.float32),
               gt_boxes=sds((b, m, 4), jnp.float32),
               gt_classes=sds((b, m), jnp.int32),
               gt_valid=sds((b, m), jnp.bool_))
  mesh = parallel.create_mesh(1)
  step = train_lib.jit_train_step(
      train_lib.make_train_step(graphdef, tx, schedule), mesh)
  predict = eval_lib.make_predict_fn(graphdef, mesh)
  return {
      "train": step.trace(state, batch),
      "predict": predict.trace(state.params, state.rest, batch["image"],
                               batch["im_info"], sds((b,), jnp.int32)),
  }


def pallas_kernel_names(jaxpr) -> set[str]:
  """Names of every ``pallas_call`` in a (closed) jaxpr, nested ones too."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  out = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      out.add(str(eqn.params["name"]))
    for sub in jex_core.jaxprs_in_params(eqn.params):
      out |= pallas_kernel_names(sub)
  return out


def device_program_problems(text: str, platform: str,
                            kernels: set[str]) -> list[str]:
  """What keeps a lowered module from being the program a device runs.

  Args:
    text: ``Lowered.as_text(debug_info=True)`` (locations name the ops).
    platform: ``'cuda'`` or ``'tpu'``.
    kernels: names of the Pallas kernels of the traced program.

  Returns:
    Human-readable problems; empty when the module is clean.
  """
  problems = []
  calls = re.findall(r"custom_call @([\w$.]+)", text)
  others = sorted(set(calls) - {KERNEL_CALL[platform]})
  if others:
    problems.append(f"custom calls other than the {platform} kernels "
                    f"(host callbacks?): {others}")
  if KERNEL_CALL[platform] not in calls:
    problems.append(f"no {KERNEL_CALL[platform]}: the Pallas kernel is not "
                    f"compiled for {platform}")
  for name in sorted(kernels):
    # Interpret mode lowers the kernel's grid as a loop under its name; the
    # compiled kernel is only "<name>/pallas_call".
    if re.search(re.escape(name) + r"/(?!pallas_call\b)", text):
      problems.append(f"Pallas kernel {name!r} lowered in interpret mode")
  return problems


@pytest.fixture(scope="module")
def traced():
  t = time.perf_counter()
  programs = abstract_programs(_config("pallas"))
  return programs, time.perf_counter() - t


@pytest.mark.parametrize("program", ["train", "predict"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_for_device(traced, platform, program):
  programs, trace_s = traced
  tr = programs[program]
  t = time.perf_counter()
  lowered = tr.lower(lowering_platforms=(platform,))
  lower_s = time.perf_counter() - t
  assert trace_s + lower_s < MAX_LOWER_S, (trace_s, lower_s)
  text = lowered.as_text(debug_info=True)
  kernels = pallas_kernel_names(tr.jaxpr)
  assert kernels == {"nms_suppression_mask"}
  assert device_program_problems(text, platform, kernels) == []
  # One kernel per NMS mask block (2048 sorted rows each), batched over the
  # images by vmap: train 12000 proposals -> 6 blocks, test 6000 -> 3.
  blocks = 6 if program == "train" else 3
  assert text.count(f"custom_call @{KERNEL_CALL[platform]}") == blocks
  convs = re.findall(r"stablehlo\.convolution\(.*\n?.*-> tensor<[^>]*>", text)
  assert convs and all("bf16" in c for c in convs), convs[:3]


def test_same_trace_lowers_to_interpret_mode_on_cpu(traced):
  # The choice is made at lowering: this host's CPU gets interpret mode from
  # the very program that lowered to Triton / Mosaic above.
  tr = traced[0]["predict"]
  text = tr.lower(lowering_platforms=("cpu",)).as_text(debug_info=True)
  problems = device_program_problems(text, "cuda",
                                     pallas_kernel_names(tr.jaxpr))
  assert any("interpret mode" in p for p in problems), problems
  assert any("no __gpu$xla.gpu.triton" in p for p in problems), problems


def test_auto_nms_is_the_kernel_on_device():
  # model.nms_impl='auto': jnp NMS on CPU, the kernel when lowered for GPU.
  tr = abstract_programs(_config("auto"))["predict"]
  text = tr.lower(lowering_platforms=("cuda",)).as_text(debug_info=True)
  assert device_program_problems(text, "cuda",
                                 pallas_kernel_names(tr.jaxpr)) == []
  cpu = tr.lower(lowering_platforms=("cpu",)).as_text()
  assert "custom_call" not in cpu


# -- the checks catch what they are meant to catch ----------------------------

def _nms_problems(fn, platform="cuda"):
  sds = jax.ShapeDtypeStruct
  tr = jax.jit(fn).trace(sds((600, 4), jnp.float32), sds((600,), jnp.float32))
  text = tr.lower(lowering_platforms=(platform,)).as_text(debug_info=True)
  return device_program_problems(text, platform, pallas_kernel_names(tr.jaxpr))


def test_checks_catch_broken_programs():
  nms = functools.partial(pallas_nms.nms, iou_threshold=0.5, max_output=50)
  assert _nms_problems(nms) == []
  assert _nms_problems(nms, "tpu") == []

  # A host callback cannot even be lowered for a platform this host lacks.
  def with_callback(b, s):
    jax.debug.callback(lambda x: None, s[0])
    return nms(b, s)

  with pytest.raises(ValueError, match="platform"):
    _nms_problems(with_callback)
  # Any other custom call (here cuSOLVER's) is reported.
  problems = _nms_problems(lambda b, s: nms(jnp.linalg.qr(b)[0], s))
  assert any("custom calls other than" in p for p in problems), problems
  # A kernel pinned to interpret mode (e.g. chosen from the host's backend).
  problems = _nms_problems(functools.partial(nms, interpret=True))
  assert any("interpret mode" in p for p in problems), problems
  # The kernel silently replaced by the jnp NMS.
  problems = _nms_problems(
      lambda b, s: pallas_nms.select_nms("jnp")(b, s, 0.5, 50))
  assert any("not compiled for cuda" in p for p in problems), problems


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_fpn_detector_lowers_for_device(platform):
  # The FPN models' train step and predict (configs/tiny_fpn.py's network,
  # the code path of coco_r50_fpn.py) in bfloat16 with model.nms_impl='auto':
  # a device program whose only custom calls are the per-level RPN NMS
  # kernel's (no host callback anywhere), every convolution and matrix
  # product in bf16; lowered for the CPU, the jnp NMS and no custom call.
  c = tiny_fpn.get_config()
  c.model.dtype = "bfloat16"
  c.model.nms_impl = "auto"
  canvas = (256, 384)
  c.data.buckets = (canvas,)
  c.train.batch_size = BATCH
  programs = abstract_programs(c, num_classes=4, canvas=canvas)
  for name, tr in programs.items():
    text = tr.lower(lowering_platforms=(platform,)).as_text(debug_info=True)
    assert device_program_problems(
        text, platform, pallas_kernel_names(tr.jaxpr)) == [], name
    if platform == "cuda":
      cpu = tr.lower(lowering_platforms=("cpu",)).as_text()
      assert "custom_call" not in cpu, name
    convs = re.findall(r"stablehlo\.convolution\(.*\n?.*-> tensor<[^>]*>", text)
    dots = re.findall(r"stablehlo\.dot_general.*-> tensor<[^>]*>", text)
    assert convs and dots, name
    assert all("bf16" in op for op in convs), (name, convs[:3])
    # The 1x1 convolutions (layers.Conv's matrix products) compute in bf16
    # too; f32 products are the box coder's and the losses' small ones.
    assert sum("bf16" in op for op in dots) >= 10, (name, dots[:3])
