"""Tests for frcnn_jax/console.py: bars only on terminals, rates without
compilation, the log line."""
import io
import math

import pytest

from frcnn_jax import console


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_format_duration():
  assert console.format_duration(3.14) == "3.1s"
  assert console.format_duration(42) == "42s"
  assert console.format_duration(75.2) == "1m15s"
  assert console.format_duration(4000) == "1h06m"
  assert console.format_duration(3 * 86400 + 7200) == "3d02h"
  assert console.format_duration(None) == "?"
  assert console.format_duration(math.nan) == "?"


def test_plain_lines_without_a_terminal():
  out, err = io.StringIO(), io.StringIO()
  with console.Progress(10, stream=out, bar_stream=err) as p:
    assert not p.has_bar
    for i in range(10):
      p.update(1)
      p.postfix(loss=1.0)
      if i % 5 == 4:
        p.line(f"line {i}")
  assert out.getvalue() == "line 4\nline 9\n"
  assert err.getvalue() == ""


def test_bar_on_a_terminal_keeps_lines_whole():
  out, err = io.StringIO(), _Terminal()
  with console.Progress(10, stream=out, bar_stream=err, desc="train") as p:
    assert p.has_bar
    p.update(3)
    p.line("a whole line")
  assert "\r" in err.getvalue() and "train" in err.getvalue()
  assert out.getvalue() == "a whole line\n"
  # Disabled (processes other than 0): nothing anywhere.
  out, err = io.StringIO(), _Terminal()
  with console.Progress(10, stream=out, bar_stream=err, enabled=False) as p:
    p.update(1)
    p.line("x")
  assert out.getvalue() == err.getvalue() == ""


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_rate_meter_excludes_compilation_and_pauses():
  clock = _Clock()
  m = console.RateMeter(images_per_step=4, clock=clock)
  # 10 steps: 0.01 s data wait, dispatch 0.1 s; the first and the sixth
  # (a new bucket) compile for 5 s and 2 s.
  for i in range(10):
    t = m.now()
    clock.t += 0.01
    t1 = m.data_done(t)
    clock.t += {0: 5.0, 5: 2.0}.get(i, 0.1)
    m.step_done(t1, compiled=i in (0, 5))
    if i == 3:                       # an evaluation: not training time
      m.pause()
      clock.t += 30.0
      m.resume()
  r = m.interval()
  train_s = 10 * 0.01 + 8 * 0.1
  assert r["steps"] == 10 and r["compile_s"] == pytest.approx(7.0)
  assert r["seconds"] == pytest.approx(train_s + 7.0)
  assert r["images_per_sec"] == pytest.approx(40 / train_s)
  assert r["data_wait_ms"] == pytest.approx(10.0)
  assert m.seconds_per_step() == pytest.approx(train_s / 10)
  # An interval of compilation only has no rate (not a huge or tiny one).
  t1 = m.data_done(m.now())
  clock.t += 3.0
  m.step_done(t1, compiled=True)
  assert math.isnan(m.interval()["images_per_sec"])
  assert m.total_compile_s == pytest.approx(10.0)


def test_format_train_line():
  line = console.format_train_line(
      120, 2000, {"loss_total": 0.8123, "loss_rpn_cls": 0.1, "loss_cls": 0.5},
      lr=0.02, rate={"images_per_sec": 24.06, "data_wait_ms": 3.2},
      eta_s=372, epoch=1.5)
  assert line == ("step  120/2000  ep 1.50  loss 0.8123 (rpn_cls 0.1000 cls "
                  "0.5000)  lr 0.02  24.1 img/s  data 3ms/step  eta 6m12s")
  line = console.format_train_line(1, 10, {}, lr=1e-3,
                                   rate={"images_per_sec": math.nan},
                                   eta_s=None)
  assert "- img/s" in line and "eta ?" in line
