"""One writer per run root: an exclusive lock on W/.lock, held while a stage writes under W.

The lock is an flock(2) on the file, so the kernel releases it when its holder exits in any way
(a kill included): a lock is never stale on the host that took it. A clean exit removes the
file (a taker checks that the file it locked is still the one at the path). The file names the holder
(pid, host, command, since) for the refusal message. A stage started by a holder (the speedrun
runs each stage as a child process) shares the holder's lock through RUN_LOCK_TOKEN in its
environment. In a multi-process run only process 0 takes it.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

TOKEN_ENV = "RUN_LOCK_TOKEN"
_held: dict[str, object] = {}  # run root -> open lock file, for the life of the process


class RunLocked(RuntimeError):
    """Another process is writing to this run root."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run_root(root: str | Path) -> None:
    """Takes W/.lock for this process (once; released at exit), or raises RunLocked naming the
    holder. A child of the holder (same RUN_LOCK_TOKEN, holder alive) passes."""
    root = Path(root).resolve()
    if str(root) in _held:
        return
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            break
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return _take(root, path, fh, created)
        except FileNotFoundError:
            pass
        fh.close()  # the holder removed the file as we locked it: lock the new one
    fh.seek(0)
    try:
        holder = json.loads(fh.read() or "{}")
    except ValueError:
        holder = {}
    fh.close()
    token = os.environ.get(TOKEN_ENV)
    if (token and holder.get("token") == token and holder.get("host") == socket.gethostname()
            and _pid_alive(int(holder.get("pid", -1)))):
        return  # started by the holder: its lock covers this process
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
           f"({holder.get('command', '?')}, since {holder.get('since', '?')})")
    raise RunLocked(f"{root} is being written by {who}: wait for it to finish or use another "
                    "--workdir") from None


def _take(root: Path, path: Path, fh, created: bool) -> None:
    token = os.environ.get(TOKEN_ENV) or uuid.uuid4().hex
    os.environ[TOKEN_ENV] = token  # children of this process share the lock
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                         "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300],
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    fh.flush()
    _held[str(root)] = fh
    atexit.register(_release, path, fh, created)


def _release(path: Path, fh, created: bool) -> None:
    """Removes the file while still holding its lock, then lets go; a run root this lock made
    and nothing else filled goes too (a command that failed at once leaves nothing behind)."""
    try:
        path.unlink()
        if created:
            path.parent.rmdir()  # only if empty
    except OSError:
        pass
    fh.close()
