"""train.py / eval.py / demo.py as a user runs them (tiny config, subprocesses).

One uninterrupted reference run is shared by the tests of this file: resume
after SIGKILL, corrupted checkpoints, eval.py's pycocotools mAP, demo.py,
and multi-device / multi-process runs all compare against it.
"""
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from tests.conftest import REPO

STEPS = 200   # configs/tiny.py: checkpoints at 50, 100, 150, 200
COMMON = ["--config=configs/tiny.py", "--config.checkpoint.async_save=false"]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  return env


def run(script, args, timeout=600, check=True):
  proc = subprocess.run([sys.executable, script] + args, cwd=REPO,
                        env=_env(), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc


def final_params(workdir, step=None):
  """Every model array of a workdir's checkpoint, flattened by path (read
  from a subprocess, written outside the workdir: workers share some)."""
  out = os.path.join(tempfile.mkdtemp(), "final.npz")
  code = f"""
import numpy as np, orbax.checkpoint as ocp, os, jax
d = os.path.join({workdir!r}, "checkpoints")
m = ocp.CheckpointManager(d)
step = {step!r} or max(m.all_steps())
one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
r = m.restore(step, args=ocp.args.Composite(
    model=ocp.args.StandardRestore(fallback_sharding=one)))
flat = {{jax.tree_util.keystr(k): np.asarray(v) for k, v in
        jax.tree_util.tree_flatten_with_path(r["model"])[0]}}
np.savez({out!r}, **flat)
print(step)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as z:
    return int(proc.stdout.split()[-1]), {k: z[k] for k in z.files}


@contextlib.contextmanager
def _shared(tmp_path_factory, name):
  """A folder shared by the xdist workers of this run, built once: yields
  ``(path, built)``; the caller builds it when ``built`` is False, under a
  lock the other workers wait on."""
  base = tmp_path_factory.getbasetemp().parent
  done = base / f"{name}.done"
  with open(base / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield str(base / name), done.exists()
      done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  """The tiny config's synthetic images, written once per test run."""
  with _shared(tmp_path_factory, "tiny_shapes") as (root, built):
    if not built:
      from configs import tiny
      from frcnn_jax.data import shapes
      c = tiny.get_config()
      shapes.ensure_shapes_dataset(root, c.data.shapes, c.seed)
  return root


# What the reference run printed (stdout), for the console tests.
REFERENCE_OUTPUT = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
  """One uninterrupted 200-step run, shared by every worker (read only)."""
  with _shared(tmp_path_factory, "tiny_reference") as (workdir, built):
    stdout = workdir + ".stdout"
    if not built:
      proc = run("train.py", COMMON + [f"--workdir={workdir}",
                                       f"--config.data.root={data_root}"])
      with open(stdout, "w") as f:
        f.write(proc.stdout)
    with open(stdout) as f:
      REFERENCE_OUTPUT["stdout"] = f.read()
  return workdir


def assert_same_params(a, b, rtol=0.0, atol=0.0):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


def test_train_writes_everything(reference):
  files = os.listdir(reference)
  for f in ("checkpoints", "metrics.jsonl", "loss_curves.png", "config.json",
            "tensorboard"):
    assert f in files, files
  steps = sorted(int(s) for s in os.listdir(
      os.path.join(reference, "checkpoints")) if s.isdigit())
  assert steps == [100, 150, 200]   # max_to_keep 3
  rows = [json.loads(l) for l in open(os.path.join(reference,
                                                    "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(10, STEPS + 1, 10))
  for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box",
            "loss_total", "lr", "images_per_sec", "data_wait_ms"):
    assert all(np.isfinite(r[f"train/{k}"]) for r in rows), k
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      os.path.join(reference, "tensorboard"))
  acc.Reload()
  assert "train/loss_total" in acc.Tags()["scalars"]
  with open(os.path.join(reference, "loss_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The console of a run whose output is not a terminal: plain lines, one
  # per log interval, then the closing summary.
  out = REFERENCE_OUTPUT["stdout"]
  assert "\r" not in out
  lines = [l for l in out.splitlines() if l.startswith("step ")]
  assert [int(l.split()[1].split("/")[0]) for l in lines] == list(
      range(10, STEPS + 1, 10))
  for l, r in zip(lines, rows):
    assert f"loss {r['train/loss_total']:.4f} (rpn_cls " in l, l
    assert " img/s " in l and "ms/step" in l and " eta " in l, l
  assert f"done: {STEPS} steps (0 -> {STEPS}) in " in out
  assert (f"next: python eval.py --config=configs/tiny.py "
          f"--config.checkpoint.async_save=false --config.data.root="
          f"{data_root_of(reference)} --workdir={reference}") in out
  assert f"{reference}/checkpoints  (steps 100, 150, 200)" in out


def data_root_of(workdir):
  return json.load(open(os.path.join(workdir, "config.json")))["data"]["root"]


def test_eval_reports_coco_map(reference, data_root, tmp_path):
  # Evaluated on the training images: a short run memorises them well
  # enough for a clearly non-zero AP (a random model scores ~0).
  proc = run("eval.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                         f"--config.data.root={data_root}", "--split=train",
                         "--vis=2", f"--out={tmp_path}"])
  assert (" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | "
          "maxDets=100 ] = ") in proc.stdout       # pycocotools' own line
  m = json.load(open(tmp_path / "metrics.json"))
  assert m["num_images"] == 24
  assert m["coco"]["AP50"] > 0.15, m["coco"]
  dets = json.load(open(tmp_path / "detections.json"))
  assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0])
  assert len(os.listdir(tmp_path / "vis")) == 2


def test_demo_images_keep_names_and_formats(reference, data_root, tmp_path):
  """a.jpg and a.png both come back, in their formats; the json holds only
  what scores at least --score_thresh; an image file works alone too."""
  from PIL import Image
  src = tmp_path / "in"
  src.mkdir()
  val = os.path.join(data_root, "val")
  first = sorted(f for f in os.listdir(val) if f.endswith(".png"))[:2]
  pixels = [np.asarray(Image.open(os.path.join(val, f)).convert("RGB"))
            for f in first]
  Image.fromarray(pixels[0]).save(src / "a.jpg", quality=95)
  Image.fromarray(pixels[1]).save(src / "a.png")
  Image.fromarray(pixels[0][:16, :24]).save(src / "tiny.png")  # 24 x 16
  (src / "notes.txt").write_text("not an image")
  out = tmp_path / "demo"
  run("demo.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                  f"--config.data.root={data_root}", f"--images={src}",
                  f"--out={out}", "--score_thresh=0.3"])
  assert sorted(os.listdir(out)) == ["a.jpg", "a.png", "detections.json",
                                     "tiny.png"]
  assert Image.open(out / "a.jpg").format == "JPEG"
  assert Image.open(out / "a.png").format == "PNG"
  # Small pictures are drawn enlarged (integer factor) with label margins.
  w, h = Image.open(out / "tiny.png").size
  assert w == 24 * 14 and h > 16 * 14, (w, h)
  dets = json.load(open(out / "detections.json"))
  assert set(dets) == {"a.jpg", "a.png", "tiny.png"}
  scores = [d["score"] for v in dets.values() for d in v]
  assert scores and min(scores) >= 0.3
  d = next(v for v in dets.values() if v)[0]
  assert {"box", "score", "class", "class_id"} <= set(d)
  low = tmp_path / "low"
  run("demo.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                  f"--config.data.root={data_root}", f"--images={src}/a.png",
                  f"--out={low}", "--score_thresh=0.0"])
  many = json.load(open(low / "detections.json"))["a.png"]
  assert len(many) > len(dets["a.png"])   # Lower threshold, more kept.
  # What the Python API finds in the same file (both run eval_lib.Predictor,
  # the API sorts by score).
  from frcnn_jax.inference import Detector
  api = Detector.load(reference)(str(src / "a.png"))
  want = sorted((c, round(float(s), 5), [round(float(x), 2) for x in b])
                for c, s, b in zip(api.labels, api.scores, api.boxes))
  assert sorted((d["class"], d["score"], d["box"]) for d in many) == want
  # The output folder may not be the input folder (it would overwrite).
  proc = run("demo.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                         f"--config.data.root={data_root}",
                         f"--images={src}", f"--out={src}"], check=False)
  assert proc.returncode == 2 and "replace the images" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_demo_video(reference, data_root, tmp_path):
  """A generated video in, a drawn video and per-frame detections out."""
  cv2 = pytest.importorskip("cv2")
  from PIL import Image
  val = os.path.join(data_root, "val")
  frame = np.asarray(Image.open(os.path.join(val, sorted(
      f for f in os.listdir(val) if f.endswith(".png"))[0])).convert("RGB"))
  h, w = frame.shape[:2]
  path = str(tmp_path / "clip.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0,
                           (w, h))
  for i in range(7):
    writer.write(cv2.cvtColor(np.roll(frame, 2 * i, axis=1),
                              cv2.COLOR_RGB2BGR))
  writer.release()
  out = tmp_path / "demo"
  run("demo.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                  f"--config.data.root={data_root}", f"--video={path}",
                  f"--out={out}", "--score_thresh=0.0"])
  result = json.load(open(out / "detections.json"))
  assert [f["frame"] for f in result["frames"]] == list(range(7))
  assert result["fps"] == pytest.approx(5.0)
  assert any(f["detections"] for f in result["frames"])
  cap = cv2.VideoCapture(str(out / "clip_detections.avi"))
  n = 0
  while cap.read()[0]:
    n += 1
  from frcnn_jax import vis
  scale = vis.display_scale(h, w, 320)     # Small frames are enlarged.
  assert n == 7 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == w * scale
  proc = run("demo.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                         f"--video={tmp_path / 'none.mp4'}"], check=False)
  assert proc.returncode == 2 and "no such file" in proc.stderr


def test_user_errors_are_one_message_and_exit_code_2(reference, tmp_path):
  """Mistakes on the command line: one message, exit code 2, no traceback."""
  cases = [
      ("train.py", ["--config=configs/tiny.py", "--config.train.num_stepz=3"],
       'Did you mean "num_steps"'),
      ("train.py", ["--config=tiny", "--config.trian.num_steps=3"],
       "--config.trian.num_steps: no such config key"),
      ("train.py", ["--config=tiny", "--config.train.num_steps=abc"],
       "--config.train.num_steps=abc"),
      ("train.py", ["--config=tiny", "--config.train.batch_size=0"],
       "config.train.batch_size"),
      ("train.py", ["--config=configs/nope.py"], "no built-in config"),
      ("train.py", ["--bogus"], "Unknown command line flag 'bogus'"),
      ("eval.py", [f"--workdir={tmp_path / 'nowhere'}"], "no such folder"),
      ("eval.py", [f"--workdir={reference}", "--step=123"],
       "no checkpoint step 123"),
      ("demo.py", [f"--workdir={reference}", "--images=/nonexistent/x"],
       "--images=/nonexistent/x: no such folder or file"),
  ]
  for script, args, message in cases:
    proc = run(script, args, check=False, timeout=300)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert message in proc.stderr, (args, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, (args, proc.stderr[-3000:])
  assert "saved steps: [100, 150, 200]" in run(
      "eval.py", [f"--workdir={reference}", "--step=123"],
      check=False).stderr


def test_help_and_print_config():
  proc = run("train.py", ["--help"])
  for flag in ("--[no]allow_config_change", "--config", "--workdir",
               "--[no]print_config"):
    assert flag in proc.stdout, flag
  assert "--print_config prints every key" in proc.stdout
  assert "--helpfull" in proc.stdout and len(proc.stdout.splitlines()) < 120
  proc = run("eval.py", ["--help"])
  for flag in ("--split", "--vis", "--step", "--workdir", "--config"):
    assert flag in proc.stdout, flag
  proc = run("train.py", ["--config=tiny", "--config.optimizer.lr=0.5",
                          "--print_config"])
  lines = proc.stdout.splitlines()
  lr = next(l for l in lines if l.startswith("optimizer.lr "))
  assert "= 0.5" in lr
  steps = next(l for l in lines if l.startswith("train.num_steps "))
  assert "#" in steps        # Its comment from configs/common.py.
  assert len([l for l in lines if " = " in l]) > 100


def test_resume_with_another_config(reference, data_root, tmp_path):
  """A resume whose config differs where it matters is refused with the
  keys and the ways out; allowed changes need the flag and are recorded."""
  import shutil
  work = str(tmp_path / "w")
  shutil.copytree(reference, work)
  base = COMMON + [f"--workdir={work}", f"--config.data.root={data_root}"]
  proc = run("train.py", base + ["--config.rpn.conv_channels=8"],
             check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "rpn.conv_channels" in proc.stderr and "fixed" in proc.stderr
  assert f"--workdir={work}_2" in proc.stderr
  # Refused, not damaged: nothing moved aside, every checkpoint still there.
  assert _checkpoint_steps(work) == [100, 150, STEPS]
  assert not os.path.exists(os.path.join(work, "checkpoints.unreadable"))
  proc = run("train.py", base + ["--config.optimizer.lr=0.01"], check=False)
  assert proc.returncode == 2 and "--allow_config_change" in proc.stderr
  assert "optimizer.lr" in proc.stderr and "0.04 -> 0.01" in proc.stderr
  assert "Traceback" not in proc.stderr
  # Allowed: resumes at the last step (nothing left to train), recorded.
  run("train.py", base + ["--config.optimizer.lr=0.01",
                          "--allow_config_change"])
  runs = [json.loads(l) for l in open(os.path.join(work, "runs.jsonl"))]
  assert [r["start_step"] for r in runs] == [0, STEPS]
  assert runs[1]["config_changes"]["optimizer.lr"] == [0.04, 0.01]
  assert "--allow_config_change" in runs[1]["argv"]
  assert json.load(open(os.path.join(work, "config.json")))[
      "optimizer"]["lr"] == 0.01
  # Free keys (logging, evaluation) change without the flag. (The
  # checkpoint at step 200 was still trained with lr 0.04.)
  run("train.py", base + ["--config.train.log_every=5"])


def _jsonl_steps(workdir, key="train/loss_total"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if key in r]


def _tensorboard_steps(workdir, tag="train/loss_total"):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0})
  acc.Reload()
  return [e.step for e in acc.Scalars(tag)]


def _checkpoint_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if s.isdigit())


