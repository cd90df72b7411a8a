"""pip install of the checkout into a fresh virtualenv, then the README's
first sections from another directory: the console scripts, training on a
user's COCO json + image folder, eval and demo on the workdir, the three-line
Python API and an exported model's round trip.

The virtualenv is new and outside the repository, with nothing downloaded:
``venv --without-pip`` plus a ``.pth`` that adds the test interpreter's
site-packages (``--system-site-packages`` would add the base Python's, not
this virtualenv's), and ``pip --python <venv> install --no-deps
--no-build-isolation`` of a copy of the checkout's package files (a build
writes ``build/`` and ``*.egg-info`` next to the sources). No ``PYTHONPATH``
reaches the subprocesses: they import the installed copy, which the tests
check.
"""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO

SHIPPED = ("pyproject.toml", "README.md", "requirements.txt",
           "requirements-torch.txt", "requirements-dev.txt", "frcnn_jax",
           "ops", "configs")
SCRIPTS = ("frcnn-train", "frcnn-eval", "frcnn-demo", "frcnn-weights",
           "frcnn-export")


def _copy_checkout(dst):
  os.makedirs(dst)
  for name in SHIPPED:
    src = os.path.join(REPO, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dst, name), ignore=shutil.ignore_patterns(
          "__pycache__", "*.pyc", "*.egg-info", "build"))
    else:
      shutil.copy(src, dst)
  return dst


def _extra_paths():
  """sys.path entries the venv needs besides the test venv's site-packages:
  where flatbuffers comes from when it is not installed there."""
  spec = importlib.util.find_spec("flatbuffers")
  if spec is None or not spec.submodule_search_locations:
    return []
  parent = os.path.dirname(list(spec.submodule_search_locations)[0])
  return [] if parent in site.getsitepackages() else [parent]


def make_venv(root, *, editable=False):
  """A fresh venv under ``root`` with the checkout installed; returns
  ``(venv python, seconds the venv + install took)``."""
  src = _copy_checkout(os.path.join(root, "src"))
  venv = os.path.join(root, "venv")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv],
                 check=True)
  py = os.path.join(venv, "bin", "python")
  purelib = subprocess.run(
      [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip()
  lines = [f"import site; site.addsitedir({p!r})"
           for p in site.getsitepackages()] + _extra_paths()
  with open(os.path.join(purelib, "_parent_env.pth"), "w") as f:
    f.write("\n".join(lines) + "\n")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "--python", py, "install", "--quiet",
       "--no-deps", "--no-build-isolation", "--no-index"] +
      (["-e", src] if editable else [src]),
      capture_output=True, text=True, env=_env(None))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return py, time.perf_counter() - t0


def _env(venv_python):
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  if venv_python:
    env["PATH"] = os.path.dirname(venv_python) + os.pathsep + env["PATH"]
  return env


def run(venv_python, args, cwd, timeout=600, codes=(0,)):
  """Runs a command of the venv (a script name or ``python``) in ``cwd``;
  returns its stdout (and stderr)."""
  exe = os.path.join(os.path.dirname(venv_python), args[0])
  proc = subprocess.run([exe] + list(args[1:]), cwd=cwd, env=_env(venv_python),
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode not in codes:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc.stdout + proc.stderr


def _last_json(text):
  return json.loads([ln for ln in text.splitlines() if ln.startswith(("{", "["))][-1])


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("install"))
  py, seconds = make_venv(root)
  return py, seconds, root


def test_pip_install_into_a_fresh_virtualenv_is_fast_and_complete(venv,
                                                                  tmp_path):
  py, seconds, root = venv
  assert seconds < 60, f"venv + pip install took {seconds:.0f} s"
  site_dir = os.path.dirname(os.path.dirname(py))
  out = run(py, ["python", "-c",
                 "import frcnn_jax, ops, configs, json\n"
                 "from frcnn_jax import config_lib\n"
                 "print(json.dumps([frcnn_jax.__file__, ops.__file__, "
                 "configs.__file__, config_lib.find_config_file("
                 "'voc07_res101'), config_lib.builtin_config_names()]))"],
            cwd=str(tmp_path))
  files = _last_json(out)
  for f in files[:4]:
    assert f.startswith(site_dir), (f, site_dir)   # the installed copy
  assert {"shapes", "tiny", "voc07_res101", "coco_res101"} <= set(files[4])
  for script in SCRIPTS:
    assert os.access(os.path.join(os.path.dirname(py), script), os.X_OK)
  help_text = run(py, ["frcnn-train", "--helpfull"], cwd=str(tmp_path),
                  codes=(0, 1))
  assert "Built-in config name" in help_text
  assert "usage" in run(py, ["frcnn-weights", "--help"],
                        cwd=str(tmp_path)).lower()
  bad = run(py, ["frcnn-eval", "--config=no_such_config"], cwd=str(tmp_path),
            codes=(2,))
  assert "no built-in config of that name" in bad and "voc07_res101" in bad


