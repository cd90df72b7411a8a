"""bench/accelerator.py on the CPU: the table, the peaks, the budget, the
message when no GPU / TPU backend is there, and one smoke measurement."""

import pytest

from bench import accelerator as A


def test_peaks_by_device_kind():
  assert A.peak_tflops("NVIDIA H200", "bfloat16") == (989.4, "bf16 dense")
  assert A.peak_tflops("NVIDIA H100 80GB HBM3", "float32")[0] == 494.7
  assert A.peak_tflops("NVIDIA H100 PCIe", "bfloat16")[0] == 756.0
  assert A.peak_tflops("NVIDIA A100-SXM4-80GB", "float32")[0] == 156.0
  assert A.peak_tflops("TPU v5 lite", "float32")[0] == 197.0
  assert A.peak_tflops("TPU v5", "bfloat16")[0] == 459.0
  assert A.peak_tflops("cpu", "bfloat16")[0] is None


def _row(setting, **kw):
  row = {"setting": setting, "devices": 1, "status": "ok", **kw}
  return A.add_rates(row, "NVIDIA H200")


def test_rates_and_table():
  s = A.Setting("r50", 8, "bfloat16", "pallas")
  row = _row(s, canvas="608x1008", train_s=0.5,
             train_gflop=989.4 * 1e3 * 0.25,
             train_compile_s=41.0, train_gib=12.25, infer_s=0.1,
             infer_gflop=100.0)
  assert row["train_img_s"] == pytest.approx(16.0)
  assert row["train_mfu"] == pytest.approx(0.5)  # 494.7 of 989.4 TFLOP/s
  assert row["infer_tflops"] == pytest.approx(1.0)
  skipped = {"setting": A.Setting("r101", 16, "float32", "jnp"),
             "status": "skipped (time budget)"}
  lines = A.format_table([row, skipped]).splitlines()
  assert len(lines) == 4 and lines[0].count("|") == len(A.COLUMNS) + 1
  assert ("| r50 | 8 | bfloat16 | pallas | 608x1008 | 41 | 500.0 | 16.0 | "
          "12.2 |") in lines[2]
  assert lines[3].endswith("| skipped (time budget) |")
  assert lines[3].count("|") == len(A.COLUMNS) + 1


def test_grid_and_budget():
  args = A.parse_args([])
  assert args.height == 608 and args.budget_s == 420
  assert A.build_grid(args)[0] == A.Setting("r50", 8, "bfloat16", "pallas")
  args = A.parse_args(["--models", "r101", "--batches", "2,4",
                       "--nms", "jnp"])
  assert [(s.batch, s.dtype) for s in A.build_grid(args)] == [
      (2, "bfloat16"), (2, "float32"), (4, "bfloat16"), (4, "float32")]
  with pytest.raises(SystemExit):
    A.build_grid(A.parse_args(["--models", "r18"]))
  # The FPN models: their canvas in multiples of 32, torchvision's classes.
  assert A.step_bench.canvas_for("r50_fpn", 600, 1000) == (608, 1024)
  assert A.step_bench.canvas_for("tiny_fpn", 600, 1000) == (608, 1024)
  assert A.step_bench.canvas_for("r50", 600, 1000) == (608, 1008)
  assert (A.num_classes("r50_fpn"), A.num_classes("r101"),
          A.num_classes("tiny_fpn")) == (91, 81, 4)
  assert A.Setting("r50_fpn", 8, "bfloat16", "pallas") in A.build_grid(
      A.parse_args([]))
  s50, s101 = A.Setting("r50", 1, "float32", "jnp"), A.Setting(
      "r101", 1, "float32", "jnp")
  assert A.estimate_s(s50, []) == 90.0
  done = [{"setting": s50, "wall_s": 100.0}]
  assert A.estimate_s(s50, done) == 100.0
  assert A.estimate_s(s101, done) == 130.0


def test_says_what_is_missing_without_a_gpu(capsys):
  msg = A.missing_backend_message()  # Tests run on the CPU.
  assert msg is not None and "No GPU or TPU backend" in msg
  assert "jax[cuda12]" in msg or "nvidia-smi" in msg
  assert A.main([]) == 2
  assert "No GPU or TPU backend" in capsys.readouterr().err


def test_smoke_measures_and_prints_the_table(capsys):
  # Inference of the tiny network only, to stay quick; --smoke runs both.
  # The FPN one too (its per-level NMS on the Pallas kernel, interpreted).
  assert A.main(["--smoke", "--models", "tiny,tiny_fpn", "--batches", "1",
                 "--dtypes", "float32", "--nms", "pallas", "--no-train",
                 "--repeats", "1", "--height", "96", "--width", "120"]) == 0
  out = capsys.readouterr().out
  assert "kept indices IDENTICAL" in out
  nms_line = next(l for l in out.splitlines() if "FPN RPN" in l)
  assert "5 x 400 -> 300, FPN RPN" in nms_line, nms_line
  assert nms_line.count("IDENTICAL") == 2, nms_line
  for model, canvas in (("tiny", "96x128"), ("tiny_fpn", "96x128")):
    row = [line for line in out.splitlines()
           if line.startswith(f"| {model} |")]
    assert len(row) == 1 and row[0].endswith("| ok |"), out
    cells = [c.strip() for c in row[0].split("|")[1:-1]]
    infer = dict(zip([c[1] for c in A.COLUMNS], cells))
    assert float(infer["infer img/s"]) > 0 and float(infer["infer MFU"]) > 0
    assert infer["train step ms"] == "" and infer["canvas"] == canvas
