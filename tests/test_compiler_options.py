"""frcnn_jax.compiler_options: the CPU option of the detector's programs."""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frcnn_jax import compiler_options
from frcnn_jax import eval_lib
from frcnn_jax import parallel
from frcnn_jax import train_lib

NAME, VALUE = next(iter(compiler_options.CPU_OPTIONS.items()))


def test_cpu_gets_the_option():
  assert compiler_options.detector_options({}, "cpu") == {NAME: VALUE}


def test_other_backends_get_nothing():
  assert compiler_options.detector_options({}, "gpu") == {}
  assert compiler_options.detector_options({}, "tpu") == {}


def test_opt_out_and_user_flag_win():
  assert compiler_options.detector_options(
      {"FRCNN_JAX_XLA_DEFAULTS": "0"}, "cpu") == {}
  mine = {"XLA_FLAGS": f"--foo --{NAME}=LIBRARY_FUSION_TYPE_DOT"}
  assert compiler_options.detector_options(mine, "cpu") == {}


def test_untested_jaxlib_gets_nothing(monkeypatch):
  # XLA rejects options it does not know; experimental ones come and go.
  monkeypatch.setattr(importlib.metadata, "version", lambda _: "0.99.0")
  assert compiler_options.detector_options({}, "cpu") == {}


def _eltwise(a, b, c):
  return jax.nn.relu(a * b + c)


def test_train_step_and_predict_compile_with_it():
  # The jitted train step and predict carry the option: XLA hands the
  # element-wise chain to a library (YNNPACK) fusion instead of a loop fusion.
  mesh = parallel.create_mesh()
  x = jnp.ones((2, 64, 128), jnp.float32)

  def train_step(state, batch):
    out = _eltwise(state["w"], batch["x"], batch["x"])
    return state, {"out": out}

  step = train_lib.jit_train_step(train_step, mesh)
  hlo = step.lower({"w": x}, {"x": x}).compile().as_text()
  assert "ynn_fusion" in hlo
  # Control: the same program without the option has no library fusion.
  plain = jax.jit(train_step).lower({"w": x}, {"x": x}).compile().as_text()
  assert "ynn_fusion" not in plain

  class Net(nnx.Module):

    def predict(self, image, im_info):
      return {"out": _eltwise(image, image, im_info[:, :, None])}

  graphdef, params, rest = nnx.split(Net(), nnx.Param, ...)
  predict = eval_lib.make_predict_fn(graphdef, mesh)
  info = jnp.ones((2, 64), jnp.float32)
  compiled = predict.lower(params, rest, x, info,
                           np.arange(2, dtype=np.int32)).compile()
  assert "ynn_fusion" in compiled.as_text()