@pytest.mark.parametrize("when", ["before_first_checkpoint",
                                  "after_first_checkpoint"])
def test_kill9_then_restart_is_exact_and_logs_each_step_once(
    reference, data_root, tmp_path, when):
  """SIGKILL at a random moment, restart: the same weights, each step once.

  Before the first checkpoint (50) the restart starts over and must forget
  the steps the killed attempt logged; after it, it resumes from the
  checkpoint and must not log steps 60.. twice.
  """
  import random
  delay = random.Random(f"{when}-{time.time_ns()}").uniform(0.0, 0.3)
  print(f"kill delay {delay:.3f} s after the trigger")
  workdir = str(tmp_path / "killed")
  args = [sys.executable, "train.py"] + COMMON + [
      f"--workdir={workdir}", f"--config.data.root={data_root}"]
  proc = subprocess.Popen(args, cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = os.path.join(workdir, "metrics.jsonl")
  ckpt50 = os.path.join(workdir, "checkpoints", "50")

  def triggered():
    if when == "after_first_checkpoint":
      return os.path.isdir(ckpt50)
    return os.path.exists(metrics) and os.path.getsize(metrics) > 0

  deadline = time.time() + 400
  while not triggered() and time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(proc.stderr.read().decode()[-3000:])
    time.sleep(0.01)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = _checkpoint_steps(workdir)
  assert STEPS not in done, "killed too late to test resuming"
  if when == "before_first_checkpoint" and done:
    pytest.skip(f"the random kill came after checkpoint {done}")
  proc = run("train.py", COMMON + [f"--workdir={workdir}",
                                   f"--config.data.root={data_root}"])
  assert "took over the lock" in proc.stderr   # the killed run's lock
  step_a, a = final_params(reference)
  step_b, b = final_params(workdir)
  assert step_a == step_b == STEPS
  # Bitwise: the same programs on the same inputs, with the RNG folded from
  # the step and the data position restored from the checkpoint.
  assert_same_params(a, b)
  assert _jsonl_steps(workdir) == list(range(10, STEPS + 1, 10))
  assert _tensorboard_steps(workdir) == list(range(10, STEPS + 1, 10))


def _copy_run(reference, tmp_path, name):
  import shutil
  workdir = str(tmp_path / name)
  shutil.copytree(reference, workdir)
  return workdir


def test_unreadable_checkpoint_is_moved_aside_and_saved_again(
    reference, data_root, tmp_path):
  workdir = _copy_run(reference, tmp_path, "corrupt")
  model_dir = os.path.join(workdir, "checkpoints", str(STEPS), "model")
  for root, _, files in os.walk(model_dir):
    for f in files:
      if not f.endswith(".json") and "METADATA" not in f:
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))
  # A temporary folder left by a write that was killed.
  leftover = os.path.join(workdir, "checkpoints",
                          "210.orbax-checkpoint-tmp-1733300000")
  os.makedirs(os.path.join(leftover, "model"))
  proc = run("train.py", COMMON + [f"--workdir={workdir}",
                                   f"--config.data.root={data_root}",
                                   f"--config.train.num_steps={STEPS + 20}"])
  assert f"checkpoint step {STEPS} moved aside" in proc.stderr
  aside = os.path.join(workdir, "checkpoints.unreadable")
  (moved,) = os.listdir(aside)
  assert moved.startswith(f"{STEPS}-")
  why = open(os.path.join(aside, moved, "WHY.txt")).read()
  assert "unreadable" in why and f"checkpoints/{STEPS}" in why
  assert os.path.isdir(os.path.join(aside, moved, "model"))  # nothing deleted
  # Resumed from 150: step 200 is saved again normally (the seed of this
  # test: StepAlreadyExistsError), then 220; each metric step once.
  assert _checkpoint_steps(workdir) == [150, STEPS, STEPS + 20]
  assert not os.path.exists(leftover)
  assert _jsonl_steps(workdir) == list(range(10, STEPS + 21, 10))
  assert _tensorboard_steps(workdir) == list(range(10, STEPS + 21, 10))