def test_editable_install_imports_the_checkout(tmp_path):
  py, seconds = make_venv(str(tmp_path), editable=True)
  assert seconds < 60
  out = run(py, ["python", "-c", "import frcnn_jax, ops; "
                 "print(frcnn_jax.__file__); print(ops.__file__)"],
            cwd=str(tmp_path))
  src = os.path.join(str(tmp_path), "src")
  assert all(line.startswith(src) for line in out.split())


FLOW = """
import json, sys
import numpy as np
from frcnn_jax import Detector, load_exported, Detections

det = Detector.load({workdir!r})
result = det({image!r})
assert isinstance(result, Detections)
assert result.boxes.shape == (len(result), 4)
assert set(result.labels) <= {{"red box", "blue box"}}, result.labels
assert det.class_names == ("__background__", "red box", "blue box")
images = {images!r}
mine = det(images)
exported = load_exported({export!r})
theirs = exported(images)
gap = 0.0
for a, b in zip(mine, theirs):
  assert np.array_equal(a.class_ids, b.class_ids)
  np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
  if len(a):
    gap = max(gap, float(np.abs(a.boxes - b.boxes).max()))
assert gap < 1e-2, gap
print(json.dumps({{"n": [len(r) for r in mine], "gap": gap}}))
"""


def test_readme_flow_from_another_directory(venv, tmp_path):
  """Own COCO data -> frcnn-train -> eval -> demo -> API -> export, each
  run from a directory other than the workdir's, the data's and the repo."""
  from frcnn_jax.data import testing  # pylint: disable=import-outside-toplevel
  py = venv[0]
  data = testing.write_user_coco(str(tmp_path / "my_data"), num_train=12,
                                 num_val=4)
  work = str(tmp_path / "runs" / "mine")
  here = tmp_path / "somewhere"
  elsewhere = tmp_path / "elsewhere"
  here.mkdir()
  elsewhere.mkdir()
  run(py, ["frcnn-train", "--config=tiny", f"--workdir={work}",
           "--config.data.name=coco",
           f"--config.data.train_json={data['train_json']}",
           f"--config.data.train_images={data['images']}",
           f"--config.data.val_json={data['val_json']}",
           f"--config.data.val_images={data['images']}",
           "--config.train.num_steps=20", "--config.checkpoint.every_steps=20",
           "--config.checkpoint.async_save=false"], cwd=str(here))
  recorded = json.load(open(os.path.join(work, "config.json")))
  assert recorded["data"]["train_json"] == data["train_json"]
  assert os.path.isabs(recorded["data"]["root"])

  out = run(py, ["python", "-m", "frcnn_jax.eval", f"--workdir={work}"],
            cwd=str(elsewhere))
  assert "AP" in out
  metrics = json.load(open(os.path.join(work, "eval", "val_step20",
                                        "metrics.json")))
  assert metrics["num_images"] == 4
  run(py, ["frcnn-demo", f"--workdir={work}", f"--images={data['images']}",
           f"--out={tmp_path / 'demo'}"], cwd=str(elsewhere))
  demo = json.load(open(tmp_path / "demo" / "detections.json"))
  assert len(demo) == 16
  # Nothing was written where the tools ran: no dataset, no runs/.
  assert os.listdir(here) == [] and os.listdir(elsewhere) == []

  if not importlib.util.find_spec("flatbuffers"):
    pytest.skip("jax.export serialization needs flatbuffers "
                "(pip install -r requirements.txt)")
  export = str(tmp_path / "exported")
  run(py, ["frcnn-export", f"--workdir={work}", f"--out={export}"],
      cwd=str(elsewhere))
  images = sorted(os.path.join(data["images"], f)
                  for f in os.listdir(data["images"]))[:6]
  out = run(py, ["python", "-c", FLOW.format(
      workdir=work, image=images[0], images=images, export=export)],
            cwd=str(elsewhere))
  summary = _last_json(out)
  assert len(summary["n"]) == 6
