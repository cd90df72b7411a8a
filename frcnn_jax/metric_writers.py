"""Training/eval metric logging: TensorBoard event files and metrics.jsonl.

Layout under `workdir`:
  workdir/tensorboard/events.out.tfevents.*   scalars (and images) for TensorBoard
  workdir/metrics.jsonl                       one JSON object per write:
      {"step": 120, "wall_time": 1767312000.5, "train/loss_total": 1.23,
       "train/lr": 0.001, ...}

Names: one name per metric, the same in both files. The callers group them
the way TensorBoard shows them, by the part before the first "/"
(``train/loss_total``, ``train/lr``, ``eval/AP``); this module writes the
names it is given.

TensorBoard files are written with the ``tensorboard`` package's own record
writer and protos (no TensorFlow, no tensorboardX): every write is appended
and flushed at once (a handful of small records per log interval), so a
crash loses nothing that was logged. Event files are named
``events.out.tfevents.<seconds>.<nanoseconds>.<host>.<pid>``: unique, and in
chronological order when sorted, which is the order TensorBoard reads them
in (a purge in a later file hides the steps of earlier ones).

Multi-host: every process may construct a `MetricWriter` and call it; only
the one with `process_index == 0` writes (the others do nothing and create
no files), so callers need no `if` around logging. Values should already be
global (reduced across devices/hosts) when they are logged.

Resume: construct with `resume_step=S`, the step of the restored checkpoint.
metrics.jsonl is then rewritten keeping only lines with step <= S (and
dropping a last line cut short by the crash), so the steps S+1.. that the
crashed run logged after its last checkpoint are not duplicated when the
resumed run logs them again; new lines are appended. For TensorBoard the
writer opens a new event file with `purge_step=S + 1`: TensorBoard hides
events with step > S from the earlier files (the event files themselves are
append-only and are not edited). A run that starts from scratch passes
`resume_step=0`, so the lines of an earlier attempt killed before its first
checkpoint are dropped too; `resume_step=None` appends to whatever is there.
`rewind(S)` does the same in the middle of a run (a rollback to step S).
"""
from __future__ import annotations

import io
import json
import math
import numbers
import os
import socket
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_python_scalar(name: str, value: Any) -> float | int:
  """A scalar (Python, numpy, 0-d/1-element jax/numpy array) -> int or float."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(f"metric '{name}' is not a scalar (shape {arr.shape})")
  item = arr.reshape(()).item()
  if isinstance(item, bool):
    return int(item)
  if isinstance(item, numbers.Integral):
    return int(item)
  return float(item)


def _json_value(v: float | int) -> float | int | None:
  """NaN/inf are not valid JSON: they are written as null."""
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def truncate_jsonl(path: str, max_step: int) -> int:
  """Rewrites a metrics.jsonl keeping the records with step <= max_step.

  Lines that do not parse (a write cut short by a crash) or have no integer
  "step" are dropped too. The rewrite is atomic (temporary file +
  os.replace). A missing file is left missing.

  Returns:
    The number of lines dropped.
  """
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, "r", encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      step = rec.get("step") if isinstance(rec, dict) else None
      if isinstance(step, int) and step <= max_step:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return dropped


class EventFile:
  """One TensorBoard event file, written synchronously (append + flush).

  Scalars are legacy ``simple_value`` summaries, images PNG-encoded
  ``Summary.Image`` s, text the text plugin's tensor summaries: what
  TensorBoard's ``EventAccumulator`` and the web UI read.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    ns = time.time_ns()
    name = (f"events.out.tfevents.{ns // 10**9:010d}.{ns % 10**9:09d}."
            f"{socket.gethostname()}.{os.getpid()}")
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._records = RecordWriter(self._file)
    self._add(event_pb2.Event(wall_time=time.time(),
                              file_version="brain.Event:2"))
    if purge_step is not None:
      # TensorBoard drops the events with step >= purge_step that it read
      # before this one (from this run's earlier files).
      self._add(event_pb2.Event(
          wall_time=time.time(), step=int(purge_step),
          session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))
    self.flush()

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())

  def add_summary(self, summary, step: int, wall_time: float) -> None:
    self._add(event_pb2.Event(wall_time=wall_time, step=int(step),
                              summary=summary))

  def scalars(self, step: int, values: Mapping[str, float],
              wall_time: float) -> None:
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items()])
    self.add_summary(summary, step, wall_time)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """``image``: uint8 [H, W, C] with C in (1, 3, 4)."""
    h, w, c = image.shape
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if c == 1 else image).save(buf, format="PNG")
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, image=summary_pb2.Summary.Image(
            height=h, width=w, colorspace=c,
            encoded_image_string=buf.getvalue()))])
    self.add_summary(summary, step, time.time())

  def text(self, tag: str, text: str, step: int) -> None:
    self.add_summary(text_summary.text_pb(tag, text), step, time.time())

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.flush()
      self._records.close()