def test_two_runs_on_one_workdir(data_root, tmp_path):
  workdir = str(tmp_path / "two_writers")
  args = [sys.executable, "train.py"] + COMMON + [
      f"--workdir={workdir}", f"--config.data.root={data_root}",
      "--config.train.num_steps=40"]
  procs = [subprocess.Popen(args, cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], [o[1][-2000:] for o in outs]
  winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
  err = outs[loser][1]
  assert f"in use by another training run: host" in err
  assert f"pid {procs[winner].pid}" in err and "Traceback" not in err
  assert _jsonl_steps(workdir) == [10, 20, 30, 40]


def test_divergence_keeps_the_last_good_checkpoint(reference, data_root,
                                                   tmp_path):
  """A huge lr makes step 201 non-finite: nothing non-finite is saved."""
  workdir = _copy_run(reference, tmp_path, "diverged")
  bad = COMMON + [f"--workdir={workdir}", f"--config.data.root={data_root}",
                  f"--config.train.num_steps={STEPS + 20}",
                  "--config.checkpoint.every_steps=2",
                  "--config.optimizer.lr=1e30", "--allow_config_change",
                  "--config.train.nonfinite_rollbacks=2"]
  proc = run("train.py", bad, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.count(f"rolled back to step {STEPS}") == 2
  assert (f"the last good checkpoint is step {STEPS} in" in proc.stderr and
          "non-finite loss or parameters at step" in proc.stderr)
  assert _checkpoint_steps(workdir) == [100, 150, STEPS]
  _, params = final_params(workdir)
  assert all(np.isfinite(v).all() for v in params.values())
  assert _jsonl_steps(workdir) == list(range(10, STEPS + 1, 10))
  # Diverging before any checkpoint: nothing is saved at all.
  fresh = str(tmp_path / "diverged_fresh")
  proc = run("train.py", COMMON + [f"--workdir={fresh}",
                                   f"--config.data.root={data_root}",
                                   "--config.optimizer.lr=1e30",
                                   "--config.train.num_steps=20"],
             check=False)
  assert proc.returncode == 1 and "there is no checkpoint yet" in proc.stderr
  assert not os.path.isdir(os.path.join(fresh, "checkpoints")) or not \
      _checkpoint_steps(fresh)


def test_image_list_json_is_evaluated_without_ap(reference, data_root,
                                                 tmp_path):
  """A COCO json without annotations (test-dev): detections, no AP."""
  root = tmp_path / "testdev_root"
  (root / "annotations").mkdir(parents=True)
  d = json.load(open(os.path.join(data_root, "annotations",
                                  "instances_val.json")))
  del d["annotations"]
  json.dump(d, open(root / "annotations" / "instances_testdev.json", "w"))
  os.symlink(os.path.join(data_root, "val"), root / "testdev")
  out = tmp_path / "out"
  proc = run("eval.py", ["--config=configs/tiny.py", f"--workdir={reference}",
                         "--config.data.name=coco",
                         f"--config.data.root={root}", "--split=testdev",
                         f"--out={out}"])
  assert "no AP computed" in proc.stdout
  assert "Average Precision" not in proc.stdout
  dets = json.load(open(out / "detections.json"))
  assert {r["image_id"] for r in dets} <= {im["id"] for im in d["images"]}
  assert dets and "coco" not in json.load(open(out / "metrics.json"))
  # Training on it is refused with the reason.
  proc = run("train.py", COMMON + [f"--workdir={tmp_path / 'w'}",
                                   "--config.data.name=coco",
                                   f"--config.data.root={root}",
                                   "--config.data.train_split=testdev"],
             check=False)
  assert proc.returncode != 0 and "image list" in proc.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_of_two_devices_match_one_device(data_root, tmp_path):
  """5 steps on 1 device and on 2 processes x 2 devices (4 devices in one
  process: tests/modeling/test_detector.py), on one canvas bucket.

  The same math with a different reduction order: float-level differences
  (~1e-7 relative per step). After a few dozen steps one of them flips a
  discrete choice (an IoU at a threshold, a top-k tie; measured: step 11 to
  23 on this config) and the runs then drift apart like any two chaotic
  trajectories, so the comparison is kept short.
  """
  args = COMMON + [f"--config.data.root={data_root}",
                   "--config.train.num_steps=5",
                   "--config.data.buckets=((128, 128),)"]
  one = str(tmp_path / "one")
  run("train.py", args + [f"--workdir={one}"])
  two = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "train.py"] + args + [
          f"--workdir={two}", "--num_cpu_devices=2",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}"], cwd=REPO, env=_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-4000:]
  _, p1 = final_params(one)
  _, p22 = final_params(two)
  assert_same_params(p1, p22, rtol=1e-4, atol=1e-6)


def test_rollback_skips_the_bad_batch_and_goes_on(data_root, tmp_path,
                                                  monkeypatch, caplog):
  """One image makes its batch non-finite: each time it comes up, the run
  rolls back to its last good checkpoint, skips that batch and goes on."""
  import jax.numpy as jnp
  from configs import tiny
  from frcnn_jax import train_lib
  real = train_lib.make_train_step
  bad_image = 3

  def poisoned(graphdef, tx, schedule):
    step = real(graphdef, tx, schedule)

    def wrapped(state, batch):
      new, metrics = step(state, batch)
      hit = jnp.any(batch["image_id"] == bad_image)
      new = new.replace(params=jax.tree.map(
          lambda p: jnp.where(hit, jnp.nan, p), new.params))
      return new, dict(metrics, finite=metrics["finite"] & ~hit,
                       loss_total=jnp.where(hit, jnp.nan,
                                            metrics["loss_total"]))
    return wrapped

  import jax
  monkeypatch.setattr(train_lib, "make_train_step", poisoned)
  c = tiny.get_config()
  c.data.root = data_root
  c.train.num_steps = 14             # 6 steps per epoch: 3 epochs
  c.train.log_every = 1
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  c.train.nonfinite_rollbacks = 5
  workdir = str(tmp_path / "rollback")
  with caplog.at_level("WARNING"):
    train_lib.train(c, workdir)
  rolled = [m for m in caplog.messages if "rolled back" in m]
  assert 1 <= len(rolled) <= 5, caplog.messages
  _, params = final_params(workdir)
  assert all(np.isfinite(v).all() for v in params.values())
  assert _jsonl_steps(workdir) == list(range(1, 15))
  assert _tensorboard_steps(workdir) == list(range(1, 15))
  # The skipped batches are exactly those that held the bad image.
  meta = json.load(open(os.path.join(workdir, "checkpoints", "14", "meta",
                                     "metadata")))
  from frcnn_jax import data as data_lib
  loader = data_lib.build_train_loader(c.data, seed=c.seed,
                                       global_batch_size=4)
  skipped = meta["skipped_batches"]
  assert len(skipped) == len(rolled)
  for pos in range(meta["data_iter"]["step"]):
    _, ids = loader.global_batch_plan(pos)
    assert (bad_image in ids.tolist()) == (pos in skipped), pos


LOSSES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")


def _counting_step(graphdef, tx, schedule):
  """A stand-in train step (no model compute): loss k of step s (1-based)
  is (k + 1) * s, so the mean over an interval is known by hand."""
  import jax.numpy as jnp

  def step(state, batch):
    s = (state.step + 1).astype(jnp.float32)
    m = {k: (i + 1) * s for i, k in enumerate(LOSSES)}
    m.update(loss_total=10 * s, grad_norm=s, lr=schedule(state.step),
             finite=jnp.asarray(True))
    return state.replace(step=state.step + 1), m
  return step


def _small_config(data_root, **train):
  from configs import tiny
  c = tiny.get_config()
  c.data.root = data_root
  c.train.num_steps = 20
  c.train.log_every = 10
  c.checkpoint.every_steps = 10
  c.checkpoint.async_save = False
  for k, v in train.items():
    c.train[k] = v
  return c


def test_console_and_logs_are_interval_means(data_root, tmp_path,
                                             monkeypatch, capsys):
  """Every logged loss is the mean of its interval's steps; plain lines
  when stdout is no terminal; without matplotlib the run still ends and
  says how to get the plot."""
  import sys
  from frcnn_jax import train_lib
  monkeypatch.setattr(train_lib, "make_train_step", _counting_step)
  monkeypatch.setitem(sys.modules, "matplotlib", None)   # not installed
  workdir = str(tmp_path / "means")
  train_lib.train(_small_config(data_root), workdir, eval_command="EVAL")
  out = capsys.readouterr().out
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20]
  for r, steps in zip(rows, (range(1, 11), range(11, 21))):
    mean = float(np.mean(list(steps)))
    for i, k in enumerate(LOSSES):
      assert r[f"train/{k}"] == pytest.approx((i + 1) * mean), k
    assert r["train/loss_total"] == pytest.approx(10 * mean)
  # lr is the last step's (warmup 10 steps to 0.04, then flat).
  assert rows[0]["train/lr"] == pytest.approx(0.04 * (1 / 3 + 2 / 3 * 0.9))
  assert "\r" not in out
  lines = [l for l in out.splitlines() if l.startswith("step ")]
  assert len(lines) == 2
  assert lines[0].startswith("step 10/20  ep 1.67  loss 55.0000 (rpn_cls "
                             "5.5000 rpn_box 11.0000 cls 16.5000 box "
                             "22.0000)  lr ")
  assert "done: 20 steps (0 -> 20) in " in out and "next: EVAL" in out
  assert "curves       not drawn: pip install matplotlib" in out
  assert not os.path.exists(os.path.join(workdir, "loss_curves.png"))
  assert "no evaluation during training" in out


