"""Shared pytest setup.

Tests run on the CPU. Multi-device tests start a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N (see `run_with_devices`),
because the device count is fixed when jax is first imported.
"""
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole session, shared by the
# xdist workers (keyed on the run's id) and inherited by the train.py /
# eval.py subprocesses: identical programs (the same tiny train step in
# several end-to-end tests) compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  _run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if _run:
    _cache = os.path.join(tempfile.gettempdir(), f"frcnn_jax_xla_cache_{_run}")
    os.makedirs(_cache, exist_ok=True)
  else:
    _cache = tempfile.mkdtemp(prefix="frcnn_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, n_devices: int, timeout: int = 600, env=None) -> str:
  """Runs `code` in a fresh python with `n_devices` fake CPU devices.

  Returns its stdout; raises with stdout/stderr if it exits non-zero.
  """
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = (
      full_env.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={n_devices}").strip()
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
  if env:
    full_env.update(env)
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        capture_output=True, text=True, timeout=timeout,
                        env=full_env, cwd=REPO)
  if proc.returncode != 0:
    raise AssertionError(
        f"subprocess failed ({proc.returncode})\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr[-6000:]}")
  return proc.stdout


@pytest.fixture
def rng():
  import numpy as np
  return np.random.default_rng(0)


# The longest tests first (measured with --durations), so that the two
# xdist workers, fed one test at a time (--maxschedchunk=1 in
# pyproject.toml), finish together instead of one waiting on the other's
# tail. Order within a prefix is the collection order.
_LONG_FIRST = (
    "tests/test_train.py::test_two_processes_of_two_devices_match_one_device",
    "tests/test_train.py",
    "tests/test_install.py",
    "tests/modeling/test_detector.py",
    "tests/modeling/test_detector_fpn_train.py",
    "tests/test_exporting.py",
    "tests/modeling/test_canvas.py",
    "tests/ops/test_roi_align.py",
    "tests/test_bench_accelerator.py",
    "tests/weights/test_seed_parity.py",
    "tests/modeling/test_detector_fpn.py",
)


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((i for i, prefix in enumerate(_LONG_FIRST)
                 if item.nodeid.startswith(prefix)), len(_LONG_FIRST))
  items.sort(key=rank)
