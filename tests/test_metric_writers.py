"""Tests for frcnn_jax/metric_writers.py: TensorBoard + metrics.jsonl."""
import glob
import json
import math
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from frcnn_jax import metric_writers as mw
from frcnn_jax import vis


def _scalars(tb_dir, tag):
  acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)], acc.Tags()["scalars"]


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _loss(step):
  return 1.0 / step


def test_writes_tensorboard_and_jsonl(tmp_path):
  with mw.MetricWriter(tmp_path, process_index=0) as w:
    for s in range(1, 6):
      w.write_scalars(s, {"loss_total": _loss(s), "lr": np.float32(1e-3),
                          "images_per_sec": np.array(4.5), "epoch": 0})
  recs = _jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
  assert recs[1]["loss_total"] == 0.5 and recs[0]["epoch"] == 0
  assert recs[0]["lr"] == pytest.approx(1e-3) and "wall_time" in recs[0]
  pts, tags = _scalars(str(tmp_path / "tensorboard"), "loss_total")
  assert set(tags) >= {"loss_total", "lr", "images_per_sec"}
  assert [p[0] for p in pts] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([p[1] for p in pts], [_loss(s) for s in range(1, 6)],
                             rtol=1e-6)
  # The plot reads what the writer wrote.
  assert vis.plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png") \
      == ["loss_total", "lr", "images_per_sec"]


def test_jax_scalars_and_nonfinite(tmp_path):
  import jax.numpy as jnp
  with mw.MetricWriter(tmp_path, process_index=0) as w:
    w.write_scalars(1, {"loss_total": jnp.float32(2.5), "bad": float("nan"),
                        "inf": jnp.inf})
    with pytest.raises(ValueError, match="scalar"):
      w.write_scalars(2, {"vec": np.ones(3)})
    with pytest.raises(ValueError, match="reserved"):
      w.write_scalars(2, {"step": 1})
  (line,) = open(tmp_path / "metrics.jsonl").read().splitlines()
  rec = json.loads(line)                 # strict JSON: NaN/inf written as null
  assert rec["loss_total"] == 2.5 and rec["bad"] is None and rec["inf"] is None
  assert "NaN" not in line and "Infinity" not in line
  pts, _ = _scalars(str(tmp_path / "tensorboard"), "bad")
  assert math.isnan(pts[0][1])


def test_non_zero_process_writes_nothing(tmp_path):
  w = mw.MetricWriter(tmp_path / "run", process_index=1)
  w.write_scalars(1, {"loss_total": 1.0})
  w.write_images(1, {"img": np.zeros((4, 4, 3), np.uint8)})
  w.flush()
  w.close()
  assert not os.path.exists(tmp_path / "run")


def _run(workdir, steps, resume_step=None, scale=1.0):
  with mw.MetricWriter(workdir, process_index=0, resume_step=resume_step) as w:
    for s in steps:
      w.write_scalars(s, {"loss_total": scale * _loss(s)})


def test_resume_truncates_jsonl_and_purges_tensorboard(tmp_path):
  # First run logs 1..10, then "crashes" (its last checkpoint was step 6),
  # leaving a half-written line.
  _run(tmp_path, range(1, 11))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "loss_tot')
  # The resumed run restores step 6 and logs 7..12 (different values).
  _run(tmp_path, range(7, 13), resume_step=6, scale=2.0)
  recs = _jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == list(range(1, 13))
  for r in recs:
    want = _loss(r["step"]) * (1.0 if r["step"] <= 6 else 2.0)
    assert r["loss_total"] == pytest.approx(want)
  # TensorBoard: two event files; the reader shows each step once, with the
  # resumed run's values after step 6.
  assert len(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))) == 2
  pts, _ = _scalars(str(tmp_path / "tensorboard"), "loss_total")
  assert [p[0] for p in pts] == list(range(1, 13))
  for step, value in pts:
    want = _loss(step) * (1.0 if step <= 6 else 2.0)
    assert value == pytest.approx(want, rel=1e-6)


