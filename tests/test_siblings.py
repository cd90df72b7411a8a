"""The top-level ``ops`` and ``configs`` must be frcnn-jax's own.

A foreign package of either name first on sys.path (a project folder, the
current directory) or in the same site-packages folder is reported at once
with what to do, not as an unrelated error deep inside the model.
"""
import os
import subprocess
import sys

import pytest

from frcnn_jax import config_lib
from frcnn_jax import siblings
from tests.conftest import REPO


def _python(code, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


def test_ours_pass():
  assert siblings.problem("ops") is None
  assert siblings.problem("configs") is None
  assert siblings.expected_dir("ops") == os.path.join(REPO, "ops")


def test_a_foreign_ops_first_on_the_path_stops_the_import(tmp_path):
  (tmp_path / "ops").mkdir()
  (tmp_path / "ops" / "__init__.py").write_text("# someone else's ops\n")
  # `python -c` puts the current directory first on sys.path.
  proc = _python("import frcnn_jax", cwd=str(tmp_path))
  assert proc.returncode != 0
  assert "SiblingPackageError" in proc.stderr
  assert f"resolves to {tmp_path}/ops/__init__.py" in proc.stderr
  assert "Run from another directory" in proc.stderr


def test_a_foreign_configs_stops_only_the_builtin_configs(tmp_path):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("")
  proc = _python(
      "import frcnn_jax\n"                    # fine: configs is not needed
      "from frcnn_jax import config_lib\n"
      "config_lib.load_config('shapes')", cwd=str(tmp_path))
  assert proc.returncode != 0
  assert "'import configs' resolves to" in proc.stderr


def test_same_folder_without_our_marker(tmp_path, monkeypatch):
  """Another distribution wrote its ``ops`` where ours is installed."""
  (tmp_path / "ops").mkdir()
  (tmp_path / "ops" / "__init__.py").write_text("VERSION = 2\n")
  monkeypatch.setattr(siblings, "_ROOT", str(tmp_path))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "ops")
  why = siblings.problem("ops")
  assert "another installed distribution" in why and "marker" in why
  with pytest.raises(siblings.SiblingPackageError):
    siblings.check("ops")
  assert config_lib.builtin_config_names() == []   # no configs/ there
