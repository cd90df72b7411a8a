"""The dataset browser (frcnn_jax/browse.py): every box of the annotation
file drawn, marked by what the pipeline does with it."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from frcnn_jax import browse
from frcnn_jax import vis
from frcnn_jax.data import default_data_config
from frcnn_jax.data.testing import write_coco, write_image
from tests.conftest import REPO

GRAY = 100


def _dataset(root):
  write_image(os.path.join(root, "s", "1.png"),
              np.full((60, 80, 3), GRAY, np.uint8))
  anns = [
      dict(id=1, image_id=1, category_id=1, bbox=[5, 5, 20, 20]),   # kept
      dict(id=2, image_id=1, category_id=2, bbox=[40, 5, 20, 20]),  # 2nd box
      dict(id=3, image_id=1, category_id=1, bbox=[5, 35, 30, 20],
           iscrowd=1),
      dict(id=4, image_id=1, category_id=1, bbox=[100, 100, 5, 5]),  # outside
      dict(id=5, image_id=1, category_id=9, bbox=[45, 35, 20, 20]),  # unknown
      dict(id=6, image_id=1, category_id=1, bbox=[1, 1, None, 3]),   # NaN
  ]
  write_coco(root, "s", [dict(id=1, file_name="1.png", height=60, width=80)],
             anns)


def _config(root):
  c = default_data_config()
  c.name, c.root, c.max_num_box = "coco", root, 1
  return c


def _dashed(edge, color):
  """The edge holds ``color`` and gaps of the picture: a dashed line."""
  hits = sum(1 for p in edge if tuple(p) == color)
  gaps = sum(1 for p in edge if tuple(p) == (GRAY,) * 3)
  return hits > 4 and gaps > 2


def test_browser_marks_every_box_with_its_fate(tmp_path):
  root = str(tmp_path / "data")
  _dataset(root)
  out = str(tmp_path / "out")
  (path,) = browse.browse(_config(root), "s", out, min_side=0)
  img = np.asarray(Image.open(path).convert("RGB"))
  top = int(np.argmax(np.all(img[:, 70:80] == GRAY, axis=(1, 2))))
  assert top > 0
  row = lambda y, x1, x2: img[y + top, x1:x2 + 1]  # noqa: E731
  # The training box: solid, in its class colour (top edge, y = 5).
  assert (row(5, 5, 24) == vis.class_color(1)).all()
  # The second box of the image is beyond max_num_box=1: dashed gray.
  assert _dashed(row(5, 40, 59), browse.STYLE[browse.OVER_MAX][0])
  # The crowd region and the box of an unknown category: dashed, own colours.
  assert _dashed(row(35, 5, 34), browse.STYLE["box_crowd"][0])
  assert _dashed(row(35, 45, 64), browse.STYLE["box_unknown_category"][0])
  # Labels name the reason.
  index = open(os.path.join(out, "index.txt")).read()
  for what in ("over_max_num_box 1", "box_crowd 1", "box_outside 1",
               "box_unknown_category 1", "box_non_finite 1", "kept 1"):
    assert what in index, index
  marks, counts = browse.ground_truth_marks(
      _Rec(), [], ["bg", "a", "b"], max_num_box=5, use_difficult=False)
  assert [m.label for m in marks] == ["difficult: a", "b"]
  assert counts == {"difficult": 1, "kept": 1}


class _Rec:
  boxes = np.array([[0, 0, 9, 9], [10, 10, 19, 19]], np.float32)
  classes = np.array([1, 2])
  difficult = np.array([True, False])


def test_browser_command_line(tmp_path):
  root = str(tmp_path / "data")
  _dataset(root)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  base = [sys.executable, "-m", "frcnn_jax.browse", "--config=configs/tiny.py",
          "--config.data.name=coco", f"--config.data.root={root}"]
  proc = subprocess.run(base + ["--split=s", f"--out={tmp_path / 'o'}",
                                "--only_dropped"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / "o") == ["1.png", "index.txt"] or sorted(
      os.listdir(tmp_path / "o")) == ["1.png", "index.txt"]
  assert "box_crowd=1" in proc.stdout


def test_browser_user_errors_exit_2(tmp_path, capsys):
  """A split or image id that does not exist: one line, exit code 2."""
  root = str(tmp_path / "data")
  _dataset(root)
  for split, kw in (("nope", {}), ("s", {"image_ids": [7]})):
    assert browse.run(_config(root), split, str(tmp_path / "x"), **kw) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