def test_best_checkpoints_follow_the_eval_metric(data_root, tmp_path,
                                                 monkeypatch, capsys):
  """checkpoint.keep_best=2 keeps the two best evaluated states by AP in
  <workdir>/best (a model folder inference reads); a resumed run forgets
  the best states after its checkpoint and evaluates those steps again."""
  from frcnn_jax import eval_lib, train_lib
  monkeypatch.setattr(train_lib, "make_train_step", _counting_step)
  ap_of = {10: 0.3, 20: 0.5, 30: 0.4}

  def fake_evaluate(predict_fn, params, rest, loader, mesh, **kw):
    step = int(kw["desc"].split("@")[1])
    ap = ap_of[step]
    return {"num_images": 8, "num_detections": 3,
            "coco": {"AP": ap, "AP50": ap, "AP75": ap,
                     "summary": [f"fake summary AP={ap}"]}}

  monkeypatch.setattr(train_lib.eval_lib, "evaluate", fake_evaluate)
  c = _small_config(data_root, num_steps=30, eval_every=10)
  c.checkpoint.keep_best = 2
  workdir = str(tmp_path / "best")
  train_lib.train(c, workdir, eval_command="EVAL")
  out = capsys.readouterr().out
  assert "fake summary AP=0.5" in out                   # printed when run
  best = os.path.join(workdir, "best", "checkpoints")
  assert _checkpoint_dirs(best) == [20, 30]
  meta = json.load(open(os.path.join(best, "20", "meta", "metadata")))
  assert meta["best_metric"] == "AP" and meta["best_value"] == 0.5
  assert f"{workdir}/best  (step 20, AP 0.5000)" in out
  evals = [json.loads(l) for l in open(os.path.join(workdir,
                                                    "metrics.jsonl"))
           if "eval/AP" in l]
  assert [(r["step"], r["eval/AP"]) for r in evals] == [
      (10, 0.3), (20, 0.5), (30, 0.4)]
  # Inference reads the best folder like any model folder.
  _, _, _, step, names = eval_lib.load_for_inference(
      c, os.path.join(workdir, "best"), step=20)
  assert step == 20 and names[1:] == ["circle", "square", "triangle"]
  # Resume from step 20 (checkpoint 30 lost): best 30 is forgotten, and
  # step 30, evaluated again with another result, replaces it.
  import shutil
  shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
  ap_of[30] = 0.45
  train_lib.train(c, workdir, eval_command="EVAL")
  assert _checkpoint_dirs(best) == [20, 30]
  meta = json.load(open(os.path.join(best, "30", "meta", "metadata")))
  assert meta["best_value"] == 0.45


