"""One writer per workdir: a lock file held with ``fcntl.flock``.

``workdir/.lock`` holds JSON naming the run that holds it (host, pid, start
time, command line, process count). The lock itself is the kernel's
``flock`` on that file, so it is released the moment the holding process
dies, however it dies (SIGKILL, OOM, a lost node): a lock file whose lock
nobody holds is stale, and the next run takes it over and says whose it was.
A second run while the first is alive is refused with a message naming the
holder.

Multi-host runs: process 0 takes the lock for the whole run (the other
processes share it; see ``train_lib``). On NFS, Linux maps ``flock`` to
byte-range locks that the server arbitrates between hosts (NFSv4), so the
rule holds across machines that see the same workdir; on a file system
without locking (some FUSE mounts) ``flock`` fails and the error says so.

The file is never deleted (deleting a lock file while another process is
opening it is how two holders happen); a run that ends marks it released.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


def _describe(info: dict) -> str:
  if not info:
    return "an unknown process (the lock file is empty)"
  started = info.get("started", "?")
  procs = info.get("num_processes", 1)
  extra = f", {procs} processes" if procs and procs > 1 else ""
  return (f"host {info.get('host', '?')} pid {info.get('pid', '?')} "
          f"(started {started}{extra}: {info.get('command', '?')})")


class WorkdirLock:
  """``with WorkdirLock(workdir):`` — raises WorkdirLockedError if taken.

  Attributes:
    path: the lock file.
    previous: the holder information found in a stale lock file that this
      run took over ({} when the lock was free or released).
  """

  def __init__(self, workdir: str, *, num_processes: int = 1):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.num_processes = int(num_processes)
    self.previous: dict = {}
    self._fd: int | None = None

  def _read(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
      raw += chunk
    try:
      info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
      info = {"unreadable": raw[:200].decode("utf-8", "replace")}
    return info if isinstance(info, dict) else {}

  def _write(self, info: dict) -> None:
    data = json.dumps(info, indent=1).encode("utf-8")
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, data, 0)
    os.fsync(self._fd)

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = self._read(fd)
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirLockedError(
            f"{os.path.dirname(self.path)} is in use by another training run:"
            f" {_describe(holder)}. Wait for it to finish, stop it, or use "
            f"another --workdir. (Lock file: {self.path})") from None
      raise WorkdirLockedError(
          f"cannot lock {self.path} ({e.strerror}): the file system may not "
          f"support locks; use a workdir on a local disk or NFSv4") from None
    self._fd = fd
    found = self._read(fd)
    if found and not found.get("released"):
      self.previous = found
      log.warning("took over the lock of %s, which is no longer running "
                  "(it did not end cleanly; its checkpoints are checked "
                  "before resuming)", _describe(found))
    now = time.time()
    self._write({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.fromtimestamp(now).isoformat(
            timespec="seconds"),
        "start_time": now, "num_processes": self.num_processes,
        "command": " ".join(sys.argv) or "?", "released": False})
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      info = self._read(self._fd)
      info["released"] = True
      self._write(info)
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
