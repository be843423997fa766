"""One writer per run root: a second writer is refused at once, naming the holder; a killed
holder's lock is free again; a stage the holder started shares its lock."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import run_lock

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from train.run_lock import lock_run_root; lock_run_root(sys.argv[1]); "
        "print('held', flush=True); {then}")


def _holder(root: Path, then: str = "time.sleep(60)") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != run_lock.TOKEN_ENV}
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(then=then), str(root)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


def _fresh(monkeypatch):
    monkeypatch.setattr(run_lock, "_held", {})
    monkeypatch.delenv(run_lock.TOKEN_ENV, raising=False)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, monkeypatch):
    _fresh(monkeypatch)
    holder = _holder(tmp_path)
    try:
        t = time.monotonic()
        with pytest.raises(run_lock.RunLocked, match=rf"being written by pid {holder.pid} on "):
            run_lock.lock_run_root(tmp_path)
        assert time.monotonic() - t < 1
        # an entry point says so in one line and exits non-zero
        env = {k: v for k, v in os.environ.items() if k != run_lock.TOKEN_ENV}
        r = subprocess.run([sys.executable, "-m", "experiments.report", "--workdir", str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], r.stderr
        assert not (tmp_path / "report.md").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_free(tmp_path, monkeypatch):
    _fresh(monkeypatch)
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    run_lock.lock_run_root(tmp_path)  # taken
    assert str(os.getpid()) in (tmp_path / ".lock").read_text()
    run_lock._held[str(tmp_path.resolve())].close()


def test_a_stage_started_by_the_holder_shares_its_lock(tmp_path, monkeypatch):
    _fresh(monkeypatch)
    child = ("import os, subprocess, sys; r = subprocess.run([sys.executable, '-c', "
             "'import sys; from train.run_lock import lock_run_root; lock_run_root(sys.argv[1]); "
             "print(1)', sys.argv[1]], capture_output=True, text=True); print(r.stdout.strip() or r.stderr)")
    holder = _holder(tmp_path, then=child)
    out = holder.stdout.read().strip()
    holder.wait()
    assert out == "1", out
