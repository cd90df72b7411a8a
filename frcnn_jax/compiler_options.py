"""XLA compiler options of the detector's jitted programs (train step, predict).

One option, for the CPU backend only:

  xla_cpu_experimental_ynn_fusion_type = LIBRARY_FUSION_TYPE_ELTWISE

Why: a ResNet's residual stream is a chain of element-wise ops across blocks
(each block's output is relu(bn(conv(...)) + shortcut)). XLA CPU's loop fusion
duplicates that chain into every consumer that needs a block output in
another layout -- in the backward pass, the transposed copies feeding the
weight-gradient convolutions -- so each of them recomputes the stream from the
start of the stage: work quadratic in the number of blocks (R101's layer3 has
23). Handing element-wise ops to the YNNPACK library fusions instead makes
each block output a materialized buffer. Measured on the 2-core CI-class CPU
(jax 0.10.2), 600x1000, batch 1, random weights, `python -m bench.step`:
R101-C4 train step 12.2 s -> 5.2-5.9 s, inference 0.29 -> 0.44 images/s,
train compile 21 s -> 16 s; R50-C4 train 5.8 s -> 3.5-3.7 s.

It is passed per program (`jax.jit(..., compiler_options=...)`), not through
XLA_FLAGS: the standalone ops are better without it (RoIAlign's forward is a
chain of gathered multiply-adds that XLA fuses into one loop; as library
element-wise calls it is ~2x slower, bench/README.md), and nothing changes
for other JAX code in the process.

`detector_options()` returns it unless FRCNN_JAX_XLA_DEFAULTS=0, XLA_FLAGS
already names the option (yours wins), the default backend is not the CPU, or
the installed jaxlib is not one it was measured with (`TESTED_JAXLIB`: XLA
rejects options it does not know, and experimental ones come and go).
"""

from __future__ import annotations

import importlib.metadata
import os

TESTED_JAXLIB = ("0.10.",)
CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE",
}


def detector_options(environ=None, backend: str | None = None) -> dict:
  """Compiler options for the detector's jitted train step and predict.

  Args:
    environ: the environment to read (default os.environ).
    backend: the platform the program compiles for (default
      `jax.default_backend()`).
  """
  env = os.environ if environ is None else environ
  if env.get("FRCNN_JAX_XLA_DEFAULTS", "1") == "0":
    return {}
  if backend is None:
    import jax  # pylint: disable=import-outside-toplevel
    backend = jax.default_backend()
  if backend != "cpu":
    return {}
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return {}
  if not jaxlib_version.startswith(TESTED_JAXLIB):
    return {}
  user = env.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU_OPTIONS.items() if f"--{k}" not in user}
