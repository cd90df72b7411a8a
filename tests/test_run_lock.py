"""frcnn_jax/run_lock.py: one writer per workdir, stale locks taken over."""
import json
import os
import subprocess
import sys
import time

import pytest

from frcnn_jax import run_lock


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
  with run_lock.WorkdirLock(str(tmp_path)) as first:
    info = json.load(open(first.path))
    assert info["pid"] == os.getpid() and not info["released"]
    with pytest.raises(run_lock.WorkdirLockedError,
                       match=rf"in use by another training run: host "
                       rf"\S+ pid {os.getpid()} \(started "):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  assert json.load(open(first.path))["released"]
  # Released: the next run takes it without a word about a previous holder.
  with run_lock.WorkdirLock(str(tmp_path)) as again:
    assert again.previous == {}


def test_lock_of_a_live_process_is_refused(tmp_path):
  code = (f"from frcnn_jax import run_lock; import time, sys\n"
          f"l = run_lock.WorkdirLock({str(tmp_path)!r}).acquire()\n"
          f"print('held', flush=True); time.sleep(60)\n")
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True, env=env)
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(run_lock.WorkdirLockedError, match=f"pid {proc.pid}"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    proc.kill()
    proc.wait()
  # SIGKILL left the file saying "not released"; the kernel dropped the
  # lock, so the next run takes it over and names the dead holder.
  with run_lock.WorkdirLock(str(tmp_path)) as lock:
    assert lock.previous["pid"] == proc.pid


def test_stale_lock_file_is_taken_over_with_a_message(tmp_path, caplog):
  stale = {"host": "node7", "pid": 999999999, "started": "2026-01-01T00:00:00",
           "num_processes": 4, "command": "train.py --workdir=x",
           "released": False}
  (tmp_path / ".lock").write_text(json.dumps(stale))
  with caplog.at_level("WARNING"):
    with run_lock.WorkdirLock(str(tmp_path), num_processes=2) as lock:
      assert lock.previous["host"] == "node7"
      info = json.load(open(lock.path))
      assert info["pid"] == os.getpid() and info["num_processes"] == 2
      assert time.time() - info["start_time"] < 60
  assert any("took over the lock of host node7 pid 999999999" in m and
             "4 processes" in m for m in caplog.messages)
