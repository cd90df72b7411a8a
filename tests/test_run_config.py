"""run_config: what a resume may change, the one-screen refusal, the record."""
import json
import os

import pytest

from frcnn_jax import config_lib
from frcnn_jax import run_config as R


def tiny(**overrides):
  return config_lib.load_config("tiny", overrides, check=False)


def test_kinds():
  assert R.kind_of("backbone.name") == "fixed"
  assert R.kind_of("data.shapes.num_train") == "fixed"
  assert R.kind_of("train.batch_size") == "fixed"
  assert R.kind_of("optimizer.lr") == "allowed"
  assert R.kind_of("rpn.nms_thresh") == "allowed"
  assert R.kind_of("data.root") == "allowed"
  assert R.kind_of("test.score_thresh") == "free"
  assert R.kind_of("train.num_steps") == "free"
  assert R.kind_of("checkpoint.every_steps") == "free"
  # A prefix matches whole components only.
  assert R.kind_of("seed") == "fixed" and R.kind_of("seedling") == "allowed"


def test_diff_by_hand():
  old = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
  new = {"a": {"b": 1, "c": [1, 3]}, "e": True}
  assert R.diff(old, new) == {"a.c": ([1, 2], [1, 3]), "d": ("x", None),
                              "e": (None, True)}
  assert R.diff(tiny(), tiny()) == {}
  assert R.diff(tiny().to_json_best_effort(), tiny(**{
      "optimizer.lr": 0.5})) == {"optimizer.lr": (0.04, 0.5)}


def test_resume_changes():
  rec = tiny()
  # Free changes pass and are returned for the record.
  got = R.resume_changes(rec, tiny(**{"train.log_every": 3}), workdir="w",
                         step=50)
  assert got == {"train.log_every": (10, 3)}
  with pytest.raises(R.ConfigChangedError) as e:
    R.resume_changes(rec, tiny(**{"optimizer.lr": 0.5}), workdir="runs/t",
                     step=50)
  text = str(e.value)
  assert "runs/t holds a run at step 50" in text
  assert "optimizer.lr" in text and "0.04 -> 0.5" in text
  assert "--workdir=runs/t_2" in text and "--allow_config_change" in text
  assert R.resume_changes(rec, tiny(**{"optimizer.lr": 0.5}), workdir="w",
                          step=50, allow_change=True) == {
                              "optimizer.lr": (0.04, 0.5)}
  # A fixed key is refused even with the flag.
  with pytest.raises(R.ConfigChangedError, match="fixed: the checkpoints"):
    R.resume_changes(rec, tiny(**{"rpn.conv_channels": 8,
                                  "optimizer.lr": 0.5}),
                     workdir="w", step=50, allow_change=True)


def test_refusal_fits_one_screen():
  rec = tiny()
  changed = tiny(**{"rpn.nms_thresh": 0.6, "rpn.min_size": 2,
                    "roi.fg_thresh": 0.4, "roi.bg_thresh_hi": 0.4,
                    "optimizer.momentum": 0.8, "optimizer.weight_decay": 0.0,
                    "data.flip": False, "data.max_num_box": 7,
                    "rpn.sigma": 2.0, "roi.sigma": 2.0, "rpn.batch_size": 64,
                    "roi.batch_size": 32, "rpn.fg_fraction": 0.4,
                    "roi.fg_fraction": 0.2, "rpn.positive_overlap": 0.6,
                    "rpn.negative_overlap": 0.2, "optimizer.gamma": 0.5,
                    "optimizer.lr": 0.5, "optimizer.warmup_steps": 3,
                    "roi.bg_thresh_lo": 0.1, "rpn.post_nms_top_n": 100,
                    "rpn.pre_nms_top_n": 500, "rpn.allowed_border": 5,
                    "optimizer.grad_clip_norm": 1.0, "data.scale": 80})
  shown = [k for k in R.diff(rec, changed) if R.kind_of(k) != "free"]
  assert len(shown) > 20
  with pytest.raises(R.ConfigChangedError) as e:
    R.resume_changes(rec, changed, workdir="w", step=1)
  lines = str(e.value).splitlines()
  assert len(lines) <= 23 and lines[-2] == f"  ... and {len(shown) - 20} more"


def test_record_start(tmp_path):
  w = str(tmp_path)
  R.record_start(w, tiny(), step=0, argv=["train.py", "--config=tiny"])
  R.record_start(w, tiny(**{"optimizer.lr": 0.5}), step=50,
                 changes={"optimizer.lr": (0.04, 0.5)}, argv=["x"])
  runs = R.read_runs(w)
  assert [r["start_step"] for r in runs] == [0, 50]
  assert [r["resumed"] for r in runs] == [False, True]
  assert runs[0]["argv"] == ["train.py", "--config=tiny"]
  assert runs[1]["config_changes"] == {"optimizer.lr": [0.04, 0.5]}
  assert runs[0]["cwd"] == os.getcwd() and runs[0]["host"]
  # config.json is the effective config of the latest start.
  assert json.load(open(tmp_path / "config.json"))["optimizer"]["lr"] == 0.5
  assert config_lib.recorded_config(w).optimizer.lr == 0.5
  assert R.read_runs(str(tmp_path / "none")) == []
