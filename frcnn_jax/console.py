"""What a run prints: progress bars on a terminal, plain lines in a log.

A bar (tqdm, on stderr) is drawn only when stderr is a terminal; anywhere
else (a file, a pipe, a job scheduler's log) nothing but whole lines is
written (to stdout), so a log never fills with carriage returns. :class:`Progress` is that
choice in one object: ``update`` moves the bar (a no-op without one),
``line`` prints a line above the bar or plainly.

:class:`RateMeter` measures throughput as a user means it: wall time minus
the time spent compiling (the first step of every new input shape traces
and compiles the jitted step) and minus evaluation pauses, so images/s and
the ETA are right from the first log line and not skewed by a minute of
XLA compilation.

Host-side only; imports no project code.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping, TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO | None = None) -> bool:
  """True when ``stream`` (default stdout) is an interactive terminal."""
  stream = sys.stdout if stream is None else stream
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # closed or not a real stream
    return False


def format_duration(seconds: float | None) -> str:
  """``75.2`` -> ``'1m15s'``; ``4000`` -> ``'1h06m'``; None/inf -> ``'?'``."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  if s < 60:
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
  m, s = divmod(s, 60)
  if m < 60:
    return f"{m}m{s:02d}s"
  h, m = divmod(m, 60)
  if h < 48:
    return f"{h}h{m:02d}m"
  d, h = divmod(h, 24)
  return f"{d}d{h:02d}h"


class Progress:
  """A tqdm bar on a terminal, plain lines elsewhere.

  Args:
    total: the bar's total (steps, batches).
    initial: where the bar starts (a resumed run).
    desc: the bar's label.
    unit: tqdm unit.
    enabled: False prints nothing at all (processes other than 0).
    bar: force a bar (True) or none (False); default: when ``bar_stream``
      is a terminal.
    stream: where lines go (default: stdout).
    bar_stream: where the bar goes (default: stderr).
  """

  def __init__(self, total: int, *, initial: int = 0, desc: str = "",
               unit: str = "it", enabled: bool = True,
               bar: bool | None = None, stream: TextIO | None = None,
               bar_stream: TextIO | None = None):
    self.enabled = enabled
    self.stream = stream
    bar_stream = sys.stderr if bar_stream is None else bar_stream
    use_bar = enabled and (is_terminal(bar_stream) if bar is None else bar)
    self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit,
                      file=bar_stream, dynamic_ncols=True, leave=False)
                 if use_bar else None)

  @property
  def has_bar(self) -> bool:
    return self._bar is not None

  def reset(self, total: int, initial: int = 0) -> None:
    if self._bar is not None:
      self._bar.reset(total=total)
      self._bar.update(initial)

  def update(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def postfix(self, **values: Any) -> None:
    if self._bar is not None:
      self._bar.set_postfix(values, refresh=False)

  def line(self, text: str) -> None:
    """Prints ``text`` (whole lines) above the bar, or plainly."""
    if not self.enabled:
      return
    stream = sys.stdout if self.stream is None else self.stream
    if self._bar is not None:
      self._bar.write(text, file=stream)
    else:
      print(text, file=stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class RateMeter:
  """Steps/s and images/s excluding compilation and pauses.

  Usage, per step: ``t = meter.now()`` before fetching the batch,
  ``meter.data_done(t)`` after it, ``meter.step_done(t_after_data,
  compiled=...)`` after dispatching the step; at a log point
  ``meter.interval(sync_time)`` closes the interval; around an evaluation,
  ``meter.pause()`` / ``meter.resume()``.
  """

  def __init__(self, images_per_step: int, clock=time.perf_counter):
    self.images_per_step = images_per_step
    self.now = clock
    self._t0 = clock()
    self._steps = 0
    self._data = 0.0
    self._compile = 0.0
    self._paused_at: float | None = None
    # Totals over the run (this process), for the ETA and the summary.
    self.total_steps = 0
    self.total_train_s = 0.0
    self.total_compile_s = 0.0
    self.total_data_s = 0.0

  def data_done(self, started: float) -> float:
    """Counts ``now - started`` as waiting for data; returns now."""
    t = self.now()
    self._data += t - started
    return t

  def step_done(self, started: float, *, compiled: bool) -> None:
    """One step dispatched; ``compiled``: it traced and compiled (its
    dispatch time, from ``started``, is compilation, not training)."""
    self._steps += 1
    if compiled:
      self._compile += self.now() - started

  def pause(self) -> None:
    self._paused_at = self.now()

  def resume(self) -> None:
    if self._paused_at is not None:
      self._t0 += self.now() - self._paused_at
      self._paused_at = None

  def restart(self) -> None:
    """Drops the current interval (a rollback: its steps are redone)."""
    self._t0 = self.now()
    self._steps, self._data, self._compile = 0, 0.0, 0.0

  def interval(self) -> dict[str, float]:
    """Closes the interval; its numbers (call after a device sync).

    Returns:
      ``steps``, ``seconds`` (wall), ``compile_s``, ``images_per_sec``
      (NaN when the interval was all compilation), ``data_wait_ms`` (per
      step) and ``data_wait_frac`` (of the wall time).
    """
    t = self.now()
    wall = max(t - self._t0, 1e-9)
    train = wall - self._compile
    n = max(self._steps, 1)
    out = {
        "steps": self._steps, "seconds": wall, "compile_s": self._compile,
        "images_per_sec": (self._steps * self.images_per_step / train
                           if train > 1e-3 and self._steps else math.nan),
        "data_wait_ms": 1000.0 * self._data / n,
        "data_wait_frac": self._data / wall,
    }
    self.total_steps += self._steps
    self.total_train_s += max(train, 0.0)
    self.total_compile_s += self._compile
    self.total_data_s += self._data
    self._t0 = t
    self._steps, self._data, self._compile = 0, 0.0, 0.0
    return out

  def seconds_per_step(self) -> float:
    """Training seconds per step so far (NaN before the first interval)."""
    if not self.total_steps or self.total_train_s <= 0:
      return math.nan
    return self.total_train_s / self.total_steps


def format_train_line(step: int, total: int, means: Mapping[str, float], *,
                      lr: float, rate: Mapping[str, float],
                      eta_s: float | None, epoch: float | None = None) -> str:
  """One log-interval line: step, mean losses, lr, img/s, data wait, ETA.

  ``means`` holds the interval means by their plain names (``loss_total``,
  ``loss_rpn_cls``, ...).
  """
  width = len(str(total))
  parts = [f"step {step:>{width}}/{total}"]
  if epoch is not None:
    parts.append(f"ep {epoch:.2f}")
  if "loss_total" in means:
    detail = " ".join(
        f"{k[len('loss_'):]} {means[k]:.4f}" for k in
        ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box") if k in means)
    parts.append(f"loss {means['loss_total']:.4f}" +
                 (f" ({detail})" if detail else ""))
  parts.append(f"lr {lr:.3g}")
  ips = rate.get("images_per_sec", math.nan)
  parts.append(f"{ips:.1f} img/s" if math.isfinite(ips) else "- img/s")
  parts.append(f"data {rate.get('data_wait_ms', 0.0):.0f}ms/step")
  parts.append(f"eta {format_duration(eta_s)}")
  return "  ".join(parts)