def test_reopen_without_resume_appends_and_repairs_partial_line(tmp_path):
  _run(tmp_path, range(1, 4))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "lo')          # no newline: cut short
  _run(tmp_path, range(4, 6))
  lines = open(tmp_path / "metrics.jsonl").read().splitlines()
  assert len(lines) == 6
  good = [json.loads(l)["step"] for l in lines if l.endswith("}")]
  assert good == [1, 2, 3, 4, 5]
  # Readers skip the broken line.
  assert [r["step"] for r in vis.read_metrics_jsonl(tmp_path / "metrics.jsonl")] \
      == [1, 2, 3, 4, 5]


def test_truncate_jsonl_direct(tmp_path):
  p = tmp_path / "m.jsonl"
  p.write_text('{"step": 1}\n{"step": 5}\nnot json\n{"x": 1}\n{"step": 3}')
  assert mw.truncate_jsonl(str(p), 3) == 3
  assert [r["step"] for r in _jsonl(p)] == [1, 3]
  assert mw.truncate_jsonl(str(tmp_path / "missing.jsonl"), 3) == 0


def test_images_text_and_close(tmp_path):
  w = mw.MetricWriter(tmp_path, process_index=0)
  w.write_images(3, {"vis/0": np.zeros((8, 10, 3), np.uint8)})
  w.write_text(3, {"config": "lr: 0.001"})
  w.close()
  w.close()                              # idempotent
  with pytest.raises(RuntimeError):
    w.write_scalars(4, {"a": 1.0})
  acc = EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert "vis/0" in acc.Tags()["images"]
  img = acc.Images("vis/0")[0]
  assert (img.step, img.width, img.height) == (3, 10, 8)
  assert "config" in acc.Tags()["tensors"]
  text = acc.Tensors("config")[0]
  assert text.step == 3
  assert text.tensor_proto.string_val[0].decode() == "lr: 0.001"


def test_grouped_names_one_writer_stack_and_file_order(tmp_path):
  """Names go to both files as given (TensorBoard groups by the first part);
  the event files come from the tensorboard package alone, named so that
  sorting them gives their creation order."""
  import subprocess
  import sys
  code = f"""
import sys
from frcnn_jax import metric_writers as mw
with mw.MetricWriter({str(tmp_path)!r}, process_index=0) as w:
  w.write_scalars(1, {{"train/loss_total": 2.0, "train/lr": 0.1}})
  w.write_scalars(1, {{"eval/AP": 0.5}})
  for _ in range(3):
    w.rewind(1)
assert "tensorboardX" not in sys.modules, "tensorboardX imported"
assert "tensorflow" not in sys.modules, "tensorflow imported"
"""
  from tests.conftest import REPO
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rec = _jsonl(tmp_path / "metrics.jsonl")
  assert rec[0]["train/loss_total"] == 2.0 and rec[1]["eval/AP"] == 0.5
  acc = EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert {"train/loss_total", "train/lr", "eval/AP"} <= set(
      acc.Tags()["scalars"])
  files = sorted(os.listdir(tmp_path / "tensorboard"))
  assert len(files) == 4
  made = [os.stat(tmp_path / "tensorboard" / f).st_mtime_ns for f in files]
  assert made == sorted(made)


def test_rewind_mid_run_and_restart_from_scratch(tmp_path):
  # A run logs 1..8, rolls back to step 4 and logs 5..10 again (other values).
  with mw.MetricWriter(tmp_path, process_index=0, resume_step=0) as w:
    for s in range(1, 9):
      w.write_scalars(s, {"loss_total": _loss(s)})
    w.rewind(4)
    for s in range(5, 11):
      w.write_scalars(s, {"loss_total": 3.0 * _loss(s)})
  recs = _jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == list(range(1, 11))
  pts, _ = _scalars(str(tmp_path / "tensorboard"), "loss_total")
  assert [p[0] for p in pts] == list(range(1, 11))
  for step, value in pts:
    assert value == pytest.approx(_loss(step) * (1.0 if step <= 4 else 3.0),
                                  rel=1e-6)
  # Killed before its first checkpoint, the run starts over (resume_step=0):
  # the earlier attempt's steps are not kept twice.
  _run(tmp_path, range(1, 4), resume_step=0, scale=5.0)
  recs = _jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == [1, 2, 3]
  pts, _ = _scalars(str(tmp_path / "tensorboard"), "loss_total")
  assert [p[0] for p in pts] == [1, 2, 3]
  assert pts[0][1] == pytest.approx(5.0)