def _checkpoint_dirs(path):
  return sorted(int(s) for s in os.listdir(path) if s.isdigit())


def test_next_eval_command():
  from frcnn_jax import train_lib
  argv = ["train.py", "--config=configs/voc07_res101.py",
          "--config.optimizer.lr=0.01", "--num_cpu_devices=4",
          "--config", "ignored_second_form.py"]
  assert train_lib.next_eval_command("runs/x", argv) == (
      "python eval.py --config=configs/voc07_res101.py "
      "--config.optimizer.lr=0.01 --config=ignored_second_form.py "
      "--workdir=runs/x")
  assert train_lib.next_eval_command("w", ["/src/train.py", "--config=a b"]) \
      == "python /src/eval.py '--config=a b' --workdir=w"
  assert train_lib.next_eval_command("w", ["pytest"]) == (
      "python eval.py --config=<the config file> --workdir=w")


def test_evaluation_times_compilation_apart():
  """predict_dataset counts the first batch of every new shape (it traces
  and compiles) as compilation, once per shape over calls."""
  from frcnn_jax import eval_lib, parallel
  mesh = parallel.create_mesh(1)
  compiled = set()

  def predict(params, rest, image, im_info, image_id):
    if image.shape not in compiled:     # a stand-in for jit compilation
      compiled.add(image.shape)
      time.sleep(0.3)
    n = image.shape[0]
    return dict(boxes=np.zeros((n, 1, 4)), scores=np.zeros((n, 1)),
                classes=np.ones((n, 1), int), valid=np.zeros((n, 1), bool),
                image_id=image_id)

  def batch(i, w):
    return dict(image=np.zeros((1, 8, w, 3), np.uint8),
                im_info=np.ones((1, 3), np.float32),
                image_id=np.array([i], np.int32))

  loader = [batch(0, 8), batch(1, 8), batch(2, 16), batch(3, 8)]
  timing = {}
  out = eval_lib.predict_dataset(predict, None, None, loader, mesh,
                                 timing=timing)
  assert out["image_id"].tolist() == [0, 1, 2, 3]
  assert 0.6 <= timing["compile_s"] < 1.5
  eval_lib.predict_dataset(predict, None, None, loader, mesh, timing=timing)
  assert timing["compile_s"] < 1.5          # nothing new the second time