class MetricWriter:
  """Writes scalars to TensorBoard and metrics.jsonl; no-op off process 0.

  Usage:
    writer = MetricWriter(workdir, process_index=jax.process_index(),
                          resume_step=restored_step_or_None)
    writer.write_scalars(step, {"loss_total": 1.2, "lr": 1e-3,
                                "images_per_sec": 5.1})
    writer.flush()   # e.g. at checkpoints
    writer.close()   # or use it as a context manager
  """

  def __init__(
      self,
      workdir: str | os.PathLike,
      *,
      process_index: int,
      resume_step: int | None = None,
      tensorboard: bool = True,
      jsonl_name: str = JSONL_NAME,
      tensorboard_subdir: str = TENSORBOARD_DIR,
  ):
    """Opens (creates or appends to) the metric files of `workdir`.

    Args:
      workdir: the run's directory (created if missing, on process 0).
      process_index: this process's index (`jax.process_index()`); only 0
        writes. Explicit so that this module does not depend on jax state.
      resume_step: step of the checkpoint the run resumes from: drops
        metrics.jsonl lines with step > resume_step and purges TensorBoard
        events after it (see the module docstring). None: plain append.
      tensorboard: also write TensorBoard event files.
      jsonl_name: file name of the JSON-lines log inside workdir.
      tensorboard_subdir: event-file directory inside workdir.
    """
    self.workdir = os.fspath(workdir)
    self.process_index = int(process_index)
    self.active = self.process_index == 0
    self.jsonl_path = os.path.join(self.workdir, jsonl_name)
    self.tensorboard_dir = os.path.join(self.workdir, tensorboard_subdir)
    self._jsonl = None
    self._tb = None
    self._closed = False
    if not self.active:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      truncate_jsonl(self.jsonl_path, int(resume_step))
    elif os.path.exists(self.jsonl_path) and os.path.getsize(self.jsonl_path):
      with open(self.jsonl_path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        partial = f.read(1) != b"\n"
      if partial:  # keep the next record off a line cut short by a crash
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
          f.write("\n")
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if tensorboard:
      self._tb = self._open_tensorboard(
          None if resume_step is None else int(resume_step) + 1)

  def _open_tensorboard(self, purge_step: int | None) -> EventFile:
    return EventFile(self.tensorboard_dir, purge_step)

  def rewind(self, step: int) -> None:
    """Forgets everything logged after ``step`` (a run rolled back to it).

    metrics.jsonl is truncated to the lines with step <= ``step`` and a new
    TensorBoard event file purges the later events, as on a resume.
    """
    if not self.active:
      return
    self._check_open()
    self._jsonl.close()
    truncate_jsonl(self.jsonl_path, int(step))
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if self._tb is not None:
      self._tb.close()
      self._tb = self._open_tensorboard(int(step) + 1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs scalars at `step`: one jsonl line and one TensorBoard point each.

    Args:
      step: the global training step (int).
      scalars: name -> scalar (Python/numpy number or a 0-d / 1-element
        array, jax arrays included: they are fetched to the host). NaN/inf
        go to TensorBoard as they are and to jsonl as null.

    Raises:
      ValueError: a value is not a scalar, or the name "step"/"wall_time" is used.
    """
    if not self.active:
      return
    self._check_open()
    step = int(step)
    values = {}
    for k, v in scalars.items():
      if k in ("step", "wall_time"):
        raise ValueError(f"'{k}' is reserved in metrics.jsonl")
      values[str(k)] = _to_python_scalar(k, v)
    wall = time.time()
    record = {"step": step, "wall_time": round(wall, 3)}
    record.update({k: _json_value(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.scalars(step, values, wall)
      self._tb.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs images ([H, W, 3] uint8 RGB) to TensorBoard only (not jsonl)."""
    if not self.active or self._tb is None:
      return
    self._check_open()
    for k, img in images.items():
      img = np.asarray(img)
      if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image '{k}' must be [H, W, C], got {img.shape}")
      self._tb.image(str(k), np.ascontiguousarray(img.astype(np.uint8)),
                     int(step))
    self._tb.flush()

  def write_text(self, step: int, texts: Mapping[str, str]) -> None:
    """Logs text (e.g. the config, an eval table) to TensorBoard only."""
    if not self.active or self._tb is None:
      return
    self._check_open()
    for k, t in texts.items():
      self._tb.text(str(k), str(t), int(step))
    self._tb.flush()

  def flush(self) -> None:
    """Pushes buffered data to disk (both files)."""
    if not self.active or self._closed:
      return
    self._jsonl.flush()
    os.fsync(self._jsonl.fileno())
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes; further writes raise. Closing twice is fine."""
    if not self.active or self._closed:
      return
    self.flush()
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    self._closed = True

  def _check_open(self):
    if self._closed:
      raise RuntimeError("MetricWriter is closed")

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
